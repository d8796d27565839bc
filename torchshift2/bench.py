"""Benchmark harness: ``python -m torchshift2.bench`` (``make bench``).

For every (shape, memory format, dtype) row it times, in one process and one run, with
``torch.utils.benchmark.Timer`` (all threads, warm-up, medians, inputs rotated):

- the floors ``x.clone()`` (allocates, so page faults included) and ``out.copy_(x)``
  (an existing buffer);
- our op: SSL and active forward, SSL and active forward+backward (grad_input and
  grad_weight from a precomputed grad_output), and ``shift_`` (in place) with 90% of the
  shifts zero, the inference case of a trained Sparse Shift Layer;
- the pure-torch reference forward, eager and under ``torch.compile``;
- a 3x3 (3 or 3x3x3) depthwise convolution forward and forward+backward in the same
  memory format, run at least twice because its speed is allocator-bimodal.

Before timing a row it checks that our forward (and, on a one-sample slice, our backward)
matches the reference, and stops with an error if not: a benchmark never reports a broken
kernel. ``--scaling`` instead times the forward at 1x/4x/16x of a base 2D size with one
thread and all threads. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import gc
import importlib.util
import itertools
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.benchmark import Timer

from . import backends as _backend
from . import reference
from .functional import shift, shift_

__all__ = ["main", "SHAPES", "QUICK_SHAPES", "CASES", "DEFAULT_CASES", "ROW_FIELDS"]

#: Named benchmark shapes ``(N, C, *spatial)``.
SHAPES: Dict[str, Tuple[int, ...]] = {
    "1d": (64, 128, 4096),
    "2d_56": (32, 64, 56, 56),
    "2d_28": (8, 256, 28, 28),
    "2d_112": (128, 32, 112, 112),
    "3d": (4, 32, 16, 32, 32),
}
#: Tiny shapes for ``--quick`` (the CI smoke test).
QUICK_SHAPES: Dict[str, Tuple[int, ...]] = {
    "q1d": (2, 8, 64),
    "q2d": (2, 8, 12, 12),
    "q3d": (1, 4, 4, 6, 6),
}

#: Every case, in the order a row runs them. ``clone`` and ``copy`` always run (they are
#: the denominators of the ratios).
CASES = (
    "clone",
    "copy",
    "ssl_fwd",
    "active_fwd",
    "ssl_fwdbwd",
    "active_fwdbwd",
    "ssl_inplace_sparse",
    "ref_ssl_fwd",
    "ref_ssl_compiled",
    "ref_active_fwd",
    "ref_active_compiled",
    "dwconv_fwd",
    "dwconv_fwdbwd",
)
#: Cases run when ``--cases`` is not given (the active reference is opt-in).
DEFAULT_CASES = tuple(c for c in CASES if c not in ("ref_active_fwd", "ref_active_compiled"))
_ALWAYS = ("clone", "copy")
_CONV_CASES = ("dwconv_fwd", "dwconv_fwdbwd")
_COMPILED_CASES = ("ref_ssl_compiled", "ref_active_compiled")

FORMATS = ("contiguous", "channels_last")
_FORMAT_ALIASES = {
    "contiguous": "contiguous", "nchw": "contiguous", "ncl": "contiguous", "ncdhw": "contiguous",
    "channels_last": "channels_last", "cl": "channels_last", "nhwc": "channels_last",
    "channels_last_3d": "channels_last", "ndhwc": "channels_last",
}
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}
_SCALING_CASES = ("clone", "copy", "ssl_fwd", "active_fwd")
#: Tensor-sized transfers a case must make at least: a forward reads the input and writes
#: the output; forward+backward adds reading grad_output and input, writing grad_input.
_FLOOR_TRANSFERS = {case: 5 if case.endswith("fwdbwd") else 2 for case in CASES}
#: ``ssl_inplace_sparse``: the fraction of channels that move (trained SSL: most shifts are 0).
SPARSE_MOVING = 0.1
_FLOOR_TRANSFERS["ssl_inplace_sparse"] = 2 * SPARSE_MOVING
_SCALING_FACTORS = (1, 4, 16)

#: Columns of the result CSV (the JSON rows have the same keys).
ROW_FIELDS = (
    "shape_name", "shape", "ndim", "format", "dtype", "weight_dtype", "padding", "device",
    "backend", "case", "median_ms", "run_min_ms", "run_max_ms", "runs", "measurements",
    "ratio_clone", "ratio_copy", "ratio_dwconv", "floor_bytes", "gbps", "numel", "threads",
    "note",
    "cpu_model", "gpu_model", "torch_version", "backend_selected",
)
SCALING_FIELDS = (
    "factor", "shape", "format", "dtype", "padding", "device", "backend", "case", "threads",
    "median_ms", "ns_per_element", "speedup_vs_1_thread", "per_element_vs_1x", "numel",
    "cpu_model", "gpu_model", "torch_version", "backend_selected",
)


class SanityError(RuntimeError):
    """Our kernel disagrees with the reference: the benchmark refuses to time it."""


# --------------------------------------------------------------------------------------------
# Machine information


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _total_memory_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _git_commit() -> Optional[str]:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
            capture_output=True, text=True, timeout=10,
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(device: torch.device) -> dict:
    """Where and with what the numbers were taken."""
    info = {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "memory_gib": round((_total_memory_bytes() or 0) / 2**30, 1),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "backend_selected": _backend.selected_backend(),
        "backend": _backend.resolve(device),
        "device": str(device),
        "gpu_model": torch.cuda.get_device_name(device) if device.type == "cuda" else "",
        "git_commit": _git_commit(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        from . import __version__

        info["torchshift2_version"] = __version__
    except ImportError:  # pragma: no cover
        pass
    return info


# --------------------------------------------------------------------------------------------
# Argument parsing


def _split(text: str) -> List[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_shape(text: str) -> Tuple[int, ...]:
    """``"8x64x32x32"`` -> ``(8, 64, 32, 32)``; 3 to 5 dims (N, C, 1 to 3 spatial)."""
    parts = text.lower().split("x")
    try:
        shape = tuple(int(p) for p in parts if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shapes: {text!r} is neither a shape name nor NxCxL..")
    if not 3 <= len(shape) <= 5 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"--shapes: {text!r}: expected 3 to 5 positive sizes (N, C, 1 to 3 spatial dims)"
        )
    return shape


def _parse_shapes(text: Optional[str], quick: bool) -> List[Tuple[str, Tuple[int, ...]]]:
    known = {**SHAPES, **QUICK_SHAPES}
    if not text:
        table = QUICK_SHAPES if quick else SHAPES
        return list(table.items())
    selected = []
    for part in _split(text):
        if part in known:
            selected.append((part, known[part]))
        elif part in ("all", "default"):
            selected.extend(SHAPES.items())
        elif part == "quick":
            selected.extend(QUICK_SHAPES.items())
        else:
            shape = parse_shape(part)
            selected.append(("x".join(map(str, shape)), shape))
    return selected


def _parse_list(text: str, table: dict, option: str) -> list:
    out = []
    for name in _split(text):
        key = name.lower()
        if key not in table:
            raise argparse.ArgumentTypeError(
                f"{option}: unknown {name!r}; expected one of {sorted(set(table))}"
            )
        if table[key] not in out:
            out.append(table[key])
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m torchshift2.bench",
        description="Time torchshift2's shift ops against copy floors, the reference and a "
        "depthwise convolution. Reports medians and ratios to x.clone() / out.copy_(x).",
    )
    p.add_argument("--shapes", default=None,
                   help="comma-separated shape names (" + ", ".join(
                       f"{k}={'x'.join(map(str, v))}" for k, v in {**SHAPES, **QUICK_SHAPES}.items())
                   + "; 'all', 'quick') or custom NxCxL[xL[xL]] shapes")
    p.add_argument("--dtypes", default="float32,bfloat16",
                   help="comma-separated: float32, bfloat16, float16, float64 (default: %(default)s)")
    p.add_argument("--formats", default="contiguous,channels_last",
                   help="comma-separated: contiguous (nchw), channels_last (nhwc; the 1D analogue "
                   "and channels_last_3d for 3D data) (default: %(default)s)")
    p.add_argument("--cases", default=None,
                   help="comma-separated cases (clone and copy always run): " + ", ".join(CASES)
                   + "; 'all'. Default: all but the active reference")
    p.add_argument("--padding", default="zeros",
                   help="padding of our op and the reference (default: %(default)s)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--backend", default=None, choices=_backend.BACKENDS,
                   help="force a torchshift2 backend (default: TORCHSHIFT2_BACKEND or auto)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads(N) before timing (default: torch's default)")
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes and short timings: a smoke test, not a measurement")
    p.add_argument("--no-compile", action="store_true",
                   help="skip the torch.compile'd reference cases")
    p.add_argument("--min-run-time", type=float, default=1.0,
                   help="seconds per blocked_autorange measurement (default: %(default)s; "
                   "--quick times 3 x 4 calls instead)")
    p.add_argument("--adaptive", action="store_true",
                   help="use Timer.adaptive_autorange (stops when IQR/median < 0.1) instead of "
                   "blocked_autorange")
    p.add_argument("--input-sets", type=int, default=3,
                   help="different input tensors rotated through the timed loop (default: %(default)s)")
    p.add_argument("--runs", type=int, default=1,
                   help="measurements per case, reported as pooled median and min/max of the "
                   "run medians; depthwise conv always gets at least 2 (default: %(default)s)")
    p.add_argument("--mem-budget-gb", type=float, default=None,
                   help="skip rows whose buffers would need more (default: 1/4 of RAM or GPU memory)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the forward/backward check against the reference (not recommended)")
    p.add_argument("--scaling", action="store_true",
                   help="instead of the table: forward SSL/active at 1x/4x/16x of a base 2D size, "
                   "with 1 thread and all threads")
    p.add_argument("--scaling-base", default=None,
                   help="base NxCxHxW of --scaling; 4x and 16x double / quadruple H and W "
                   "(default 8x64x28x28; --quick 2x8x8x8)")
    p.add_argument("--out", default=None,
                   help="directory for <name>.csv and <name>.json (and <name>.png with --plot)")
    p.add_argument("--name", default=None,
                   help="file stem in --out (default: bench-<device>-<backend>-<UTC time>)")
    p.add_argument("--plot", action="store_true",
                   help="draw ratio-to-clone bars per case and shape into <out>/<name>.png "
                   "(needs matplotlib)")
    return p


@dataclasses.dataclass
class Config:
    shapes: List[Tuple[str, Tuple[int, ...]]]
    dtypes: List[torch.dtype]
    formats: List[str]
    cases: List[str]
    padding: str
    device: torch.device
    quick: bool
    compile: bool
    min_run_time: float
    adaptive: bool
    input_sets: int
    runs: int
    mem_budget: Optional[float]
    check: bool


def _config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Config:
    try:
        shapes = _parse_shapes(args.shapes, args.quick)
        dtypes = _parse_list(args.dtypes, _DTYPES, "--dtypes")
        formats = _parse_list(args.formats, _FORMAT_ALIASES, "--formats")
        if args.cases in (None, ""):
            cases = list(DEFAULT_CASES)
        else:
            names = _split(args.cases)
            cases = list(CASES) if "all" in names else names
            unknown = [c for c in cases if c not in CASES]
            if unknown:
                raise argparse.ArgumentTypeError(
                    f"--cases: unknown {unknown}; expected some of {list(CASES)}"
                )
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    if args.no_compile:
        cases = [c for c in cases if c not in _COMPILED_CASES]
    cases = [c for c in CASES if c in cases or c in _ALWAYS]
    if not shapes or not dtypes or not formats:
        parser.error("--shapes, --dtypes and --formats must each name at least one item")
    if args.input_sets < 1 or args.runs < 1:
        parser.error("--input-sets and --runs must be >= 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False")
    from . import _spec

    try:
        padding = _spec.canonical_padding(args.padding)
    except ValueError as error:
        parser.error(f"--padding: {error}")
    min_run_time = args.min_run_time
    budget = args.mem_budget_gb * 2**30 if args.mem_budget_gb is not None else None
    if budget is None:
        if device.type == "cuda":
            budget = torch.cuda.get_device_properties(device).total_memory / 4
        else:
            total = _total_memory_bytes()
            budget = total / 4 if total else None
    return Config(
        shapes=shapes, dtypes=dtypes, formats=formats, cases=cases, padding=padding,
        device=device, quick=args.quick, compile=not args.no_compile,
        min_run_time=min_run_time, adaptive=args.adaptive, input_sets=args.input_sets,
        runs=args.runs, mem_budget=budget, check=not args.no_check,
    )


# --------------------------------------------------------------------------------------------
# Tensors


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def make_input(shape: Sequence[int], dtype: torch.dtype, fmt: str, device: torch.device,
               seed: int) -> torch.Tensor:
    """Standard-normal tensor of logical ``shape`` in memory format ``fmt``, filled in place.

    ``channels_last`` puts the channel dim innermost (``torch.channels_last`` for 4D,
    ``channels_last_3d`` for 5D, the ``(N, L, C)`` analogue for 3D tensors).
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    if fmt == "contiguous":
        x = torch.empty(shape, dtype=dtype, device=device)
    else:
        order = [0] + list(range(2, len(shape))) + [1]
        inverse = [order.index(i) for i in range(len(shape))]
        x = torch.empty([shape[i] for i in order], dtype=dtype, device=device).permute(inverse)
    return x.normal_(generator=gen)


def make_weight(channels: int, ndim: int, device: torch.device, seed: int) -> torch.Tensor:
    """float32 ``(C, D)`` shifts uniform in [-1.5, 1.5] (SSL moves by -2..2)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(10_000 + seed)
    return torch.empty(channels, ndim, device=device).uniform_(-1.5, 1.5, generator=gen)


def estimate_bytes(shape: Sequence[int], dtype: torch.dtype, input_sets: int) -> int:
    """Rough peak: the input sets, copy_ target, grad_output, output and grad_input in
    ``dtype``, plus ~12 float32 temporaries per element for the reference / autograd."""
    numel = math.prod(shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    return numel * (itemsize * (input_sets + 4) + 4 * 12)


# --------------------------------------------------------------------------------------------
# Timing


@dataclasses.dataclass
class Timing:
    median: float  # seconds, pooled over runs
    run_medians: List[float]
    measurements: int


def time_fn(fn: Callable, sets: Sequence[tuple], *, threads: int, min_run_time: float,
            adaptive: bool, runs: int = 1, warmup: int = 1, quick: bool = False) -> Timing:
    """Median seconds of ``fn(*args)``, ``args`` rotating through ``sets``.

    ``fn`` is first run ``warmup`` times per input set; each run is one
    ``blocked_autorange`` (or ``adaptive_autorange``) with ``num_threads=threads``;
    ``quick`` replaces it by 3 x ``timeit(number=4)`` (a smoke test, not a measurement).
    """
    for _ in range(warmup):
        for args in sets:
            fn(*args)
    times: List[float] = []
    run_medians = []
    for _ in range(runs):
        gc.collect()
        rotation = itertools.cycle(sets)
        timer = Timer(stmt="fn(*next(rotation))", globals={"fn": fn, "rotation": rotation},
                      num_threads=threads)
        if quick:
            # Smoke test: a fixed small number of calls, no block-size search.
            parts = [timer.timeit(number=4) for _ in range(3)]
            times.extend(p.median for p in parts)
            run_medians.append(_median([p.median for p in parts]))
            continue
        if adaptive:
            m = timer.adaptive_autorange(min_run_time=min_run_time,
                                         max_run_time=max(10 * min_run_time, 1.0))
        else:
            m = timer.blocked_autorange(min_run_time=min_run_time)
        times.extend(m.times)
        run_medians.append(m.median)
    return Timing(median=_median(times), run_medians=run_medians, measurements=len(times))


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


# --------------------------------------------------------------------------------------------
# Sanity check


def _rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a = actual.detach().double()
    e = expected.detach().double()
    denom = e.norm().item()
    diff = (a - e).norm().item()
    return diff / denom if denom > 0 else diff


def _tolerance(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-10, torch.float32: 1e-5}.get(dtype, 2e-2)


def check_against_reference(x: torch.Tensor, w: torch.Tensor, padding: str, label: str) -> None:
    """Our forward (whole tensor) and backward (first sample) against the reference.

    SSL forward must be bit-identical; the rest within a normwise relative tolerance of the
    dtype. Raises :class:`SanityError` naming what disagrees.
    """
    tol = _tolerance(x.dtype)
    with torch.no_grad():
        ours = shift(x, w, padding, False)
        ref = reference.shift(x, w, padding, False)
        if ours.shape != ref.shape or not torch.equal(ours, ref):
            raise SanityError(f"{label}: SSL forward differs from the reference "
                              f"(relative error {_rel_error(ours, ref):.3g})")
        ours = shift(x, w, padding, True)
        ref = reference.shift(x, w, padding, True)
        err = _rel_error(ours, ref)
        if ours.shape != ref.shape or not err <= tol:
            raise SanityError(f"{label}: active forward differs from the reference "
                              f"(relative error {err:.3g} > {tol:g})")
        del ours, ref
    x1 = x[:1]
    g = make_input(x1.shape, x.dtype, "contiguous", x.device, seed=999)
    for active in (False, True):
        grads = []
        for fn in (shift, reference.shift):
            xr = x1.detach().clone(memory_format=torch.preserve_format).requires_grad_()
            wr = w.detach().clone().requires_grad_()
            grads.append(torch.autograd.grad(fn(xr, wr, padding, active), (xr, wr), g))
        mode = "active" if active else "SSL"
        for name, a, b in zip(("grad_input", "grad_weight"), *grads):
            err = _rel_error(a, b)
            if not err <= tol:
                raise SanityError(f"{label}: {mode} {name} differs from the reference "
                                  f"(relative error {err:.3g} > {tol:g})")


# --------------------------------------------------------------------------------------------
# One row


def _depthwise_conv(channels: int, ndim: int, dtype: torch.dtype, fmt: str,
                    device: torch.device) -> torch.nn.Module:
    conv_cls = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[ndim]
    conv = conv_cls(channels, channels, 3, padding=1, groups=channels, bias=False)
    conv = conv.to(device=device, dtype=dtype)
    if fmt == "channels_last" and ndim in (2, 3):
        conv = conv.to(memory_format=torch.channels_last if ndim == 2 else torch.channels_last_3d)
    return conv


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def run_row(cfg: Config, shape_name: str, shape: Tuple[int, ...], fmt: str,
            dtype: torch.dtype, meta: dict,
            log: Callable[[str], None]) -> Tuple[List[dict], List[str]]:
    """Time every selected case for one (shape, format, dtype): ``(rows, notes)``."""
    device = cfg.device
    ndim = len(shape) - 2
    channels = shape[1]
    threads = torch.get_num_threads()
    label = f"{shape_name} {_shape_text(shape)} {fmt} {_dtype_name(dtype)}"
    sets_x = [make_input(shape, dtype, fmt, device, seed=i) for i in range(cfg.input_sets)]
    sets_w = [make_weight(channels, ndim, device, seed=i) for i in range(cfg.input_sets)]
    if cfg.check:
        check_against_reference(sets_x[0], sets_w[0], cfg.padding, label)
    fwd_sets = list(zip(sets_x, sets_w))
    padding = cfg.padding
    timing_kw = dict(threads=threads, min_run_time=cfg.min_run_time, adaptive=cfg.adaptive,
                     quick=cfg.quick)

    results: Dict[str, Tuple[Timing, str]] = {}

    def record(case: str, fn: Callable, sets: Sequence[tuple], runs: int, note: str = "") -> None:
        results[case] = (time_fn(fn, sets, runs=runs, **timing_kw), note)
        timing = results[case][0]
        log(f"  {case:<20} {timing.median * 1e3:10.4f} ms" + (f"  ({note})" if note else ""))

    runs = cfg.runs
    record("clone", lambda x: x.clone(), [(x,) for x in sets_x], runs)
    buffer = torch.empty_like(sets_x[0])
    record("copy", lambda x: buffer.copy_(x), [(x,) for x in sets_x], runs)
    del buffer

    def ours_fwd(active):
        def fn(x, w):
            with torch.no_grad():
                return shift(x, w, padding, active)
        return fn

    for case, active in (("ssl_fwd", False), ("active_fwd", True)):
        if case in cfg.cases:
            record(case, ours_fwd(active), fwd_sets, runs)

    grad_out = None
    if any(c in cfg.cases for c in ("ssl_fwdbwd", "active_fwdbwd", "dwconv_fwdbwd")):
        grad_out = make_input(shape, dtype, fmt, device, seed=777)
        bwd_sets = [(x.detach().requires_grad_(), w.detach().clone().requires_grad_())
                    for x, w in fwd_sets]

        def ours_fwdbwd(active):
            def fn(x, w):
                y = shift(x, w, padding, active)
                return torch.autograd.grad(y, (x, w), grad_out)
            return fn

        for case, active in (("ssl_fwdbwd", False), ("active_fwdbwd", True)):
            if case in cfg.cases:
                record(case, ours_fwdbwd(active), bwd_sets, runs)

    if "ssl_inplace_sparse" in cfg.cases:
        # 10% of the channels (a fixed random choice) move by one along every dim.
        gen = torch.Generator().manual_seed(4321)
        moving = torch.randperm(channels, generator=gen)[: max(1, round(SPARSE_MOVING * channels))]
        sparse_w = torch.zeros(channels, ndim)
        sparse_w[moving] = 1.0
        sparse_w = sparse_w.to(device)

        def inplace(x):
            with torch.no_grad():
                return shift_(x, sparse_w, padding)

        record("ssl_inplace_sparse", inplace, [(x,) for x in sets_x], runs,
               note=f"{len(moving)} of {channels} channels move")

    def ref_fwd(active):
        def fn(x, w):
            with torch.no_grad():
                return reference.shift(x, w, padding, active)
        return fn

    for case, active in (("ref_ssl_fwd", False), ("ref_active_fwd", True)):
        if case in cfg.cases:
            record(case, ref_fwd(active), fwd_sets, runs)

    for case, active in (("ref_ssl_compiled", False), ("ref_active_compiled", True)):
        if case not in cfg.cases:
            continue
        torch._dynamo.reset()  # a fresh cache per row: no recompile limit, no stale graphs

        def ref(x, w, active=active):
            return reference.shift(x, w, padding, active)

        compiled = torch.compile(ref)

        def fn(x, w, compiled=compiled):
            with torch.no_grad():
                return compiled(x, w)

        start = time.perf_counter()
        try:
            fn(*fwd_sets[0])
        except Exception as error:  # inductor missing a compiler, ...
            message = f"{case} skipped: torch.compile failed: {type(error).__name__}: {error}"
            log("  " + message.splitlines()[0])
            results[case] = (None, message.splitlines()[0])
            continue
        compile_s = time.perf_counter() - start
        record(case, fn, fwd_sets, runs, note=f"first call (compile) {compile_s:.1f} s")

    conv_cases = [c for c in _CONV_CASES if c in cfg.cases]
    if conv_cases:
        conv = _depthwise_conv(channels, ndim, dtype, fmt, device)

        def conv_fwd(x):
            with torch.no_grad():
                return conv(x)

        def conv_fwdbwd(x):
            return torch.autograd.grad(conv(x), (x, conv.weight), grad_out)

        conv_fns = {"dwconv_fwd": (conv_fwd, [(x,) for x in sets_x]),
                    "dwconv_fwdbwd": (conv_fwdbwd,
                                      [(x.detach().requires_grad_(),) for x in sets_x])}
        conv_runs = max(2, runs)
        # Interleave the runs (fwd, fwdbwd, fwd, fwdbwd): the allocator state differs.
        pooled: Dict[str, List[Timing]] = {c: [] for c in conv_cases}
        for _ in range(conv_runs):
            for case in conv_cases:
                fn, sets = conv_fns[case]
                pooled[case].append(time_fn(fn, sets, runs=1, **timing_kw))
        for case in conv_cases:
            parts = pooled[case]
            medians = [t.run_medians[0] for t in parts]
            timing = Timing(median=_median(medians), run_medians=medians,
                            measurements=sum(t.measurements for t in parts))
            results[case] = (timing, "")
            log(f"  {case:<20} {timing.median * 1e3:10.4f} ms  runs "
                + " / ".join(f"{m * 1e3:.4f}" for m in medians))

    clone = results["clone"][0].median
    copy = results["copy"][0].median
    element_size = sets_x[0].element_size()
    rows = []
    for case in CASES:
        if case not in results:
            continue
        timing, note = results[case]
        if timing is None:
            continue  # compile failure: reported as a note, never as a fake row
        conv_case = "dwconv_fwdbwd" if case.endswith("fwdbwd") else "dwconv_fwd"
        conv = results.get(conv_case, (None, ""))[0]
        floor_bytes = _FLOOR_TRANSFERS[case] * math.prod(shape) * element_size
        rows.append({
            "shape_name": shape_name,
            "shape": _shape_text(shape),
            "ndim": ndim,
            "format": fmt,
            "dtype": _dtype_name(dtype),
            "weight_dtype": _dtype_name(sets_w[0].dtype),
            "padding": padding,
            "device": str(device),
            "backend": meta["backend"],
            "case": case,
            "median_ms": timing.median * 1e3,
            "run_min_ms": min(timing.run_medians) * 1e3,
            "run_max_ms": max(timing.run_medians) * 1e3,
            "runs": len(timing.run_medians),
            "measurements": timing.measurements,
            "ratio_clone": timing.median / clone,
            "ratio_copy": timing.median / copy,
            # same direction (fwd / fwd+bwd) of the depthwise conv in this row's layout
            "ratio_dwconv": timing.median / conv.median if conv is not None else float("nan"),
            "floor_bytes": floor_bytes,
            # the case's minimal traffic over its time: compare with copy's
            "gbps": floor_bytes / timing.median / 1e9,
            "numel": math.prod(shape),
            "threads": threads,
            "note": note,
            "cpu_model": meta["cpu_model"],
            "gpu_model": meta["gpu_model"],
            "torch_version": meta["torch_version"],
            "backend_selected": meta["backend_selected"],
        })
    notes = [note for timing, note in results.values() if timing is None]
    return rows, notes


# --------------------------------------------------------------------------------------------
# Output


def _fmt_ms(value: float) -> str:
    return f"{value:.4f}" if value < 10 else f"{value:.2f}"


def format_table(rows: Sequence[dict]) -> str:
    """Plain-text table: shape, format, dtype, case, median ms (run spread), x clone, x copy_,
    x the depthwise conv of the same direction and layout, effective GB/s."""
    header = ("shape", "format", "dtype", "case", "median ms", "run min-max ms", "x clone",
              "x copy_", "x dwconv", "GB/s")
    lines = []
    for r in rows:
        spread = (f"{_fmt_ms(r['run_min_ms'])}-{_fmt_ms(r['run_max_ms'])}" if r["runs"] > 1 else "")
        lines.append((f"{r['shape_name']} {r['shape']}", r["format"], r["dtype"], r["case"],
                      _fmt_ms(r["median_ms"]), spread, f"{r['ratio_clone']:.2f}",
                      f"{r['ratio_copy']:.2f}",
                      "" if math.isnan(r.get("ratio_dwconv", math.nan))
                      else f"{r['ratio_dwconv']:.2f}",
                      f"{r['gbps']:.1f}" if "gbps" in r else ""))
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(header)]
    right = {4, 5, 6, 7, 8, 9}

    def fmt(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    out = [fmt(header), fmt(["-" * w for w in widths])]
    previous = None
    for line in lines:
        group = line[:3]
        if previous is not None and group != previous:
            out.append("")
        previous = group
        out.append(fmt(line))
    return "\n".join(out)


def _write_csv(path: Path, rows: Sequence[dict], fields: Sequence[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _write_json(path: Path, payload: dict) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
        f.write("\n")


def plot(rows: Sequence[dict], path: Path, title: str) -> None:
    """Bars of the ratio to ``x.clone()`` per case, grouped by shape/format, one panel per dtype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    cases = [c for c in CASES if c != "clone" and any(r["case"] == c for r in rows)]
    fig, axes = plt.subplots(len(dtypes), 1, figsize=(max(8, 1.6 * 10), 4.2 * len(dtypes)),
                             squeeze=False)
    for ax, dtype in zip(axes[:, 0], dtypes):
        sub = [r for r in rows if r["dtype"] == dtype]
        groups = list(dict.fromkeys((r["shape_name"], r["shape"], r["format"]) for r in sub))
        width = 0.8 / max(1, len(cases))
        cmap = plt.get_cmap("tab20")
        for i, case in enumerate(cases):
            values, low, high = [], [], []
            for g in groups:
                match = [r for r in sub if (r["shape_name"], r["shape"], r["format"]) == g
                         and r["case"] == case]
                if match:
                    r = match[0]
                    clone_ms = r["median_ms"] / r["ratio_clone"]
                    values.append(r["ratio_clone"])
                    # run spread (depthwise conv: allocator-bimodal) as an error bar
                    low.append(r["ratio_clone"] - r["run_min_ms"] / clone_ms)
                    high.append(r["run_max_ms"] / clone_ms - r["ratio_clone"])
                else:
                    values.append(float("nan"))
                    low.append(0.0)
                    high.append(0.0)
            xs = [j + (i - (len(cases) - 1) / 2) * width for j in range(len(groups))]
            ax.bar(xs, values, width, label=case, color=cmap((2 * i) % 20 + (2 * i) // 20 % 2),
                   yerr=[[max(v, 0.0) for v in low], [max(v, 0.0) for v in high]],
                   error_kw={"elinewidth": 0.8, "capsize": 1.5})
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([(f"{n}\n" if n != s else "") + f"{s}\n{f}" for n, s, f in groups],
                           fontsize=8)
        ax.set_ylabel("time / x.clone()")
        ax.set_title(f"{title} — {dtype}", fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Scaling mode


def _scaled_shapes(base: Tuple[int, ...]) -> List[Tuple[int, Tuple[int, ...]]]:
    out = []
    for factor in _SCALING_FACTORS:
        side = int(round(math.sqrt(factor)))
        out.append((factor, base[:2] + tuple(s * side for s in base[2:])))
    return out


def run_scaling(cfg: Config, base: Tuple[int, ...], meta: dict,
                log: Callable[[str], None]) -> List[dict]:
    """Forward SSL/active (and the copy floors) at 1x/4x/16x, with 1 thread and all threads."""
    all_threads = torch.get_num_threads()
    thread_counts = sorted({1, all_threads})
    rows = []
    for fmt, dtype in itertools.product(cfg.formats, cfg.dtypes):
        for factor, shape in _scaled_shapes(base):
            label = f"scaling {factor}x {_shape_text(shape)} {fmt} {_dtype_name(dtype)}"
            need = estimate_bytes(shape, dtype, cfg.input_sets)
            if cfg.mem_budget is not None and need > cfg.mem_budget:
                log(f"{label}: skipped, needs ~{need / 2**30:.1f} GiB > budget")
                continue
            log(label)
            xs = [make_input(shape, dtype, fmt, cfg.device, seed=i) for i in range(cfg.input_sets)]
            ws = [make_weight(shape[1], len(shape) - 2, cfg.device, seed=i)
                  for i in range(cfg.input_sets)]
            if cfg.check:
                with torch.no_grad():
                    if not torch.equal(shift(xs[0], ws[0], cfg.padding, False),
                                       reference.shift(xs[0], ws[0], cfg.padding, False)):
                        raise SanityError(f"{label}: SSL forward differs from the reference")
            buffer = torch.empty_like(xs[0])
            fns = {
                "clone": (lambda x, w: x.clone()),
                "copy": (lambda x, w: buffer.copy_(x)),
                "ssl_fwd": (lambda x, w: shift(x, w, cfg.padding, False)),
                "active_fwd": (lambda x, w: shift(x, w, cfg.padding, True)),
            }
            numel = math.prod(shape)
            for case in _SCALING_CASES:
                per_threads = {}
                for threads in thread_counts:
                    with torch.no_grad():
                        timing = time_fn(fns[case], list(zip(xs, ws)), threads=threads,
                                         min_run_time=cfg.min_run_time, adaptive=cfg.adaptive,
                                         runs=cfg.runs, quick=cfg.quick)
                    per_threads[threads] = timing.median
                    log(f"  {case:<12} {threads:>3} thr {timing.median * 1e3:10.4f} ms")
                for threads in thread_counts:
                    rows.append({
                        "factor": factor, "shape": _shape_text(shape), "format": fmt,
                        "dtype": _dtype_name(dtype), "padding": cfg.padding,
                        "device": str(cfg.device), "backend": meta["backend"], "case": case,
                        "threads": threads, "median_ms": per_threads[threads] * 1e3,
                        "ns_per_element": per_threads[threads] * 1e9 / numel,
                        "speedup_vs_1_thread": per_threads[1] / per_threads[threads],
                        "per_element_vs_1x": None, "numel": numel,
                        "cpu_model": meta["cpu_model"], "gpu_model": meta["gpu_model"],
                        "torch_version": meta["torch_version"],
                        "backend_selected": meta["backend_selected"],
                    })
            del xs, ws, buffer
            gc.collect()
    # Per-element time relative to the 1x size (1.0 = perfectly linear in the size).
    for r in rows:
        base_rows = [b for b in rows if b["factor"] == 1 and b["case"] == r["case"]
                     and b["threads"] == r["threads"] and b["format"] == r["format"]
                     and b["dtype"] == r["dtype"]]
        if base_rows:
            r["per_element_vs_1x"] = r["ns_per_element"] / base_rows[0]["ns_per_element"]
    return rows


def format_scaling_table(rows: Sequence[dict]) -> str:
    header = ("size", "shape", "format", "dtype", "case", "threads", "median ms", "ns/elem",
              "speedup", "ns/elem vs 1x")
    lines = [(f"{r['factor']}x", r["shape"], r["format"], r["dtype"], r["case"], str(r["threads"]),
              _fmt_ms(r["median_ms"]), f"{r['ns_per_element']:.3f}",
              f"{r['speedup_vs_1_thread']:.2f}",
              "" if r["per_element_vs_1x"] is None else f"{r['per_element_vs_1x']:.2f}")
             for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(header)]
    right = {5, 6, 7, 8, 9}

    def fmt(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines])


# --------------------------------------------------------------------------------------------
# Entry point


def _peak_rss_mib() -> float:
    # Linux reports kilobytes, macOS bytes.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.plot and not args.out:
        parser.error("--plot needs --out DIR (the PNG goes there)")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print("--plot needs matplotlib, which is not installed: `pip install matplotlib` "
              "(or run without --plot; the CSV/JSON do not need it)", file=sys.stderr)
        return 2
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    cfg = _config(args, parser)
    if args.backend is not None:
        with _backend.use_backend(args.backend):
            return _run(args, cfg)
    return _run(args, cfg)


def _run(args: argparse.Namespace, cfg: Config) -> int:
    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log("resolving the backend (builds the C++ kernel if it is not cached yet: ~1 min)")
    meta = machine_info(cfg.device)
    print(f"torchshift2 bench: {meta['cpu_model']}{' / ' + meta['gpu_model'] if meta['gpu_model'] else ''}, "
          f"{meta['threads']} threads, torch {meta['torch_version']}, backend {meta['backend']} "
          f"(selected: {meta['backend_selected']}), padding {cfg.padding}"
          + (" [--quick: smoke test, not a measurement]" if cfg.quick else ""), flush=True)
    config_info = {
        "mode": "scaling" if args.scaling else "table",
        "shapes": {name: list(shape) for name, shape in cfg.shapes},
        "dtypes": [_dtype_name(d) for d in cfg.dtypes], "formats": cfg.formats,
        "cases": cfg.cases, "padding": cfg.padding, "quick": cfg.quick,
        "compile": cfg.compile, "min_run_time": cfg.min_run_time, "adaptive": cfg.adaptive,
        "input_sets": cfg.input_sets, "runs": cfg.runs,
        "timer": "torch.utils.benchmark.Timer." + ("adaptive_autorange" if cfg.adaptive
                                                   else "blocked_autorange"),
        "mem_budget_gib": None if cfg.mem_budget is None else round(cfg.mem_budget / 2**30, 2),
        "argv": sys.argv[1:] if args is not None else [],
    }
    out_dir = Path(args.out) if args.out else None
    stem = args.name or "bench-{}-{}-{}".format(
        cfg.device.type, meta["backend"],
        datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S"))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    if args.scaling:
        if args.scaling_base:
            try:
                base = parse_shape(args.scaling_base)
            except argparse.ArgumentTypeError as error:
                print(error, file=sys.stderr)
                return 2
            if len(base) != 4:
                print("--scaling-base: expected a 2D shape NxCxHxW", file=sys.stderr)
                return 2
        else:
            base = (2, 8, 8, 8) if cfg.quick else (8, 64, 28, 28)
        rows = run_scaling(cfg, base, meta, log)
        print(format_scaling_table(rows))
        if out_dir is not None:
            meta["peak_rss_mib"] = round(_peak_rss_mib(), 1)
            config_info["scaling_base"] = list(base)
            _write_csv(out_dir / f"{stem}-scaling.csv", rows, SCALING_FIELDS)
            _write_json(out_dir / f"{stem}-scaling.json",
                        {"machine": meta, "config": config_info, "rows": rows})
            print(f"wrote {out_dir / (stem + '-scaling.csv')} and .json")
        return 0

    rows: List[dict] = []
    notes: List[str] = []
    if out_dir is not None:
        csv_path, json_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.json"

    def save() -> None:
        if out_dir is None:
            return
        meta["peak_rss_mib"] = round(_peak_rss_mib(), 1)
        _write_csv(csv_path, rows, ROW_FIELDS)
        _write_json(json_path, {"machine": meta, "config": config_info, "rows": rows,
                                "notes": notes})

    for (shape_name, shape), fmt, dtype in itertools.product(cfg.shapes, cfg.formats, cfg.dtypes):
        label = f"{shape_name} {_shape_text(shape)} {fmt} {_dtype_name(dtype)}"
        need = estimate_bytes(shape, dtype, cfg.input_sets)
        if cfg.mem_budget is not None and need > cfg.mem_budget:
            note = (f"{label}: skipped, buffers need ~{need / 2**30:.1f} GiB > budget "
                    f"{cfg.mem_budget / 2**30:.1f} GiB (--mem-budget-gb)")
            log(note)
            notes.append(note)
            continue
        log(label)
        try:
            row_results, row_notes = run_row(cfg, shape_name, shape, fmt, dtype, meta, log)
        except SanityError as error:
            print(f"ERROR: {error}. Refusing to benchmark a kernel that disagrees with the "
                  "reference.", file=sys.stderr)
            return 1
        rows.extend(row_results)
        notes.extend(f"{label}: {n}" for n in row_notes)
        save()  # after every row: a crash late in a long run keeps what was measured
        gc.collect()
        if cfg.device.type == "cuda":
            torch.cuda.empty_cache()

    print()
    print(format_table(rows))
    for note in notes:
        print("note:", note)
    if out_dir is not None:
        save()
        print(f"wrote {csv_path} and {json_path}")
        if args.plot:
            png = out_dir / f"{stem}.png"
            plot(rows, png, f"torchshift2 ({meta['backend']}, {meta['threads']} threads, "
                            f"{meta['gpu_model'] or meta['cpu_model']})")
            print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
