"""The backward's output mask: what one gradient costs next to both, and a Grouped Shift step.

    python benchmarks/masked_backward.py [--shapes 32x64x56x56,8x256x28x28] [--threads 2]
        [--rounds 9] [--cold]

Prints, per shape and layout (float32), the time of ``torchshift2::shift_backward`` with
``output_mask`` both / grad_input only / grad_weight only (SSL and Active Shift, ``uniform1.5``
shifts), their ratios to both, and a Grouped Shift training step (forward + grad_input of a
``GroupedShift2d``) as a ratio to ``x.clone()``. Every number of a table comes from one
process, and every ratio is paired: in each of ``--rounds`` rounds, each case is timed right
after the case it is divided by (``both`` for the masks, ``clone`` for the step), and the
table shows the median over the rounds of the times (ms) and of the ratios. On a machine
whose speed drifts, this compares cases under the same conditions, where the min of each
case alone would pair one case's fast spell with another's slow one.

By default each case runs in a loop, so what fits the last-level cache stays there between
calls: a clone of a 25.7 MB tensor (51 MB of traffic) keeps part of it in a 32 MB L3, a
Grouped Shift step (four such tensors) almost none, and the ratio moves with how much the
clone keeps. ``--cold`` times every call alone after writing 256 MiB (``EVICT_BYTES``), so
that each case reads and writes memory, not the cache: the comparison at the memory floor
(the median of 15 such calls per case and round).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.utils.benchmark as benchmark

import torchshift2 as ts


#: Bytes written before each call of ``--cold``: more than the last-level cache of any machine
#: this runs on (as ``triton.testing.do_bench`` flushes the cache with a 256 MB write).
EVICT_BYTES = 256 << 20


class _Evictor:
    """Writes EVICT_BYTES, so that the next call finds none of its data in the caches."""

    def __init__(self):
        self.buffer = torch.empty(EVICT_BYTES // 4, dtype=torch.float32)
        self.value = 0.0

    def __call__(self):
        self.value += 1.0
        self.buffer.fill_(self.value)


def _ms(fn, threads: int, evict=None) -> float:
    if evict is None:
        timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=threads)
        return timer.blocked_autorange(min_run_time=0.1).median * 1e3
    fn()  # warm-up: allocations, the output cache
    samples = []
    for _ in range(15):
        evict()
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def _paired(cases: dict, pairs: dict, threads: int, rounds: int, evict=None) -> tuple:
    """({case: median ms}, {case: median of its ratio to pairs[case], timed just before it})."""
    times = {name: [] for name in cases}
    ratios = {name: [] for name in pairs}
    for _ in range(rounds):
        for name, fn in cases.items():
            if name in pairs:
                base = _ms(cases[pairs[name]], threads, evict)
                t = _ms(fn, threads, evict)
                ratios[name].append(t / base)
            else:
                t = _ms(fn, threads, evict)
            times[name].append(t)
    return (
        {n: statistics.median(v) for n, v in times.items()},
        {n: statistics.median(v) for n, v in ratios.items()},
    )


def _layout(x: torch.Tensor, fmt: str) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if fmt == "channels_last" else x


def times_for(shape, fmt: str, threads: int, rounds: int, evict=None) -> tuple:
    """:func:`_paired`'s (times, ratios) for one shape and layout."""
    torch.manual_seed(0)
    x = _layout(torch.randn(shape), fmt)
    weight = torch.rand(shape[1], 2) * 3 - 1.5
    grad = _layout(torch.randn(shape), fmt)
    op = torch.ops.torchshift2.shift_backward.default
    cases = {"clone": lambda: x.clone()}
    for active in (False, True):
        for name, mask in (
            ("both", [True, True]),
            ("grad_input", [True, False]),
            ("grad_weight", [False, True]),
        ):
            cases[active, name] = lambda mask=mask, active=active: op(
                grad, x, weight, "zeros", active, [0] * 4, mask
            )
    layer = ts.GroupedShift2d(shape[1], kernel_size=3)
    xr = x.clone().requires_grad_()

    def grouped_step():  # (autograd.grad: no accumulation into a .grad between runs)
        out, _ = layer(xr)
        torch.autograd.grad(out, xr, grad)

    def grouped_forward():
        with torch.no_grad():
            layer(x)

    cases["grouped_step"] = grouped_step
    cases["grouped_forward"] = grouped_forward
    pairs = {"grouped_step": "clone", "grouped_forward": "clone"}
    for active in (False, True):
        pairs[active, "grad_input"] = pairs[active, "grad_weight"] = (active, "both")
    return _paired(cases, pairs, threads, rounds, evict)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="32x64x56x56,8x256x28x28")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--cold", action="store_true",
                        help="time each call alone with the last-level cache evicted first")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    evict = _Evictor() if args.cold else None
    print(
        f"torch {torch.__version__}, {args.threads} threads, backend "
        f"{ts.backends.resolve(torch.device('cpu'))}, float32; medians over {args.rounds} "
        "rounds of the times (ms) and of the paired ratios; "
        + (f"cold: each call after writing {EVICT_BYTES >> 20} MiB"
           if args.cold else "warm: calls in a loop")
    )
    for text in args.shapes.split(","):
        shape = tuple(int(v) for v in text.split("x"))
        for fmt in ("contiguous", "channels_last"):
            t, r = times_for(shape, fmt, args.threads, args.rounds, evict)
            print(f"\n{text} {fmt}: clone {t['clone']:.3f} ms")
            print(
                "| mode | both | grad_input only | grad_weight only | input / both | "
                "weight / both |"
            )
            print("|---|---|---|---|---|---|")
            for active in (False, True):
                name = "active" if active else "SSL"
                both, gi, gw = (t[active, k] for k in ("both", "grad_input", "grad_weight"))
                print(
                    f"| {name} | {both:.3f} | {gi:.3f} | {gw:.3f} | "
                    f"{r[active, 'grad_input']:.2f} | {r[active, 'grad_weight']:.2f} |"
                )
            print(
                f"Grouped Shift step (forward + grad_input): {t['grouped_step']:.3f} ms = "
                f"{r['grouped_step']:.2f}x clone (its forward alone "
                f"{t['grouped_forward']:.3f} ms = {r['grouped_forward']:.2f}x)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
