"""Calibrate the cost model of the channels-last forward (torchshift2/backends/cpp/csrc/
cost_model.h): time each channels-last kernel (taps, gathers, planes, forced through
``kernel_override``) on in-cache channels-last tensors under several shift distributions,
in nanoseconds per 64-byte output vector on one thread, and fit

    taps = base + per_tap * (mean taps per block)     gather, planes = their medians

per mode (SSL, Active Shift). Prints the measurements, the fit and the constants to put in
``kCostModel`` (in-cache shapes, the default) or ``kCostModelBeyondCache`` (``--shapes`` of
calls that read and write more than half the last-level cache; that set is the median of
three such fits), then how often the model's choice is the fastest kernel (and by how much
it misses where not). ``--backward`` times the channels-last backward's gathers and planes
instead (the backward has no cost model: through_planes in cl_planes.cpp is its rule).
Run: ``python benchmarks/tools/calibrate_cl.py [--threads 1] [--backward]``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torchshift2 as ts  # noqa: E402
from harness.cases import make_weight  # noqa: E402
from torchshift2.backends import cpp  # noqa: E402

SHAPES = ((4, 64, 56, 56), (8, 128, 28, 28), (16, 256, 14, 14), (2, 32, 16, 32, 32),
          (2, 64, 8, 24, 24))
DISTRIBUTIONS = ("zero", "sparse", "uniform0.7", "uniform1.5", "wide")
KERNELS = ("taps", "gather", "planes")


def best_ms(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def mean_taps(weight: torch.Tensor, lanes: int, active: bool) -> float:
    shifts = torch.floor(weight) if active else torch.round(weight)
    ndim = weight.shape[1]
    corners = [torch.tensor([(k >> (ndim - 1 - d)) & 1 for d in range(ndim)])
               for k in range(1 << ndim)] if active else [torch.zeros(ndim)]
    counts = []
    for c0 in range(0, weight.shape[0], lanes):
        block = shifts[c0:c0 + lanes]
        counts.append(len({tuple((row + a).tolist()) for row in block for a in corners}))
    return sum(counts) / len(counts)


def weight_of(dist: str, channels: int, ndim: int) -> torch.Tensor:
    if dist == "zero":
        return torch.zeros(channels, ndim)
    return make_weight(channels, ndim, torch.device("cpu"), 0, dist)


def fit_line(points):
    xs, ys = zip(*points)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - slope * mx, slope


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--backward", action="store_true",
                   help="time the backward (both gradients) by gathers and by planes")
    p.add_argument("--shapes", help="comma-separated NxCxL... shapes (default: in-cache ones)")
    args = p.parse_args()
    shapes = SHAPES if not args.shapes else [tuple(int(v) for v in s.split("x"))
                                             for s in args.shapes.split(",")]
    torch.set_num_threads(args.threads)
    if args.backward:
        return backward(shapes, args.repeats)
    rows = []
    for shape in shapes:
        ndim = len(shape) - 2
        fmt = torch.channels_last if ndim == 2 else torch.channels_last_3d
        x = torch.randn(shape).contiguous(memory_format=fmt)
        vectors = x.numel() * x.element_size() / 64
        for active in (False, True):
            for dist in DISTRIBUTIONS:
                w = weight_of(dist, shape[1], ndim)
                taps = mean_taps(w, 16, active)
                chosen = cpp.kernel_name("forward", x, active=active, weight=w).split()[0]
                times = {}
                for kernel in KERNELS:
                    try:
                        with cpp.kernel_override(kernel):
                            ms = best_ms(lambda: ts.shift(x, w, active=active), args.repeats)
                    except RuntimeError:
                        continue
                    times[kernel] = ms * 1e6 / vectors
                rows.append((shape, active, dist, taps, times, chosen))
                cells = "  ".join(f"{k} {v:6.2f}" for k, v in times.items())
                print(f"{'x'.join(map(str, shape)):>14} {'active' if active else 'ssl':6} "
                      f"{dist:10} taps {taps:5.1f}  {cells}  chosen {chosen}", flush=True)
    print("\nfit (ns per 64-byte output vector, one thread):")
    for active in (False, True):
        mode = [r for r in rows if r[1] == active]
        base, slope = fit_line([(r[3], r[4]["taps"]) for r in mode if "taps" in r[4]])
        gather = statistics.median(
            r[4]["gather"] / (2 ** (len(r[0]) - 3) if active else 1)
            for r in mode if "gather" in r[4])
        planes = statistics.median(r[4]["planes"] for r in mode if "planes" in r[4])
        name = "active" if active else "ssl"
        gather_name = "gather_pair" if active else "gather"
        print(f"  {name}: tap_base {base:.2f} tap {slope:.2f} {gather_name} {gather:.2f} "
              f"planes {planes:.2f}")
    print("\nthe model's choice against the fastest kernel:")
    worst = 1.0
    hits = 0
    for shape, active, dist, taps, times, chosen in rows:
        kernel = next((k for k in KERNELS if chosen.endswith(f"cl_{k}")), None)
        if kernel is None or kernel not in times:
            continue
        fastest = min(times.values())
        ratio = times[kernel] / fastest
        hits += ratio <= 1.05
        worst = max(worst, ratio)
        if ratio > 1.05:
            print(f"  {'x'.join(map(str, shape))} {'active' if active else 'ssl'} {dist}: "
                  f"{kernel} is {ratio:.2f}x the fastest ({min(times, key=times.get)})")
    print(f"  fastest (within 5%) in {hits} of {len(rows)} cases; worst {worst:.2f}x")
    return 0


def backward(shapes, repeats: int) -> int:
    worst = 1.0
    for shape in shapes:
        ndim = len(shape) - 2
        fmt = torch.channels_last if ndim == 2 else torch.channels_last_3d
        x = torch.randn(shape).contiguous(memory_format=fmt).requires_grad_()
        vectors = x.numel() * x.element_size() / 64
        for active in (False, True):
            for dist in DISTRIBUTIONS:
                w = weight_of(dist, shape[1], ndim).requires_grad_()
                y = ts.shift(x, w, active=active)
                g = torch.randn_like(y)
                chosen = cpp.kernel_name("backward", x, active=active, grad_output=g)
                times = {}
                for kernel in ("gather", "planes"):
                    try:
                        with cpp.kernel_override(kernel):
                            ms = best_ms(lambda: torch.autograd.grad(y, (x, w), g,
                                                                     retain_graph=True), repeats)
                    except RuntimeError:
                        continue
                    times[kernel] = ms * 1e6 / vectors
                kernel = "planes" if "planes" in chosen else "gather"
                ratio = times.get(kernel, 0) / min(times.values()) if times else 1.0
                worst = max(worst, ratio)
                cells = "  ".join(f"{k} {v:6.2f}" for k, v in times.items())
                print(f"{'x'.join(map(str, shape)):>14} {'active' if active else 'ssl':6} "
                      f"{dist:10} {cells}  chosen {chosen} ({ratio:.2f}x the fastest)",
                      flush=True)
    print(f"worst: the chosen backward is {worst:.2f}x the fastest")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
