"""GPU benchmark of the shift layer's training step (issue 20), in one run per row.

    python benchmarks/gpu_bench.py --out DIR             # default: 64x128x56x56, fp32 + bf16
    python benchmarks/gpu_bench.py --quick               # one small row, for a smoke test

For each (shape, memory format, dtype) row, in the same process and minutes:

* **device time** of every case, ``triton.testing.do_bench_cudagraph`` (the case captured
  in a CUDA graph and replayed: kernels only, no Python), median; if a case cannot be
  captured the row says ``events`` and the time comes from ``do_bench`` (CUDA events);
* **eager wall time**: ``perf_counter`` over back-to-back eager calls, synchronised at the
  end (the host cost of Python, custom-op and autograd wrappers shows here);
* the floors and the competitor beside it: ``clone`` / ``copy_`` and cuDNN's 3x3 depthwise
  convolution (``nn.Conv2d(C, C, 3, padding=1, groups=C)``), forward and forward+backward;
* two weight distributions: ``uniform`` in [-1.5, 1.5] and ``trained`` (90% zero, the rest
  +-1..3, what SSL training produces): kernels are judged on distributions they were not tuned on.

Block rows (channels-last rows by default, ``--block-formats``): ``BatchNorm -> ReLU ->
Shift2d (SSL) -> 1x1 conv``, forward+backward, under ``torch.compile``, against the same
block with the 3x3 depthwise conv instead of the shift. The summary checks the issue's
targets (ratios to ``clone`` in the same row).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torchshift2 as ts  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _layout(x, fmt):
    if fmt == "channels_last":
        return x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else
                            torch.channels_last_3d if x.dim() == 5 else torch.contiguous_format)
    return x.contiguous()


def _weights(channels, ndim, kind, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    if kind == "uniform":
        w = torch.rand(channels, ndim, generator=generator) * 3 - 1.5
    else:  # trained SSL: 90% of the shifts zero, the rest +-1..3 (with a fractional part)
        w = torch.zeros(channels, ndim)
        moving = torch.rand(channels, generator=generator) < 0.1
        steps = torch.randint(1, 4, (channels, ndim), generator=generator).float()
        signs = torch.where(torch.rand(channels, ndim, generator=generator) < 0.5, -1.0, 1.0)
        jitter = torch.rand(channels, ndim, generator=generator) * 0.4 - 0.2
        w[moving] = (signs * steps + jitter)[moving]
    return w.to(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def device_ms(fn, device):
    """``(median ms, method)``: CUDA-graph replay when the case captures, else events
    (``--device cpu``, a dry run of this script: wall time, meaningless)."""
    if device.type != "cuda":
        return wall_ms(fn, device, 0.05), "cpu-wall"
    from triton.testing import do_bench, do_bench_cudagraph

    fn()
    torch.cuda.synchronize()
    try:
        return do_bench_cudagraph(fn, rep=100, return_mode="median"), "graph"
    except Exception:  # noqa: BLE001 - e.g. a case that syncs; time it with events
        torch.cuda.synchronize()
        return do_bench(fn, warmup=25, rep=100, return_mode="median"), "events"


def wall_ms(fn, device, seconds=0.3):
    """Eager wall time per call: back-to-back calls, one synchronisation at the end."""
    for _ in range(5):
        fn()
    _sync(device)
    calls, start = 0, time.perf_counter()
    while True:
        for _ in range(10):
            fn()
        calls += 10
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / calls * 1e3


def shift_cases(x, weight, g):
    xg = x.detach().requires_grad_()
    wg = weight.detach().requires_grad_()
    cases = {}
    for mode, active in (("ssl", False), ("active", True)):
        def fwd(active=active):
            with torch.no_grad():
                return ts.shift(x, weight, "zeros", active)

        def fwdbwd(active=active):
            out = ts.shift(xg, wg, "zeros", active)
            return torch.autograd.grad(out, (xg, wg), g)

        cases[f"{mode}_fwd"] = fwd
        cases[f"{mode}_fwdbwd"] = fwdbwd
    return cases


def dwconv_cases(x, g):
    c = x.shape[1]
    conv = torch.nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False).to(x.device, x.dtype)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        conv = conv.to(memory_format=torch.channels_last)
    xg = x.detach().requires_grad_()

    def fwd():
        with torch.no_grad():
            return conv(x)

    def fwdbwd():
        return torch.autograd.grad(conv(xg), (xg, conv.weight), g)

    return {"dwconv_fwd": fwd, "dwconv_fwdbwd": fwdbwd}


class ShiftBlock(torch.nn.Module):
    def __init__(self, channels, mixer):
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(channels)
        self.mixer = mixer
        self.pw = torch.nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x):
        y = self.mixer(torch.relu(self.bn(x)))
        if isinstance(y, tuple):  # ts.Shift2d returns (output, sparsity loss)
            y = y[0]
        return self.pw(y)


def block_cases(x, g, compile_mode):
    c = x.shape[1]
    cases = {}
    mixers = {
        "block_ssl": lambda: ts.Shift2d(c, sparsity_term=0),
        "block_dwconv": lambda: torch.nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
    }
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    for name, make in mixers.items():
        block = ShiftBlock(c, make()).to(x.device, x.dtype)
        if channels_last:
            block = block.to(memory_format=torch.channels_last)
        compiled = torch.compile(block, mode=compile_mode)
        xg = x.detach().requires_grad_()

        def step(compiled=compiled, xg=xg):
            return torch.autograd.grad(compiled(xg), [xg, *compiled.parameters()], g)

        start = time.perf_counter()
        step()
        _sync(x.device)
        cases[name] = (step, f"compile {time.perf_counter() - start:.0f} s")
    return cases


def run_row(shape, fmt, dtype_name, weights, block, compile_mode, log, device):
    """All cases of one (shape, format, dtype) row; ``block``: also the compiled blocks."""
    dtype = DTYPES[dtype_name]
    x = _layout(torch.randn(shape, device=device).to(dtype), fmt)
    g = _layout(torch.randn(shape, device=device).to(dtype), fmt)
    out = torch.empty_like(x)
    rows = []
    floors = {"clone": lambda: x.clone(), "copy": lambda: out.copy_(x)}
    groups = [("", floors), ("", dwconv_cases(x, g))]
    for kind in weights:
        groups.append((kind, shift_cases(x, _weights(shape[1], len(shape) - 2, kind, device), g)))
    notes = {}
    if block and len(shape) == 4:
        blocks = block_cases(x, g, compile_mode)
        groups.append(("", {name: fn for name, (fn, _) in blocks.items()}))
        notes = {name: note for name, (_, note) in blocks.items()}
    for kind, cases in groups:
        for name, fn in cases.items():
            dev, method = device_ms(fn, device)
            wall = wall_ms(fn, device)
            rows.append(dict(shape="x".join(map(str, shape)), format=fmt, dtype=dtype_name,
                             weights=kind, case=name, device_ms=dev, method=method,
                             wall_ms=wall, note=notes.get(name, "")))
            log(f"  {fmt:13s} {dtype_name:8s} {kind or '-':7s} {name:15s} device "
                f"{dev:8.4f} ms ({method})  eager wall {wall:8.4f} ms  {notes.get(name, '')}")
    clone = next(r["device_ms"] for r in rows if r["case"] == "clone")
    conv = {r["case"]: r["device_ms"] for r in rows if r["case"].startswith("dwconv")}
    for r in rows:
        r["x_clone"] = r["device_ms"] / clone
        base = "dwconv_fwdbwd" if r["case"].endswith("fwdbwd") else "dwconv_fwd"
        r["dwconv_over_this"] = conv[base] / r["device_ms"] if base in conv else None
        r["wall_over_device"] = r["wall_ms"] / r["device_ms"]
    return rows


def targets(rows):
    """The issue's targets that these rows can decide: (label, value, bound, ok)."""
    out = []

    def get(**key):
        for r in rows:
            if all(r.get(k) == v for k, v in key.items()):
                return r
        return None

    for r in rows:
        if r["weights"] != "uniform" or r["case"] not in ("ssl_fwd", "active_fwd", "ssl_fwdbwd",
                                                          "active_fwdbwd"):
            continue
        label = f"{r['shape']} {r['format']} {r['dtype']} {r['case']}"
        bound = {"ssl_fwd": 1.1, "active_fwd": 1.4}.get(r["case"], 3.0)
        out.append((f"{label} x clone", r["x_clone"], bound, r["x_clone"] <= bound))
        if r["format"] == "channels_last":
            nchw = get(shape=r["shape"], format="contiguous", dtype=r["dtype"],
                       weights="uniform", case=r["case"])
            if nchw:
                ratio = r["device_ms"] / nchw["device_ms"]
                out.append((f"{label} / NCHW", ratio, 1.15, ratio <= 1.15))
            if r["case"].endswith("fwdbwd"):
                need = 1.8 if r["dtype"] == "bfloat16" else 1.2
                out.append((f"{label} dwconv / shift", r["dwconv_over_this"], need,
                            r["dwconv_over_this"] >= need))
        if r["dtype"] == "bfloat16":
            fp32 = get(shape=r["shape"], format=r["format"], dtype="float32", weights="uniform",
                       case=r["case"])
            if fp32:
                ratio = r["device_ms"] / fp32["device_ms"]
                out.append((f"{label} / float32", ratio, 0.6, ratio <= 0.6))
        if r["case"].endswith("fwdbwd") and r["shape"] == "64x128x56x56":
            out.append((f"{label} eager wall / device", r["wall_over_device"], 1.25,
                        r["wall_over_device"] <= 1.25))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="64x128x56x56")
    parser.add_argument("--formats", default="contiguous,channels_last")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--weights", default="uniform,trained")
    parser.add_argument("--block-formats", default="channels_last",
                        help="formats that also get the torch.compile block rows ('' for none)")
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile mode of the block rows (e.g. reduce-overhead)")
    parser.add_argument("--quick", action="store_true", help="8x32x28x28 float32 only")
    parser.add_argument("--out", default=None, help="directory for gpu-bench.csv / .json")
    parser.add_argument("--device", default="cuda",
                        help="cuda; cpu only dry-runs the script (timings meaningless)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_bench.py: needs a CUDA GPU (or --device cpu for a dry run)")
    if args.quick:
        args.shapes, args.dtypes, args.formats = "8x32x28x28", "float32", "channels_last"
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]

    def log(message):
        print(message, flush=True)

    env = dict(gpu=torch.cuda.get_device_name() if device.type == "cuda" else "none",
               torch=torch.__version__, triton=__import__("triton").__version__,
               python=platform.python_version(), backend=ts.backends.resolve(device))
    log(f"gpu_bench: {env}")
    rows = []
    for shape in shapes:
        log(f"{'x'.join(map(str, shape))}")
        for fmt in args.formats.split(","):
            for dtype_name in args.dtypes.split(","):
                rows += run_row(shape, fmt, dtype_name, args.weights.split(","),
                                fmt in args.block_formats.split(","), args.compile_mode, log,
                                device)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    log("\nratios (device time): x clone, dwconv / this (> 1: the shift is faster), "
        "eager wall / device")
    for r in rows:
        conv = f"{r['dwconv_over_this']:6.2f}" if r["dwconv_over_this"] else "     -"
        log(f"  {r['shape']:>14} {r['format']:13s} {r['dtype']:8s} {r['weights'] or '-':7s} "
            f"{r['case']:15s} {r['x_clone']:6.2f} {conv} {r['wall_over_device']:6.2f}")
    checks = targets(rows)
    log("\ntargets (issue 20, H100 values; measured on this GPU):")
    for label, value, bound, ok in checks:
        log(f"  {'PASS' if ok else 'MISS'}  {label}: {value:.3f} (bound {bound})")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu-bench.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        with open(os.path.join(args.out, "gpu-bench.json"), "w") as f:
            json.dump(dict(env=env, rows=rows, targets=[dict(label=label, value=value,
                                                             bound=bound, ok=ok)
                                                        for label, value, bound, ok in checks]),
                      f, indent=1)
        log(f"wrote {args.out}/gpu-bench.csv and gpu-bench.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
