"""``--scaling``: forward SSL / active (and the copy floors) at 1x, 4x and 16x of a base 2D
size, with one thread and with all threads."""

from __future__ import annotations

import gc
import itertools
import math
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from torchshift2 import reference
from torchshift2.functional import shift

from . import cases as C
from .check import SanityError
from .measure import Config
from .report import align, fmt_ms
from .timing import time_fn

SCALING_CASES = ("clone", "copy", "ssl_fwd", "active_fwd")
SCALING_FACTORS = (1, 4, 16)
#: Columns of ``<name>-scaling.csv``; added columns go at the end (see ``ROW_FIELDS``).
SCALING_FIELDS = (
    "factor", "shape", "format", "dtype", "padding", "device", "backend", "case", "threads",
    "median_ms", "ns_per_element", "speedup_vs_1_thread", "per_element_vs_1x", "numel",
    "cpu_model", "gpu_model", "torch_version", "backend_selected", "distribution",
)


def scaled_shapes(base: Tuple[int, ...]) -> List[Tuple[int, Tuple[int, ...]]]:
    out = []
    for factor in SCALING_FACTORS:
        side = int(round(math.sqrt(factor)))
        out.append((factor, base[:2] + tuple(s * side for s in base[2:])))
    return out


def _functions(cfg: Config, xs: Sequence[torch.Tensor], weights: Dict[str, list]):
    """``(case, distribution, fn, input sets)`` of one size."""
    buffer = torch.empty_like(xs[0])
    single = [(x,) for x in xs]
    yield "clone", C.NO_DISTRIBUTION, (lambda x: x.clone()), single
    yield "copy", C.NO_DISTRIBUTION, (lambda x: buffer.copy_(x)), single
    for dist, ws in weights.items():
        for case, active in (("ssl_fwd", False), ("active_fwd", True)):
            yield case, dist, (lambda x, w, a=active: shift(x, w, cfg.padding, a)), \
                list(zip(xs, ws))


def _time_size(cfg: Config, shape: Tuple[int, ...], layout: str, dtype: torch.dtype,
               log: Callable[[str], None], label: str) -> List[dict]:
    thread_counts = sorted({1, torch.get_num_threads()})
    xs = [C.make_input(shape, dtype, layout, cfg.device, seed=i) for i in range(cfg.input_sets)]
    weights = {d: [C.make_weight(shape[1], len(shape) - 2, cfg.device, seed=i, distribution=d)
                   for i in range(cfg.input_sets)] for d in cfg.distributions}
    if cfg.check:
        for dist, ws in weights.items():
            with torch.no_grad():
                if not torch.equal(shift(xs[0], ws[0], cfg.padding, False),
                                   reference.shift(xs[0], ws[0], cfg.padding, False)):
                    raise SanityError(f"{label} {dist}: SSL forward differs from the reference")
    out = []
    for case, dist, fn, sets in _functions(cfg, xs, weights):
        per_threads = {}
        for threads in thread_counts:
            with torch.no_grad():
                per_threads[threads] = time_fn(
                    fn, sets, threads=threads, min_run_time=cfg.min_run_time,
                    adaptive=cfg.adaptive, runs=cfg.runs, quick=cfg.quick).median
            log(f"  {case:<12} {dist:<10} {threads:>3} thr {per_threads[threads] * 1e3:10.4f} ms")
        out += [dict(case=case, distribution=dist, threads=t, seconds=per_threads[t],
                     speedup=per_threads[1] / per_threads[t]) for t in thread_counts]
    return out


def _per_element_vs_1x(rows: List[dict]) -> None:
    """Per-element time relative to the 1x size (1.0 = perfectly linear in the size)."""
    keys = ("case", "distribution", "threads", "format", "dtype")
    base = {tuple(r[k] for k in keys): r["ns_per_element"] for r in rows if r["factor"] == 1}
    for r in rows:
        reference_ns = base.get(tuple(r[k] for k in keys))
        r["per_element_vs_1x"] = r["ns_per_element"] / reference_ns if reference_ns else None


def run_scaling(cfg: Config, base: Tuple[int, ...], meta: dict,
                log: Callable[[str], None]) -> List[dict]:
    rows = []
    for layout, dtype in itertools.product(cfg.formats, cfg.dtypes):
        for factor, shape in scaled_shapes(base):
            label = f"scaling {factor}x {C.shape_text(shape)} {layout} {C.dtype_name(dtype)}"
            need = C.estimate_bytes(shape, dtype, cfg.input_sets)
            if cfg.mem_budget is not None and need > cfg.mem_budget:
                log(f"{label}: skipped, needs ~{need / 2**30:.1f} GiB > budget")
                continue
            log(label)
            numel = math.prod(shape)
            for t in _time_size(cfg, shape, layout, dtype, log, label):
                rows.append({
                    "factor": factor, "shape": C.shape_text(shape), "format": layout,
                    "dtype": C.dtype_name(dtype), "padding": cfg.padding,
                    "device": str(cfg.device), "backend": meta["backend"], "case": t["case"],
                    "threads": t["threads"], "median_ms": t["seconds"] * 1e3,
                    "ns_per_element": t["seconds"] * 1e9 / numel,
                    "speedup_vs_1_thread": t["speedup"], "per_element_vs_1x": None,
                    "numel": numel, "cpu_model": meta["cpu_model"],
                    "gpu_model": meta["gpu_model"], "torch_version": meta["torch_version"],
                    "backend_selected": meta["backend_selected"],
                    "distribution": t["distribution"],
                })
            gc.collect()
    _per_element_vs_1x(rows)
    return rows


def format_scaling_table(rows: Sequence[dict]) -> str:
    header = ("size", "shape", "format", "dtype", "case", "distribution", "threads",
              "median ms", "ns/elem", "speedup", "ns/elem vs 1x")
    lines = [(f"{r['factor']}x", r["shape"], r["format"], r["dtype"], r["case"],
              "-" if r["distribution"] == C.NO_DISTRIBUTION else r["distribution"],
              str(r["threads"]), fmt_ms(r["median_ms"]), f"{r['ns_per_element']:.3f}",
              f"{r['speedup_vs_1_thread']:.2f}",
              "" if r["per_element_vs_1x"] is None else f"{r['per_element_vs_1x']:.2f}")
             for r in rows]
    return align(header, lines, left=6)
