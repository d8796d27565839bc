"""The backward's output mask: what one gradient costs next to both, and a Grouped Shift step.

    python benchmarks/masked_backward.py [--shapes 32x64x56x56,8x256x28x28] [--threads 2]

Prints, per shape and layout (float32), the time of ``torchshift2::shift_backward`` with
``output_mask`` both / grad_input only / grad_weight only (SSL and Active Shift, ``uniform1.5``
shifts), their ratios to both, and a Grouped Shift training step (forward + grad_input of a
``GroupedShift2d``) as a ratio to ``x.clone()``; every number of a table from one process,
min over ``torch.utils.benchmark`` runs, each measured twice to show the spread.
"""

from __future__ import annotations

import argparse

import torch
import torch.utils.benchmark as benchmark

import torchshift2 as ts


def _time(fn, threads: int) -> tuple:
    """(min, second run's min) in ms over two blocked_autorange runs."""
    runs = []
    for _ in range(2):
        timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=threads)
        runs.append(timer.blocked_autorange(min_run_time=0.4).median * 1e3)
    return min(runs), max(runs)


def _layout(x: torch.Tensor, fmt: str) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if fmt == "channels_last" else x


def rows_for(shape, fmt: str, threads: int):
    torch.manual_seed(0)
    x = _layout(torch.randn(shape), fmt)
    weight = (torch.rand(shape[1], 2) * 3 - 1.5)
    grad = _layout(torch.randn(shape), fmt)
    op = torch.ops.torchshift2.shift_backward.default
    clone = _time(lambda: x.clone(), threads)
    rows = []
    for active in (False, True):
        times = {}
        for name, mask in (("both", [True, True]), ("grad_input", [True, False]),
                           ("grad_weight", [False, True])):
            times[name] = _time(lambda: op(grad, x, weight, "zeros", active, [0] * 4, mask),
                                threads)
        rows.append((active, times))
    layer = ts.GroupedShift2d(shape[1], kernel_size=3)
    xr = x.clone().requires_grad_()

    def grouped_step():  # (autograd.grad: no accumulation into a .grad between runs)
        out, _ = layer(xr)
        torch.autograd.grad(out, xr, grad)

    def grouped_forward():
        with torch.no_grad():
            layer(x)

    return clone, rows, _time(grouped_step, threads), _time(grouped_forward, threads)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="32x64x56x56,8x256x28x28")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, backend "
          f"{ts.backends.resolve(torch.device('cpu'))}, float32, ms (min / second run)")
    for text in args.shapes.split(","):
        shape = tuple(int(v) for v in text.split("x"))
        for fmt in ("contiguous", "channels_last"):
            clone, rows, grouped, grouped_forward = rows_for(shape, fmt, args.threads)
            print(f"\n{text} {fmt}: clone {clone[0]:.3f} / {clone[1]:.3f} ms")
            print("| mode | both | grad_input only | grad_weight only | input / both | "
                  "weight / both |")
            print("|---|---|---|---|---|---|")
            for active, t in rows:
                both, gi, gw = t["both"], t["grad_input"], t["grad_weight"]
                print(f"| {'active' if active else 'SSL'} | {both[0]:.3f} / {both[1]:.3f} | "
                      f"{gi[0]:.3f} / {gi[1]:.3f} | {gw[0]:.3f} / {gw[1]:.3f} | "
                      f"{gi[0] / both[0]:.2f} | {gw[0] / both[0]:.2f} |")
            print(f"Grouped Shift step (forward + grad_input): {grouped[0]:.3f} / "
                  f"{grouped[1]:.3f} ms = {grouped[0] / clone[0]:.2f}x clone (its forward "
                  f"alone {grouped_forward[0]:.3f} ms = {grouped_forward[0] / clone[0]:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
