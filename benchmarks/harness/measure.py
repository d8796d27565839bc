"""Timing every case of one (shape, dtype): one pass per memory layout, each with its floors,
our op under every weight distribution, the reference and the depthwise convolution.

A pass may time more than its rows show: the ratios of a channels-last row need our NCHW
time and the conv in both layouts, so those layouts get a pass of their own when they were
not asked for (see :func:`plan_layouts`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from torchshift2 import reference
from torchshift2.functional import shift, shift_

from . import cases as C
from .check import check_against_reference
from .timing import Timing, time_fn, time_interleaved


@dataclasses.dataclass
class Config:
    shapes: List[Tuple[str, Tuple[int, ...]]]
    dtypes: List[torch.dtype]
    formats: List[str]
    cases: List[str]
    distributions: List[str]
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


@dataclasses.dataclass
class Measured:
    timing: Optional[Timing]  # None: the case could not run (``note`` says why)
    note: str = ""


#: ``(distribution, case) -> Measured`` of one layout; weightless cases under ``"none"``.
Results = Dict[Tuple[str, str], Measured]


def plan_layouts(formats: Sequence[str], cases: Sequence[str]) -> Dict[str, List[str]]:
    """``layout -> cases`` to time: the requested layouts with every selected case, plus
    our NCHW cases for the ``ratio_nchw`` of other layouts and the conv in both dense
    layouts for ``ratio_dwconv_best``."""
    plan: Dict[str, List[str]] = {layout: list(cases) for layout in formats}
    ours = [c for c in cases if c in C.OUR_CASES]
    if ours and any(layout != "contiguous" for layout in formats):
        plan.setdefault("contiguous", [])
        plan["contiguous"] += [c for c in ours if c not in plan["contiguous"]]
    convs = [c for c in cases if c in C.CONV_CASES]
    for layout in ("contiguous", "channels_last") if convs else ():
        plan.setdefault(layout, [])
        plan[layout] += [c for c in convs if c not in plan[layout]]
    return {layout: plan[layout] for layout in C.LAYOUTS if layout in plan}


class LayoutPass:
    """All timings of one (shape, layout, dtype): floors, ours per distribution, reference,
    in place, conv; in that order, from one set of input tensors."""

    def __init__(self, cfg: Config, shape: Tuple[int, ...], layout: str, dtype: torch.dtype,
                 cases: Sequence[str], distributions: Sequence[str],
                 log: Callable[[str], None], label: str) -> None:
        self.cfg, self.shape, self.layout, self.dtype = cfg, shape, layout, dtype
        self.cases, self.distributions, self.log, self.label = cases, distributions, log, label
        self.channels, self.ndim = shape[1], len(shape) - 2
        self.results: Results = {}
        self.timing_kw = dict(threads=torch.get_num_threads(), min_run_time=cfg.min_run_time,
                              adaptive=cfg.adaptive, quick=cfg.quick)
        device = cfg.device
        self.xs = [C.make_input(shape, dtype, layout, device, seed=i)
                   for i in range(cfg.input_sets)]
        self.weights = {d: [C.make_weight(self.channels, self.ndim, device, seed=i,
                                          distribution=d) for i in range(cfg.input_sets)]
                        for d in distributions}
        needs_grad = any(c.endswith("fwdbwd") for c in cases)
        self.grad_out = (C.make_input(shape, dtype, C.grad_layout(layout), device, seed=777)
                         if needs_grad else None)

    def run(self) -> Results:
        if self.cfg.check:
            for dist, ws in self.weights.items():
                check_against_reference(self.xs[0], ws[0], self.cfg.padding,
                                        f"{self.label} {self.layout} {dist}")
        self._floors()
        for dist in self.distributions:
            self._ours(dist)
        self._inplace()
        for dist in self.distributions:
            self._reference(dist)
        self._compiled_reference()
        self._conv()
        return self.results

    def _record(self, dist: str, case: str, fn: Callable, sets: Sequence[tuple],
                note: str = "") -> None:
        timing = time_fn(fn, sets, runs=self.cfg.runs, **self.timing_kw)
        self.results[(dist, case)] = Measured(timing, note)
        self.log(f"  {self.layout:<13} {dist:<10} {case:<20} {timing.median * 1e3:10.4f} ms"
                 + (f"  ({note})" if note else ""))

    def _floors(self) -> None:
        single = [(x,) for x in self.xs]
        if "clone" in self.cases:
            self._record(C.NO_DISTRIBUTION, "clone", lambda x: x.clone(), single)
        if "copy" in self.cases:
            buffer = torch.empty_like(self.xs[0])
            self._record(C.NO_DISTRIBUTION, "copy", lambda x: buffer.copy_(x), single)

    def _ours(self, dist: str) -> None:
        padding = self.cfg.padding
        fwd_sets = list(zip(self.xs, self.weights[dist]))
        bwd_sets = [(x.detach().requires_grad_(), w.detach().clone().requires_grad_())
                    for x, w in fwd_sets]
        grad_out = self.grad_out

        def forward(active):
            def fn(x, w):
                with torch.no_grad():
                    return shift(x, w, padding, active)
            return fn

        def forward_backward(active):
            def fn(x, w):
                return torch.autograd.grad(shift(x, w, padding, active), (x, w), grad_out)
            return fn

        for case, active in (("ssl_fwd", False), ("active_fwd", True)):
            if case in self.cases:
                self._record(dist, case, forward(active), fwd_sets)
        for case, active in (("ssl_fwdbwd", False), ("active_fwdbwd", True)):
            if case in self.cases:
                self._record(dist, case, forward_backward(active), bwd_sets)

    def _inplace(self) -> None:
        dist = C.INPLACE_DISTRIBUTION
        if "ssl_inplace_sparse" not in self.cases or dist not in self.weights:
            return
        padding = self.cfg.padding

        def inplace(x, w):
            with torch.no_grad():
                return shift_(x, w, padding)

        weights = self.weights[dist]
        moving = C.moving_channels(weights[0])
        self._record(dist, "ssl_inplace_sparse", inplace, list(zip(self.xs, weights)),
                     note=f"{moving} of {self.channels} channels move")

    def _reference(self, dist: str) -> None:
        padding = self.cfg.padding

        def ref_fwd(active):
            def fn(x, w):
                with torch.no_grad():
                    return reference.shift(x, w, padding, active)
            return fn

        fwd_sets = list(zip(self.xs, self.weights[dist]))
        for case, active in (("ref_ssl_fwd", False), ("ref_active_fwd", True)):
            if case in self.cases:
                self._record(dist, case, ref_fwd(active), fwd_sets)

    def _compiled_reference(self) -> None:
        for case, active in (("ref_ssl_compiled", False), ("ref_active_compiled", True)):
            if case not in self.cases:
                continue
            torch._dynamo.reset()  # a fresh cache per pass: no recompile limit, no stale graphs
            fn, message = self._compile(active)
            for dist in self.distributions:
                if fn is None:
                    self.results[(dist, case)] = Measured(None, message)
                    continue
                self._record(dist, case, fn, list(zip(self.xs, self.weights[dist])),
                             note=message)

    def _compile(self, active: bool):
        """``(compiled forward, note)``, or ``(None, why)`` if torch.compile fails here."""
        padding = self.cfg.padding
        compiled = torch.compile(lambda x, w: reference.shift(x, w, padding, active))

        def fn(x, w):
            with torch.no_grad():
                return compiled(x, w)

        start = time.perf_counter()
        try:
            fn(self.xs[0], next(iter(self.weights.values()))[0])
        except Exception as error:  # inductor missing a compiler, ...
            message = f"torch.compile failed: {type(error).__name__}: {error}".splitlines()[0]
            self.log("  " + message)
            return None, message
        return fn, f"first call (compile) {time.perf_counter() - start:.1f} s"

    def _conv(self) -> None:
        convs = [c for c in C.CONV_CASES if c in self.cases]
        if not convs:
            return
        conv = C.depthwise_conv(self.channels, self.ndim, self.dtype, self.layout,
                                self.cfg.device)
        grad_out = self.grad_out

        def conv_fwd(x):
            with torch.no_grad():
                return conv(x)

        def conv_fwdbwd(x):
            return torch.autograd.grad(conv(x), (x, conv.weight), grad_out)

        fns = {"dwconv_fwd": (conv_fwd, [(x,) for x in self.xs]),
               "dwconv_fwdbwd": (conv_fwdbwd, [(x.detach().requires_grad_(),) for x in self.xs])}
        # NCHW depthwise conv is allocator-bimodal: at least two runs, interleaved.
        timings = time_interleaved({c: fns[c] for c in convs}, max(2, self.cfg.runs),
                                   **self.timing_kw)
        for case, timing in timings.items():
            self.results[(C.NO_DISTRIBUTION, case)] = Measured(timing)
            self.log(f"  {self.layout:<13} {C.NO_DISTRIBUTION:<10} {case:<20} "
                     f"{timing.median * 1e3:10.4f} ms  runs "
                     + " / ".join(f"{m * 1e3:.4f}" for m in timing.run_medians))


def measure_group(cfg: Config, shape: Tuple[int, ...], dtype: torch.dtype,
                  formats: Sequence[str], distributions: Sequence[str],
                  log: Callable[[str], None], label: str) -> Dict[str, Results]:
    """``layout -> Results`` for one (shape, dtype), every layout :func:`plan_layouts` needs."""
    out = {}
    for layout, cases in plan_layouts(formats, cfg.cases).items():
        out[layout] = LayoutPass(cfg, shape, layout, dtype, cases, distributions, log,
                                 label).run()
        if cfg.device.type == "cuda":
            torch.cuda.empty_cache()
    return out
