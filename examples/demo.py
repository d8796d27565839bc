"""Demo: depthwise convolution vs. Sparse Shift Layer on scikit-learn's digits (``make demo``).

``python examples/demo.py`` (or ``python -m examples.demo`` from the repository root) trains
two small MobileNet-style CNNs on the 8x8 digits bundled with scikit-learn (no download), on
CPU, under ``torch.compile``:

- ``dwconv``: blocks of pointwise conv + BN + ReLU, then a 3x3 depthwise conv + BN + ReLU;
- ``shift``: the same model after :func:`torchshift2.replace_depthwise`, i.e.
  every depthwise conv of the blocks replaced by a learnable Sparse Shift Layer (SSL, integer
  shifts in the forward, straight-through gradient), trained with an L1 sparsity term on the
  shifts.

It prints a table (test accuracy, parameters, multiply-adds of the spatial layers, training
and inference time, fraction of shifts that round to zero) and writes to ``--out``:
``results.md`` (the table), ``results.json`` (everything, per-epoch curves included),
``shift_histogram.png`` (learned shift values) and ``training_curves.png``.

Everything is seeded (data split, initialisation, batch order); with the same machine,
thread count and options, a rerun gives the same accuracies. Timings depend on the machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

import torchshift2 as ts
from torchshift2.convert import _conv_class

# Run as a script, only examples/ is on sys.path; the machine-info helper lives in
# benchmarks/. Appended, so that the torchshift2 already imported above stays the one used.
sys.path.append(str(Path(__file__).resolve().parent.parent))
from benchmarks.harness.machine import machine_info  # noqa: E402

__all__ = ["build_model", "load_data", "main", "spatial_macs", "total_macs"]

#: ``(in_channels, out_channels)`` of the blocks, ``None`` = a 2x2 average pooling.
ARCH = ((16, 32), (32, 32), None, (32, 64), (64, 64))
TEST_SIZE = 384  # 6 batches of 64: every batch (train, test, timing) has the same shape
BATCH = 64


def _require(module: str, extra: str = "demo"):
    try:
        return __import__(module)
    except ImportError:
        raise SystemExit(
            f"examples/demo.py needs {module!r}: pip install 'torchshift2[{extra}]' "
            "(scikit-learn, tqdm, matplotlib)"
        ) from None


def load_data(seed: int = 0):
    """The 1797 digits of ``sklearn.datasets.load_digits``, split 1413 train / 384 test.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: float32 images ``(N, 1, 8, 8)`` scaled to
        ``[0, 1]`` and standardised with the training mean/std, int64 labels ``(N,)``.
    """
    _require("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    index = torch.arange(len(y)).numpy()
    train, test = train_test_split(index, test_size=TEST_SIZE, random_state=seed,
                                   stratify=digits.target)
    train, test = torch.as_tensor(train), torch.as_tensor(test)
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return x[train], y[train], x[test], y[test]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, groups=cout, bias=False),  # depthwise 3x3
        nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


def build_model(kind: str, sparsity_term: float = 0.0) -> nn.Sequential:
    """The demo CNN for ``(N, 1, 8, 8)`` digits; ``kind`` is ``"dwconv"`` or ``"shift"``.

    Both kinds share the architecture: a 3x3 stem conv (1 -> 16), four blocks of pointwise
    conv + BN + ReLU + spatial layer + BN + ReLU (16 -> 32 -> 32, 2x2 average pooling,
    32 -> 64 -> 64), global average pooling and a linear classifier. The spatial layer is a
    3x3 depthwise conv (``"dwconv"``) or an SSL shift layer with ``sparsity_term``
    (``"shift"``, made by :func:`torchshift2.replace_depthwise`).
    """
    layers: List[nn.Module] = [
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
    ]
    for spec in ARCH:
        layers.append(nn.AvgPool2d(2) if spec is None else _block(*spec))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ARCH[-1][1], 10)]
    model = nn.Sequential(*layers)
    if kind == "dwconv":
        return model
    if kind != "shift":
        raise ValueError(f"kind: expected 'dwconv' or 'shift', got {kind!r}")
    return ts.replace_depthwise(model, sparsity_term=sparsity_term)


def _is_depthwise(module: nn.Module) -> bool:
    return _conv_class(module) is not None


def _shift_layers(model: nn.Module) -> List[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (ts.Shift1d, ts.Shift2d, ts.Shift3d))]


def _sparsity(model: nn.Module) -> Tensor:
    """The summed sparsity terms of the model's shift layers (``torchshift2.sparsity_loss``)."""
    if hasattr(ts, "sparsity_loss"):
        return ts.sparsity_loss(model)
    losses = [layer.sparsity_loss() for layer in _shift_layers(model)]  # pragma: no cover
    return sum(loss for loss in losses if loss is not None)  # pragma: no cover


def _macs(model: nn.Module, spatial_only: bool) -> int:
    """Multiply-adds per sample of convs/linears (spatial_only: depthwise convs only)."""
    total = [0]

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            if spatial_only and not _is_depthwise(module):
                return
            k = math.prod(module.kernel_size)
            per_output = module.in_channels // module.groups * k
            total[0] += per_output * output[0].numel()
        elif isinstance(module, nn.Linear) and not spatial_only:
            total[0] += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 1, 8, 8))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total[0]


def spatial_macs(model: nn.Module) -> int:
    """Multiply-adds per sample of the spatial layers: ``C * k * k * H_out * W_out`` for each
    depthwise conv; a shift layer does none (it only moves data)."""
    return _macs(model, spatial_only=True)


def total_macs(model: nn.Module) -> int:
    """Multiply-adds per sample of all convs and linear layers (BN, ReLU, pooling excluded)."""
    return _macs(model, spatial_only=False)


def _evaluate(forward, x: Tensor, y: Tensor) -> float:
    correct = 0
    with torch.no_grad():
        for start in range(0, len(y), BATCH):
            logits = forward(x[start:start + BATCH])
            correct += int((logits.argmax(1) == y[start:start + BATCH]).sum())
    return correct / len(y)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_one(kind: str, data, args, progress: bool = True) -> Dict[str, object]:
    """Train and measure one model; returns the metrics of the results table."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(args.seed)
    model = build_model(kind, sparsity_term=args.sparsity if kind == "shift" else 0.0)
    params = sum(p.numel() for p in model.parameters())
    shift_params = [p for layer in _shift_layers(model) for p in layer.parameters()]
    shift_ids = {id(p) for p in shift_params}
    other = [p for p in model.parameters() if id(p) not in shift_ids]
    groups = [dict(params=other, weight_decay=args.weight_decay)]
    if shift_params:  # the L1 sparsity term is the shifts' only regulariser
        groups.append(dict(params=shift_params, weight_decay=0.0, lr=args.lr * args.shift_lr_scale))
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    steps_per_epoch = len(y_train) // BATCH
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
        total_steps=args.epochs * steps_per_epoch, pct_start=0.15)
    criterion = nn.CrossEntropyLoss()
    forward = torch.compile(model, dynamic=False) if args.compile else model
    initial_shifts = torch.cat([p.detach().flatten() for p in shift_params]) if shift_params \
        else torch.zeros(0)

    # Compile (or warm up) training and inference graphs on one batch, then restore the state
    # (BatchNorm statistics) so that the warm-up does not count as training.
    state = copy.deepcopy(model.state_dict())
    start = time.perf_counter()
    model.train()
    loss = criterion(forward(x_train[:BATCH]), y_train[:BATCH])
    loss.backward()
    model.eval()
    with torch.no_grad():
        forward(x_test[:BATCH])
    compile_s = time.perf_counter() - start
    optimizer.zero_grad(set_to_none=True)
    model.load_state_dict(state)

    generator = torch.Generator().manual_seed(args.seed)
    curve = []
    bar = _tqdm()(range(args.epochs), desc=f"{kind:>6}", unit="epoch", disable=not progress,
                  leave=True, dynamic_ncols=True, file=sys.stderr)
    train_s = 0.0
    for epoch in bar:
        model.train()
        start = time.perf_counter()
        order = torch.randperm(len(y_train), generator=generator)
        total_loss = 0.0
        for step in range(steps_per_epoch):
            batch = order[step * BATCH:(step + 1) * BATCH]
            loss = criterion(forward(x_train[batch]), y_train[batch])
            if shift_params:  # the SSL sparsity term: sparsity_term * sum |shift|
                loss = loss + _sparsity(model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += float(loss.detach())
        train_s += time.perf_counter() - start
        model.eval()
        accuracy = _evaluate(forward, x_test, y_test)
        zero = _zero_fraction(shift_params)
        curve.append(dict(epoch=epoch + 1, loss=total_loss / steps_per_epoch,
                          test_accuracy=accuracy, zero_shift_fraction=zero))
        postfix = dict(loss=f"{total_loss / steps_per_epoch:.3f}", test_acc=f"{accuracy:.3f}")
        if zero is not None:
            postfix["zero_shifts"] = f"{zero:.2f}"
        bar.set_postfix(postfix)
    bar.close()

    model.eval()
    batch = x_test[:BATCH]
    with torch.no_grad():
        for _ in range(3):
            forward(batch)
        infer_s = _median_time(lambda: forward(batch), args.timing_repeats)
    shifts = torch.cat([p.detach().flatten() for p in shift_params]) if shift_params \
        else torch.zeros(0)
    return dict(
        model=kind,
        test_accuracy=curve[-1]["test_accuracy"],
        parameters=params,
        spatial_macs=spatial_macs(model),
        total_macs=total_macs(model),
        compile_s=compile_s,
        train_s=train_s,
        inference_ms=infer_s * 1e3,
        zero_shift_fraction=_zero_fraction(shift_params),
        static_channel_fraction=_static_fraction(shift_params),
        shifts=shifts.tolist(),
        initial_shifts=initial_shifts.tolist(),
        curve=curve,
    )


def _zero_fraction(params: Sequence[Tensor]) -> Optional[float]:
    if not params:
        return None
    values = torch.cat([p.detach().flatten() for p in params])
    return float((torch.round(values) == 0).float().mean())


def _static_fraction(params: Sequence[Tensor]) -> Optional[float]:
    """Fraction of channels whose shifts all round to 0 (they do not move at all)."""
    if not params:
        return None
    rows = torch.cat([p.detach() for p in params])  # (sum of C, D)
    return float((torch.round(rows) == 0).all(dim=1).float().mean())


def _tqdm():
    return _require("tqdm").tqdm


def format_table(results: Sequence[Dict[str, object]]) -> str:
    """The results as a Markdown table (one row per model)."""
    header = ("model", "test acc", "params", "spatial MACs/sample", "all MACs/sample",
              "train s", "compile s", f"infer ms/batch{BATCH}", "zero shifts",
              "static channels")
    rows = []
    for r in results:
        zero, static = r["zero_shift_fraction"], r["static_channel_fraction"]
        rows.append((
            r["model"], f"{100 * r['test_accuracy']:.2f}%", f"{r['parameters']:,}",
            f"{r['spatial_macs']:,}", f"{r['total_macs']:,}", f"{r['train_s']:.1f}",
            f"{r['compile_s']:.1f}", f"{r['inference_ms']:.2f}",
            "-" if zero is None else f"{100 * zero:.1f}%",
            "-" if static is None else f"{100 * static:.1f}%",
        ))
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]

    def line(cells):
        return "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(header), rule] + [line(row) for row in rows])


def plot(results: Sequence[Dict[str, object]], out: Path) -> List[Path]:
    """Write ``shift_histogram.png`` and ``training_curves.png`` into ``out``."""
    _require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    shift = next(r for r in results if r["model"] == "shift")
    values = torch.tensor(shift["shifts"])
    initial = torch.tensor(shift["initial_shifts"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    top = max(1.5, float(values.abs().max()) + 0.25, float(initial.abs().max()) + 0.25)
    bins = torch.arange(-math.ceil(top * 10) / 10, math.ceil(top * 10) / 10 + 1e-6, 0.05).tolist()
    left.hist(initial.numpy(), bins=bins, alpha=0.45, label="initial", color="tab:gray")
    left.hist(values.numpy(), bins=bins, alpha=0.8, label="trained", color="tab:blue")
    for edge in torch.arange(-math.floor(top) - 0.5, math.floor(top) + 0.51, 1.0).tolist():
        left.axvline(edge, color="k", lw=0.5, ls=":")
    left.set_xlabel("shift weight (dotted: rounding boundaries)")
    left.set_ylabel("count")
    left.set_title("SSL shift weights (all layers, both axes)")
    left.legend()
    rounded = torch.round(values).to(torch.int64)
    keys = list(range(int(rounded.min()), int(rounded.max()) + 1)) if len(rounded) else [0]
    counts = [int((rounded == k).sum()) for k in keys]
    right.bar(keys, counts, color="tab:blue")
    right.set_xticks(keys)
    right.set_xlabel("rounded shift (what the forward uses)")
    right.set_title(f"{100 * shift['zero_shift_fraction']:.1f}% of shifts are exactly 0")
    fig.tight_layout()
    path = out / "shift_histogram.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    fig, axis = plt.subplots(figsize=(6, 3.8))
    for r in results:
        epochs = [c["epoch"] for c in r["curve"]]
        axis.plot(epochs, [100 * c["test_accuracy"] for c in r["curve"]], marker=".",
                  label=r["model"])
    axis.set_xlabel("epoch")
    axis.set_ylabel("test accuracy (%)")
    axis.grid(alpha=0.3)
    axis.legend()
    fig.tight_layout()
    path = out / "training_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python examples/demo.py",
        description="Train a depthwise-conv CNN and its SSL shift twin on scikit-learn digits.")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs per model (default 30; 8 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="short schedule (8 epochs, fewer timing repeats) for tests")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="run eagerly instead of under torch.compile")
    parser.add_argument("--out", type=Path, default=Path("demo-output"),
                        help="directory for results.md/.json and the PNGs (default demo-output)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-2, help="peak AdamW learning rate")
    parser.add_argument("--shift-lr-scale", type=float, default=1.0,
                        help="learning rate of the shifts relative to --lr")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--sparsity", type=float, default=5e-4,
                        help="sparsity_term of the shift layers (L1 weight on the shifts)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (default 1: the model is so small that "
                        "intra-op threads only add synchronisation, and on a busy machine "
                        "they make a step ten times slower)")
    parser.add_argument("--timing-repeats", type=int, default=None,
                        help="inference calls timed (median; default 50, 10 with --quick)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no tqdm progress bars")
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 8 if args.quick else 30
    if args.timing_repeats is None:
        args.timing_repeats = 10 if args.quick else 50
    if args.epochs < 1:
        parser.error("--epochs: expected >= 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    _require("tqdm")
    _require("matplotlib")
    if args.threads:
        torch.set_num_threads(args.threads)
    backend = ts.backends.resolve(torch.device("cpu"))
    print(f"torchshift2 demo: torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"shift backend {backend!r}, torch.compile {'on' if args.compile else 'off'}, "
          f"{args.epochs} epochs")
    started = time.perf_counter()
    data = load_data(args.seed)
    print(f"data: sklearn digits, {len(data[1])} train / {len(data[3])} test, 8x8, 10 classes")
    results = [train_one(kind, data, args, progress=args.progress) for kind in ("dwconv", "shift")]
    total_s = time.perf_counter() - started

    args.out.mkdir(parents=True, exist_ok=True)
    table = format_table(results)
    notes = (
        f"\nspatial MACs: multiply-adds of the 3x3 depthwise convs per sample "
        f"(C*3*3*H*W each); a shift layer does none. Zero shifts: shift weights that round "
        f"to 0; static channels: channels whose shifts all round to 0. Training time "
        f"excludes compilation "
        f"(own column); inference: median of {args.timing_repeats} eval-mode batches of "
        f"{BATCH}. Backend {backend!r}, threads {torch.get_num_threads()}, "
        f"torch.compile {'on' if args.compile else 'off'}, total wall time {total_s:.1f} s."
    )
    print()
    print(table)
    print(notes.strip())
    (args.out / "results.md").write_text(table + "\n" + notes + "\n")
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    info = machine_info(None)
    machine = dict(torch=info["torch_version"], python=info["python_version"],
                   threads=info["threads"], logical_cpus=info["logical_cpus"], backend=backend,
                   cpu_model=info["cpu_model"], memory_gib=info["memory_gib"],
                   git_commit=info["git_commit"], load_average=info["load_average"],
                   timestamp=info["timestamp"])
    with open(args.out / "results.json", "w") as f:
        json.dump(dict(config=config, machine=machine, total_s=total_s, results=results), f,
                  indent=1)
    for path in plot(results, args.out):
        print(f"wrote {path}")
    print(f"wrote {args.out / 'results.md'}, {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
