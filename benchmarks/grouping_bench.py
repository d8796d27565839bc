"""Channel grouping (:func:`torchshift2.group_channels`): one shift layer before and after.

A ``Shift2d`` over a 32x64x56x56 float32 tensor (``--shape``), channels-last unless
``--formats`` says otherwise. The layer sits between two 1x1 convs and is grouped through
the public API, with each ``order`` of :func:`torchshift2.group_channels`; the layer before
grouping and the grouped ones are then timed alone, as ratios to ``x.clone()`` timed in the
same run:

- ``inplace``: the ``inplace=True`` layer under ``torch.inference_mode`` with the ``sparse``
  shifts (90% of the channels do not move, the rest move by ±1..±3 per dim, random signs);
- ``forward``: the out-of-place layer, with the ``sparse``, ``uniform1.5`` (uniform in
  ±1.5) and ``wide`` (uniform in ±4) shifts;
- ``floor``: ``x[:, :K].neg_()``, in channels-last memory K the channels of the 64-byte
  lines holding the grouped moving channels (16 for up to 16 moving float32 channels), in
  NCHW the number of moving channels: the memory an in-place shift of the grouped layer must
  read and write, each element once.

Each timing is the minimum over ``--repeats`` ``blocked_autorange`` medians, with
``--input-sets`` tensors rotated so that caches do not flatter; a row's cases and its own
``x.clone()`` take turns, so that a change of machine load hits them alike. Prints a
markdown table: ratio to that clone (and milliseconds).

    python benchmarks/grouping_bench.py
    python benchmarks/grouping_bench.py --threads 1 --formats channels_last,contiguous
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import warnings

import torch
from torch.utils.benchmark import Timer

import torchshift2 as ts
from torchshift2.grouping import ORDERS, grouping_permutation

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.harness.machine import machine_line  # noqa: E402

DISTRIBUTIONS = ("sparse", "uniform1.5", "wide")
FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def shifts(name: str, channels: int, gen: torch.Generator) -> torch.Tensor:
    """``(channels, 2)`` shifts drawn from the distribution ``name``."""
    if name == "sparse":
        weight = torch.zeros(channels, 2)
        count = max(1, round(0.1 * channels))
        moving = torch.randperm(channels, generator=gen)[:count]
        sign = torch.randint(0, 2, (count, 2), generator=gen) * 2 - 1
        weight[moving] = (torch.randint(1, 4, (count, 2), generator=gen) * sign).float()
        return weight
    bound = {"uniform1.5": 1.5, "wide": 4.0}[name]
    return (torch.rand(channels, 2, generator=gen) * 2 - 1) * bound


def grouped_shift(weight: torch.Tensor, x: torch.Tensor, inplace: bool, order: str) -> ts.Shift2d:
    """The shift layer as ``group_channels`` leaves it between two 1x1 convs."""
    channels = weight.shape[0]
    model = torch.nn.Sequential(torch.nn.Conv2d(channels, channels, 1),
                                ts.DepthwiseShift(ts.Shift2d(channels, inplace=inplace)),
                                torch.nn.Conv2d(channels, channels, 1)).eval()
    with torch.no_grad():
        model[1].shift.weight.copy_(weight)
    grouped, report = ts.group_channels(model, x[:1], order=order, check=False)
    assert report.grouped == ["1"], str(report)
    return grouped.get_submodule("1.shift")


def timed(fns, inputs, repeats: int, min_run_time: float):
    """Seconds per call of each of ``fns`` on the rotated ``inputs``: the minimum of
    ``repeats`` medians, the functions taking turns so that a change of machine load hits
    them alike."""
    timers = []
    for fn in fns:
        for x in inputs:
            fn(x)
        timers.append(Timer("fn(next(cycle))",
                            globals=dict(fn=fn, cycle=itertools.cycle(inputs)),
                            num_threads=torch.get_num_threads()))
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, timer in enumerate(timers):
            best[i] = min(best[i], timer.blocked_autorange(min_run_time=min_run_time).median)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="32x64x56x56", help="NxCxHxW")
    parser.add_argument("--formats", default="channels_last",
                        help="comma-separated: channels_last, contiguous")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--input-sets", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # A missing C++ kernel would time the pure-torch fallback: stop instead.
    warnings.filterwarnings("error", category=RuntimeWarning, module="torchshift2")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.shape.split("x"))
    if len(shape) != 4:
        raise SystemExit(f"--shape: expected NxCxHxW, got {args.shape!r}")
    gen = torch.Generator().manual_seed(args.seed)
    bench = lambda fn, xs: timed(fn, xs, args.repeats, args.min_run_time)  # noqa: E731

    print(machine_line())
    print(f"shape {args.shape}, float32, {torch.get_num_threads()} threads, "
          f"min of {args.repeats} medians, {args.input_sets} rotated inputs\n")
    print("| layout | case | shifts | moving | ungrouped | grouped, order=\"moving\" | "
          "grouped, order=\"shift\" |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for fmt in args.formats.split(","):
        inputs = [torch.randn(shape, generator=gen).contiguous(memory_format=FORMATS[fmt])
                  for _ in range(args.input_sets)]
        clones, rows = [], []
        with torch.inference_mode():
            for dist in DISTRIBUTIONS:
                weight = shifts(dist, shape[1], gen)
                moving = int((torch.round(weight) != 0).any(1).sum())
                cases = [("forward", False)] + ([("inplace", True)] if dist == "sparse" else [])
                for case, inplace in cases:
                    before = ts.Shift2d(shape[1], inplace=inplace, sparsity_term=0)
                    before.weight.requires_grad_(False).copy_(weight)
                    layers = [before]
                    for order in ORDERS:
                        after = grouped_shift(weight, inputs[0], inplace, order)
                        # The grouped layer reads the channels in the new order too.
                        perm = grouping_permutation(weight, order=order)
                        permuted = inputs[0][:, perm].contiguous(memory_format=FORMATS[fmt])
                        assert torch.equal(after(permuted)[0],
                                           before(inputs[0].clone())[0][:, perm])
                        layers.append(after.requires_grad_(False))
                    clone, *times = bench([torch.Tensor.clone] + layers, inputs)
                    clones.append(clone)
                    rows.append((case, dist, moving, clone, times))
                if dist == "sparse":
                    # Channels last: the channels of the 64-byte lines that hold the grouped
                    # moving ones; NCHW: the moving planes.
                    k = moving if fmt == "contiguous" else min(-(-moving // 16) * 16, shape[1])
                    clone, floor = bench([torch.Tensor.clone, lambda x: x[:, :k].neg_()],
                                         inputs)
                    clones.append(clone)
                    rows.append(("floor", dist, moving, clone, [floor] * 3))
        print(f"| {fmt} | clone | | | {min(clones) * 1e3:.3f}-{max(clones) * 1e3:.3f} ms | | |")
        for case, dist, moving, clone, times in rows:
            cells = " | ".join(f"{t / clone:.2f}x ({t * 1e3:.2f} ms)" for t in times)
            print(f"| {fmt} | {case} | {dist} | {moving}/{shape[1]} | {cells} |")


if __name__ == "__main__":
    main()
