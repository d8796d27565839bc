"""Timing with ``torch.utils.benchmark.Timer``: all threads, warm-up, medians, inputs rotated."""

from __future__ import annotations

import dataclasses
import gc
import itertools
from typing import Callable, Dict, List, Sequence, Tuple

from torch.utils.benchmark import Timer


@dataclasses.dataclass
class Timing:
    median: float  # seconds, pooled over runs
    run_medians: List[float]
    measurements: int


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def _one_run(timer: Timer, min_run_time: float, adaptive: bool, quick: bool):
    """``(times, run median)`` of one measurement."""
    if quick:
        # Smoke test: a fixed small number of calls, no block-size search.
        parts = [timer.timeit(number=4) for _ in range(3)]
        return [p.median for p in parts], median([p.median for p in parts])
    if adaptive:
        m = timer.adaptive_autorange(min_run_time=min_run_time,
                                     max_run_time=max(10 * min_run_time, 1.0))
    else:
        m = timer.blocked_autorange(min_run_time=min_run_time)
    return list(m.times), m.median


def time_fn(fn: Callable, sets: Sequence[tuple], *, threads: int, min_run_time: float,
            adaptive: bool, runs: int = 1, warmup: int = 1, quick: bool = False) -> Timing:
    """Median seconds of ``fn(*args)``, ``args`` rotating through ``sets``.

    ``fn`` is first run ``warmup`` times per input set; each run is one
    ``blocked_autorange`` (or ``adaptive_autorange``) with ``num_threads=threads`` (the
    Timer's default is one thread); ``quick`` replaces it by 3 x ``timeit(number=4)``.
    """
    for _ in range(warmup):
        for args in sets:
            fn(*args)
    times: List[float] = []
    run_medians = []
    for _ in range(runs):
        if not quick:  # a collection costs more than a whole smoke-test measurement
            gc.collect()
        rotation = itertools.cycle(sets)
        timer = Timer(stmt="fn(*next(rotation))", globals={"fn": fn, "rotation": rotation},
                      num_threads=threads)
        run_times, run_median = _one_run(timer, min_run_time, adaptive, quick)
        times.extend(run_times)
        run_medians.append(run_median)
    return Timing(median=median(times), run_medians=run_medians, measurements=len(times))


def time_interleaved(fns: Dict[str, Tuple[Callable, Sequence[tuple]]], runs: int,
                     **timing_kw) -> Dict[str, Timing]:
    """Each of ``fns`` ``runs`` times, taking turns (a, b, a, b): for ops whose speed depends
    on the allocator's state, so that every run sees a different one. The median is that of
    the run medians, whose spread is reported."""
    pooled: Dict[str, List[Timing]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, (fn, sets) in fns.items():
            pooled[name].append(time_fn(fn, sets, runs=1, **timing_kw))
    out = {}
    for name, parts in pooled.items():
        medians = [t.run_medians[0] for t in parts]
        out[name] = Timing(median=median(medians), run_medians=medians,
                           measurements=sum(t.measurements for t in parts))
    return out
