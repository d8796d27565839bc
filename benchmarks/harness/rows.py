"""Result rows: one per (shape, layout, dtype, distribution, case), with every ratio."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import cases as C
from .measure import Measured, Results
from .timing import Timing

#: Columns of the result CSV (the JSON rows have the same keys). Columns added after the
#: first release go at the end, so that readers by position keep working; a file without
#: ``distribution`` was measured with ``uniform1.5``.
ROW_FIELDS = (
    "shape_name", "shape", "ndim", "format", "dtype", "weight_dtype", "padding", "device",
    "backend", "case", "median_ms", "run_min_ms", "run_max_ms", "runs", "measurements",
    "ratio_clone", "ratio_copy", "ratio_dwconv", "floor_bytes", "gbps", "numel", "threads",
    "note",
    "cpu_model", "gpu_model", "torch_version", "backend_selected",
    "distribution", "ratio_dwconv_best", "dwconv_best_format", "ratio_nchw", "moving_channels",
)
#: Ratio columns: (row key, table header, what it divides by).
RATIOS = (
    ("ratio_clone", "x clone", "x.clone() in the row's layout"),
    ("ratio_copy", "x copy_", "out.copy_(x) in the row's layout"),
    ("ratio_dwconv_best", "x dw best", "the 3x3 depthwise conv, same direction, faster layout"),
    ("ratio_dwconv", "x dw same", "the 3x3 depthwise conv, same direction, same layout"),
    ("ratio_nchw", "x NCHW", "the same case and distribution in the contiguous layout"),
)
NAN = float("nan")


def _conv_case(case: str) -> str:
    return "dwconv_fwdbwd" if case.endswith("fwdbwd") else "dwconv_fwd"


def _timing(results: Optional[Results], dist: str, case: str) -> Optional[Timing]:
    measured = (results or {}).get((dist, case))
    return measured.timing if measured is not None else None


def _best_conv(group: Dict[str, Results], case: str) -> Tuple[Optional[Timing], str]:
    """The faster of the conv's dense layouts for ``case``'s direction, and that layout."""
    found = [(t, layout) for layout in ("contiguous", "channels_last")
             if (t := _timing(group.get(layout), C.NO_DISTRIBUTION, _conv_case(case)))]
    if not found:
        return None, ""
    return min(found, key=lambda pair: pair[0].median)


def _ratio(timing: Timing, other: Optional[Timing]) -> float:
    return timing.median / other.median if other is not None else NAN


def _ratios(group: Dict[str, Results], layout: str, dist: str, case: str,
            timing: Timing) -> dict:
    results = group[layout]
    best, best_layout = _best_conv(group, case)
    nchw = _timing(group.get("contiguous"), dist, case) if layout != "contiguous" else None
    return {
        "ratio_clone": _ratio(timing, _timing(results, C.NO_DISTRIBUTION, "clone")),
        "ratio_copy": _ratio(timing, _timing(results, C.NO_DISTRIBUTION, "copy")),
        "ratio_dwconv": _ratio(timing, _timing(results, C.NO_DISTRIBUTION, _conv_case(case))),
        "ratio_dwconv_best": _ratio(timing, best),
        "dwconv_best_format": best_layout,
        "ratio_nchw": _ratio(timing, nchw),
    }


def _row(base: dict, case: str, dist: str, measured: Measured, numel: int,
         element_size: int) -> dict:
    timing = measured.timing
    floor_bytes = C.FLOOR_TRANSFERS[case] * numel * element_size
    return {
        **base,
        "case": case,
        "distribution": dist,
        "median_ms": timing.median * 1e3,
        "run_min_ms": min(timing.run_medians) * 1e3,
        "run_max_ms": max(timing.run_medians) * 1e3,
        "runs": len(timing.run_medians),
        "measurements": timing.measurements,
        "floor_bytes": floor_bytes,
        # the case's minimal traffic over its time: compare with copy's
        "gbps": floor_bytes / timing.median / 1e9,
        "note": measured.note,
    }


def _base(cfg, shape_name: str, shape: Sequence[int], layout: str, dtype: torch.dtype,
          meta: dict) -> dict:
    return {
        "shape_name": shape_name, "shape": C.shape_text(shape), "ndim": len(shape) - 2,
        "format": layout, "dtype": C.dtype_name(dtype), "weight_dtype": "float32",
        "padding": cfg.padding, "device": str(cfg.device), "backend": meta["backend"],
        "numel": math.prod(shape), "threads": torch.get_num_threads(),
        "cpu_model": meta["cpu_model"], "gpu_model": meta["gpu_model"],
        "torch_version": meta["torch_version"], "backend_selected": meta["backend_selected"],
    }


def _distributions_of(case: str, distributions: Sequence[str]) -> Sequence[str]:
    if case in C.WEIGHTLESS_CASES:
        return (C.NO_DISTRIBUTION,)
    if case == "ssl_inplace_sparse":
        return (C.INPLACE_DISTRIBUTION,)
    return distributions


def build_rows(cfg, group: Dict[str, Results], shape_name: str, shape: Sequence[int],
               dtype: torch.dtype, formats: Sequence[str], distributions: Sequence[str],
               meta: dict) -> Tuple[List[dict], List[str]]:
    """``(rows, notes)`` of the requested ``formats`` (the extra layouts only feed ratios),
    a case's distributions next to each other."""
    rows, notes = [], []
    element_size = torch.empty((), dtype=dtype).element_size()
    numel = math.prod(shape)
    for layout in formats:
        base = _base(cfg, shape_name, shape, layout, dtype, meta)
        for case in C.CASES:
            for dist in _distributions_of(case, distributions):
                measured = group[layout].get((dist, case))
                if measured is None:
                    continue
                if measured.timing is None:  # never a fake row: a note says why
                    notes.append(f"{layout} {dist} {case} skipped: {measured.note}")
                    continue
                row = _row(base, case, dist, measured, numel, element_size)
                row.update(_ratios(group, layout, dist, case, measured.timing))
                row["moving_channels"] = _moving(cfg, shape, dist)
                rows.append(row)
    return rows, list(dict.fromkeys(notes))


def _moving(cfg, shape: Sequence[int], dist: str) -> Optional[int]:
    """Channels the first input set's weights move (``None`` for weightless cases)."""
    if dist == C.NO_DISTRIBUTION:
        return None
    return C.moving_channels(C.make_weight(shape[1], len(shape) - 2, torch.device("cpu"), 0,
                                           dist))
