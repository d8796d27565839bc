"""Command line of the harness: options, the three modes (named shapes, ``--fuzz``,
``--scaling``) and where their results go."""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import itertools
import resource
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

from torchshift2 import _spec
from torchshift2 import backends as _backend

from . import cases as C
from . import fuzz, report
from .check import SanityError
from .machine import machine_info, machine_line, total_memory_bytes
from .measure import Config, measure_group
from .rows import ROW_FIELDS, RATIOS, build_rows
from .scaling import SCALING_FIELDS, format_scaling_table, run_scaling

PROG = "python benchmarks/bench.py"
DEFAULT_FORMATS = "contiguous,channels_last"
FUZZ_FORMATS = "contiguous,channels_last,strided"


def _split(text: str) -> List[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_shape(text: str) -> Tuple[int, ...]:
    """``"8x64x32x32"`` -> ``(8, 64, 32, 32)``; 3 to 5 dims (N, C, 1 to 3 spatial)."""
    try:
        shape = tuple(int(p) for p in text.lower().split("x") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--shapes: {text!r} is neither a shape name nor NxCxL[xL[xL]]") from None
    if not 3 <= len(shape) <= 5 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"--shapes: {text!r}: expected 3 to 5 positive sizes (N, C, 1 to 3 spatial dims)")
    return shape


def _parse_shapes(text: Optional[str], quick: bool) -> List[Tuple[str, Tuple[int, ...]]]:
    known = {**C.SHAPES, **C.QUICK_SHAPES}
    if not text:
        return list((C.QUICK_SHAPES if quick else C.SHAPES).items())
    selected = []
    for part in _split(text):
        if part in known:
            selected.append((part, known[part]))
        elif part in ("all", "default"):
            selected.extend(C.SHAPES.items())
        elif part == "quick":
            selected.extend(C.QUICK_SHAPES.items())
        else:
            shape = parse_shape(part)
            selected.append((C.shape_text(shape), shape))
    return selected


def _parse_list(text: str, table: dict, option: str) -> list:
    out = []
    for name in _split(text):
        key = name.lower()
        if key not in table:
            raise argparse.ArgumentTypeError(
                f"{option}: unknown {name!r}; expected one of {sorted(set(table))}")
        if table[key] not in out:
            out.append(table[key])
    return out


def _parse_distributions(text: str) -> List[str]:
    try:
        names = [C.canonical_distribution(n) for n in _split(text)]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return list(dict.fromkeys(names))


def _parse_cases(text: Optional[str], fuzz_mode: bool, no_compile: bool) -> List[str]:
    if text in (None, ""):
        cases = list(C.FUZZ_CASES if fuzz_mode else C.DEFAULT_CASES)
    else:
        names = _split(text)
        cases = list(C.CASES) if "all" in names else names
        unknown = [c for c in cases if c not in C.CASES]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"--cases: unknown {unknown}; expected some of {list(C.CASES)}")
    if no_compile:
        cases = [c for c in cases if c not in C.COMPILED_CASES]
    return [c for c in C.CASES if c in cases or c in C.ALWAYS]


def _add_selection_options(p: argparse.ArgumentParser) -> None:
    names = ", ".join(f"{k}={C.shape_text(v)}" for k, v in {**C.SHAPES, **C.QUICK_SHAPES}.items())
    p.add_argument("--shapes", default=None,
                   help=f"comma-separated shape names ({names}; 'all', 'quick') or custom "
                   "NxCxL[xL[xL]] shapes")
    p.add_argument("--dtypes", default="float32,bfloat16",
                   help="comma-separated: float32, bfloat16, float16, float64 "
                   "(default: %(default)s)")
    p.add_argument("--formats", default=None,
                   help="comma-separated layouts: contiguous (nchw), channels_last (nhwc; the 1D "
                   "analogue and channels_last_3d for 3D data), strided (a crop view, not dense) "
                   f"(default: {DEFAULT_FORMATS}; with --fuzz {FUZZ_FORMATS})")
    p.add_argument("--distributions", default=",".join(C.DISTRIBUTIONS),
                   help="comma-separated weight distributions: uniform1.5 (uniform in ±1.5), "
                   "sparse (90%% of the channels 0, the rest ±1..±3 per dim, as SSL training "
                   "leaves them), wide (uniform in ±4), uniform<A> (default: %(default)s)")
    p.add_argument("--cases", default=None,
                   help="comma-separated cases (clone and copy always run): " + ", ".join(C.CASES)
                   + "; 'all'. Default: all but the active reference (--fuzz: "
                   + ", ".join(C.FUZZ_CASES) + ")")
    p.add_argument("--padding", default="zeros",
                   help="padding of our op and the reference (default: %(default)s)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--backend", default=None, choices=_backend.BACKENDS,
                   help="force a torchshift2 backend (default: TORCHSHIFT2_BACKEND or auto)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads(N) before timing (default: torch's default)")


def _add_timing_options(p: argparse.ArgumentParser) -> None:
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
                   help="different input tensors rotated through the timed loop "
                   "(default: %(default)s)")
    p.add_argument("--runs", type=int, default=1,
                   help="measurements per case, reported as pooled median and min/max of the "
                   "run medians; depthwise conv always gets at least 2 (default: %(default)s)")
    p.add_argument("--mem-budget-gb", type=float, default=None,
                   help="skip row groups whose buffers would need more (default: 1/4 of RAM "
                   "or GPU memory)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the forward/backward check against the reference (not recommended)")


def _add_mode_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fuzz", type=int, default=None, metavar="N",
                   help="instead of the named shapes: N cases drawn from --seed (batch 1-64, "
                   "channels 1-256, 1-3 spatial dims of 7-112, a layout of --formats, a dtype of "
                   "--dtypes, a distribution of --distributions each) and the worst ratios")
    p.add_argument("--seed", type=int, default=0, help="seed of the --fuzz draw (default: 0)")
    p.add_argument("--fuzz-max-mib", type=float, default=fuzz.DEFAULT_MAX_MIB,
                   help="largest tensor of a --fuzz case; bigger draws are shrunk, batch first "
                   "(default: %(default)s)")
    p.add_argument("--scaling", action="store_true",
                   help="instead of the table: forward SSL/active at 1x/4x/16x of a base 2D size, "
                   "with 1 thread and all threads")
    p.add_argument("--scaling-base", default=None,
                   help="base NxCxHxW of --scaling; 4x and 16x double / quadruple H and W "
                   "(default 8x64x28x28; --quick 2x8x8x8)")
    p.add_argument("--out", default=None,
                   help="directory for <name>.csv and <name>.json (and <name>.png with --plot)")
    p.add_argument("--name", default=None,
                   help="file stem in --out (default: bench-<device>-<backend>-<UTC time>; "
                   "--fuzz and --scaling append -fuzz / -scaling)")
    p.add_argument("--plot", action="store_true",
                   help="draw ratio-to-clone bars per case and shape into <out>/<name>.png "
                   "(needs matplotlib)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Time torchshift2's shift ops against copy floors, the reference and a "
        "depthwise convolution, under several weight distributions. Reports medians and "
        "ratios to x.clone(), out.copy_(x), the depthwise conv and our own NCHW time.")
    _add_selection_options(p)
    _add_timing_options(p)
    _add_mode_options(p)
    return p


def _memory_budget(args: argparse.Namespace, device: torch.device) -> Optional[float]:
    if args.mem_budget_gb is not None:
        return args.mem_budget_gb * 2**30
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 4
    total = total_memory_bytes()
    return total / 4 if total else None


def _check_modes(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.fuzz is not None and args.fuzz < 1:
        parser.error(f"--fuzz: expected a number of cases >= 1, got {args.fuzz}")
    if args.fuzz is not None and (args.scaling or args.shapes):
        parser.error("--fuzz draws its own shapes: it cannot be combined with "
                     f"{'--scaling' if args.scaling else '--shapes'}")
    if args.fuzz_max_mib <= 0:
        parser.error(f"--fuzz-max-mib: expected a size > 0, got {args.fuzz_max_mib}")
    if args.input_sets < 1 or args.runs < 1:
        parser.error(f"--input-sets and --runs: expected >= 1, got {args.input_sets} "
                     f"and {args.runs}")
    if args.plot and not args.out:
        parser.error("--plot needs --out DIR (the PNG goes there)")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads: expected >= 1, got {args.threads}")


def _config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Config:
    fuzz_mode = args.fuzz is not None
    try:
        shapes = [] if fuzz_mode else _parse_shapes(args.shapes, args.quick)
        dtypes = _parse_list(args.dtypes, C.DTYPES, "--dtypes")
        formats = _parse_list(args.formats or (FUZZ_FORMATS if fuzz_mode else DEFAULT_FORMATS),
                              C.LAYOUT_ALIASES, "--formats")
        distributions = _parse_distributions(args.distributions)
        cases = _parse_cases(args.cases, fuzz_mode, args.no_compile)
        padding = _spec.canonical_padding(args.padding)
    except (argparse.ArgumentTypeError, ValueError) as error:
        parser.error(str(error))
    if not (shapes or fuzz_mode) or not dtypes or not formats or not distributions:
        parser.error("--shapes, --dtypes, --formats and --distributions must each name at "
                     "least one item")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False")
    return Config(
        shapes=shapes, dtypes=dtypes, formats=formats, cases=cases,
        distributions=distributions, padding=padding, device=device, quick=args.quick,
        compile=not args.no_compile, min_run_time=args.min_run_time, adaptive=args.adaptive,
        input_sets=args.input_sets, runs=args.runs, mem_budget=_memory_budget(args, device),
        check=not args.no_check,
    )


def _peak_rss_mib() -> float:
    # Linux reports kilobytes, macOS bytes.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_modes(args, parser)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print("--plot needs matplotlib, which is not installed: `pip install matplotlib` "
              "(or run without --plot; the CSV/JSON do not need it)", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = _config(args, parser)
    if args.backend is not None:
        with _backend.use_backend(args.backend):
            return _run(args, cfg, argv)
    return _run(args, cfg, argv)


class Output:
    """Where a run's files go (nowhere without ``--out``) and what goes in them."""

    def __init__(self, args: argparse.Namespace, cfg: Config, meta: dict, mode: str,
                 argv: Optional[Sequence[str]]) -> None:
        self.meta = meta
        self.dir = Path(args.out) if args.out else None
        stem = args.name or "bench-{}-{}-{}".format(
            cfg.device.type, meta["backend"],
            datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S"))
        self.stem = stem + ("" if mode == "table" else f"-{mode}")
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        self.config = {
            "mode": mode,
            "shapes": {name: list(shape) for name, shape in cfg.shapes},
            "dtypes": [C.dtype_name(d) for d in cfg.dtypes], "formats": cfg.formats,
            "distributions": cfg.distributions, "cases": cfg.cases, "padding": cfg.padding,
            "quick": cfg.quick, "compile": cfg.compile, "min_run_time": cfg.min_run_time,
            "adaptive": cfg.adaptive, "input_sets": cfg.input_sets, "runs": cfg.runs,
            "timer": "torch.utils.benchmark.Timer." + ("adaptive_autorange" if cfg.adaptive
                                                       else "blocked_autorange"),
            "mem_budget_gib": None if cfg.mem_budget is None else round(cfg.mem_budget / 2**30, 2),
            "argv": list(sys.argv[1:] if argv is None else argv),
        }

    def path(self, suffix: str) -> Optional[Path]:
        return None if self.dir is None else self.dir / f"{self.stem}{suffix}"

    def save(self, rows: Sequence[dict], fields: Sequence[str], **extra) -> None:
        """Rewrite ``<stem>.csv`` and ``.json`` (after every row group: a crash late in a
        long run keeps what was measured)."""
        if self.dir is None:
            return
        self.meta["peak_rss_mib"] = round(_peak_rss_mib(), 1)
        report.write_csv(self.path(".csv"), rows, fields)
        report.write_json(self.path(".json"), {"machine": self.meta, "config": self.config,
                                               "rows": list(rows), **extra})


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _header(meta: dict, cfg: Config, mode: str) -> str:
    return (f"torchshift2 bench ({mode}): {machine_line(meta)}; padding {cfg.padding}"
            + (" [--quick: smoke test, not a measurement]" if cfg.quick else ""))


def _run(args: argparse.Namespace, cfg: Config, argv: Optional[Sequence[str]]) -> int:
    _log("resolving the backend (builds the C++ kernel if it is not cached yet: ~1 min)")
    meta = machine_info(cfg.device)
    mode = "fuzz" if args.fuzz is not None else "scaling" if args.scaling else "table"
    print(_header(meta, cfg, mode), flush=True)
    out = Output(args, cfg, meta, mode, argv)
    try:
        if mode == "scaling":
            return _scaling(args, cfg, meta, out)
        if mode == "fuzz":
            return _fuzz(args, cfg, meta, out)
        return _table(args, cfg, meta, out)
    except SanityError as error:
        print(f"ERROR: {error}. Refusing to benchmark a kernel that disagrees with the "
              "reference.", file=sys.stderr)
        return 1


def _scaling(args: argparse.Namespace, cfg: Config, meta: dict, out: Output) -> int:
    if args.scaling_base:
        try:
            base = parse_shape(args.scaling_base)
        except argparse.ArgumentTypeError as error:
            print(str(error).replace("--shapes", "--scaling-base"), file=sys.stderr)
            return 2
        if len(base) != 4:
            print(f"--scaling-base: expected a 2D shape NxCxHxW, got {args.scaling_base!r}",
                  file=sys.stderr)
            return 2
    else:
        base = (2, 8, 8, 8) if cfg.quick else (8, 64, 28, 28)
    rows = run_scaling(cfg, base, meta, _log)
    print(format_scaling_table(rows))
    out.config["scaling_base"] = list(base)
    out.save(rows, SCALING_FIELDS)
    if out.dir is not None:
        print(f"wrote {out.path('.csv')} and .json")
    return 0


def _measure(cfg: Config, meta: dict, name: str, shape: Tuple[int, ...], dtype: torch.dtype,
             formats: Sequence[str], distributions: Sequence[str], label: str):
    """``(rows, notes)`` of one row group, or a note alone if it does not fit the budget."""
    need = C.estimate_bytes(shape, dtype, cfg.input_sets)
    if cfg.mem_budget is not None and need > cfg.mem_budget:
        note = (f"{label}: skipped, buffers need ~{need / 2**30:.1f} GiB > budget "
                f"{cfg.mem_budget / 2**30:.1f} GiB (--mem-budget-gb)")
        _log(note)
        return [], [note]
    _log(label)
    group = measure_group(cfg, shape, dtype, formats, distributions, _log, label)
    rows, notes = build_rows(cfg, group, name, shape, dtype, formats, distributions, meta)
    gc.collect()
    return rows, [f"{label}: {n}" for n in notes]


def _print_results(rows: Sequence[dict], notes: Sequence[str], summary: Sequence[dict],
                   fuzz_mode: bool) -> None:
    print()
    print(report.format_table(rows))
    if summary:
        print()
        print("Worst ratio of each kind over " + ("the fuzz cases" if fuzz_mode else "this run")
              + " (the case that produced it):")
        print(report.format_summary(summary, fuzz=fuzz_mode))
        for _, header, what in RATIOS:
            print(f"  {header}: time / {what}")
    for note in notes:
        print("note:", note)


def _table(args: argparse.Namespace, cfg: Config, meta: dict, out: Output) -> int:
    rows: List[dict] = []
    notes: List[str] = []
    for (name, shape), dtype in itertools.product(cfg.shapes, cfg.dtypes):
        label = f"{name} {C.shape_text(shape)} {C.dtype_name(dtype)}"
        group_rows, group_notes = _measure(cfg, meta, name, shape, dtype, cfg.formats,
                                           cfg.distributions, label)
        rows += group_rows
        notes += group_notes
        out.save(rows, ROW_FIELDS, notes=notes)
    summary = report.summarize(rows)
    _print_results(rows, notes, summary, fuzz_mode=False)
    out.save(rows, ROW_FIELDS, notes=notes, summary=summary)
    if out.dir is not None:
        print(f"wrote {out.path('.csv')} and {out.path('.json')}")
        if args.plot:
            report.plot(rows, out.path(".png"),
                        f"torchshift2 ({meta['backend']}, {meta['threads']} threads, "
                        f"{meta['gpu_model'] or meta['cpu_model']})")
            print(f"wrote {out.path('.png')}")
    return 0


def _fuzz(args: argparse.Namespace, cfg: Config, meta: dict, out: Output) -> int:
    drawn = fuzz.draw_cases(args.fuzz, args.seed, cfg.formats, cfg.dtypes, cfg.distributions,
                            quick=cfg.quick, max_bytes=args.fuzz_max_mib * 2**20)
    out.config.update(fuzz=args.fuzz, seed=args.seed, fuzz_max_mib=args.fuzz_max_mib)
    cases = [dict(name=c.name, shape=list(c.shape), format=c.layout,
                  dtype=C.dtype_name(c.dtype), distribution=c.distribution) for c in drawn]
    rows: List[dict] = []
    notes: List[str] = []
    for case in drawn:
        case_rows, case_notes = _measure(cfg, meta, case.name, case.shape, case.dtype,
                                         [case.layout], [case.distribution], case.label())
        rows += case_rows
        notes += case_notes
        out.save(rows, ROW_FIELDS, notes=notes, fuzz_cases=cases)
    summary = report.summarize(rows)
    _print_results(rows, notes, summary, fuzz_mode=True)
    out.save(rows, ROW_FIELDS, notes=notes, fuzz_cases=cases, summary=summary)
    if out.dir is not None:
        print(f"wrote {out.path('.csv')} and {out.path('.json')}")
        if args.plot:
            report.plot(rows, out.path(".png"), f"torchshift2 --fuzz {args.fuzz} "
                        f"--seed {args.seed} ({meta['backend']}, {meta['threads']} threads)")
            print(f"wrote {out.path('.png')}")
    return 0
