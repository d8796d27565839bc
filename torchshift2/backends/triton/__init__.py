"""Triton backend (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``).

Implements :class:`torchshift2.backends.Backend`. Which kernel runs (:mod:`.plan` decides,
from shapes, strides and dtypes only):

============================  ==========================================  ===========
call                          kernel (module)                             launches
============================  ==========================================  ===========
forward, output contiguous    ``planar_forward`` (:mod:`.planar`)          1
forward, output channels-last ``cl_forward`` (:mod:`.channels_last`)       1
backward, grad_input only     ``planar_backward`` / ``cl_backward``        1
backward with grad_weight     the same kernel, then ``reduce_partials``    2
                              (:mod:`.reduce`)
``shift_``                    ``planar_inplace`` / ``cl_inplace``          1
                              (:mod:`.inplace`)
============================  ==========================================  ===========

Every other tensor layout is first copied to contiguous; a grad_output in the other dense
layout than grad_input is copied to grad_input's layout once (a broadcast one, e.g. from
``out.sum()``, is read through its strides). The module docstrings of the kernel files
describe the kernels; ``docs/dev/gpu.md`` the design and what is measured.

Behaviour worth knowing:

* SSL forward copies bits: every dtype (floats, integers, bool, quantized ``int_repr``) is
  shifted exactly through an integer view of the same element size.
* Any finite weight magnitude is reduced exactly in-kernel; no weight can make a kernel
  access memory out of bounds. A non-finite weight (only reachable on CUDA: the CPU path
  rejects them) makes its output channel NaN, the grad_input of the input channel it
  reads NaN and its grad_weight row NaN (SPEC §5); integer dtypes, which have no NaN, get
  the zeros-padding fill in that channel.
* Deterministic, no atomics. grad_weight is bitwise reproducible across GPUs and launch
  configurations (:mod:`.plan`).
* :func:`launch_forward` / :func:`launch_backward` / :func:`launch_shift_inplace` allocate
  only with torch ops and launch every kernel through :func:`_launch`, so that they can run
  inside a ``torch.library.triton_op`` with ``_launch = torch.library.wrap_triton``.
  :func:`forward_into` / :func:`backward_into` are the same with launch plans cached per
  (shapes, strides, dtypes, arguments): a repeated eager call costs a dictionary lookup.
"""

from __future__ import annotations

import contextlib

import torch

from ... import _spec
from . import plan as _plan
from .plan import CONFIG

__all__ = ["forward", "backward", "forward_into", "backward_into", "shift_inplace",
           "launch_forward", "launch_backward", "launch_shift_inplace", "CONFIG", "KERNELS"]

name = "triton"

#: Every kernel the launch functions can launch (the table above).
KERNELS = (_plan.planar.planar_forward, _plan.channels_last.cl_forward,
           _plan.planar.planar_backward, _plan.channels_last.cl_backward,
           _plan.reduce.reduce_partials, _plan.inplace.planar_inplace,
           _plan.inplace.cl_inplace)


def _launch(kernel):
    """How every kernel is launched: ``_launch(kernel)[grid](*args, **meta)``. Identity in
    eager; inside a ``triton_op`` pass ``launcher=torch.library.wrap_triton`` to the
    ``launch_*`` functions (or set this module attribute to it)."""
    return kernel


def _run(launcher, kernel, grid, args, meta):
    """``launcher(kernel)[grid](*args, **meta)``; ``wrap_triton`` takes only the launch
    options Inductor knows (it would pass ``maxnreg`` to the kernel as an argument), so
    the register cap is left to ptxas there."""
    launcher = launcher or _launch
    wrap_triton = getattr(torch.library, "wrap_triton", None)
    if launcher is wrap_triton and "maxnreg" in meta:
        meta = {k: v for k, v in meta.items() if k != "maxnreg"}
    launcher(kernel)[grid](*args, **meta)


def _interpreted() -> bool:
    return type(_plan.planar.planar_forward).__name__ == "InterpretedFunction"


def _device_guard(t: torch.Tensor):
    # A traced launch (FakeTensors, inside a triton_op under compile) carries its device: no
    # guard, which would initialise CUDA at trace time.
    if t.device.type == "cuda" and not torch._subclasses.fake_tensor.is_fake(t):
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def _dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` if it is contiguous, channels-last or broadcast (a zero stride), else a
    contiguous copy (cheaper than uncoalesced reads)."""
    if t.is_contiguous() or _spec.is_channels_last(t) or 0 in t.stride():
        return t
    return t.contiguous()


def _dense_in(t: torch.Tensor, channels_last: bool) -> bool:
    if not channels_last:
        return t.is_contiguous()
    order = [0] + list(range(2, t.dim())) + [1]
    return t.permute(order).is_contiguous()


def _in_layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``t`` in the given dense layout: copied once if it is not already (a broadcast ``t``,
    with a zero stride, is read through its strides instead)."""
    if t.numel() <= 1 or 0 in t.stride() or _dense_in(t, channels_last):
        return t
    if not channels_last:
        return t.contiguous()
    order = [0] + list(range(2, t.dim())) + [1]
    inverse = [order.index(i) for i in range(t.dim())]
    return t.permute(order).contiguous().permute(inverse)


_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(_INT_VIEW[t.element_size()])


# --- launchers (no caching: usable inside a triton_op with FakeTensors) --------------------

def launch_forward(out, input, weight, padding, active, crop, fill=0, *, launcher=None,
                   _planned=None):
    """SPEC §3 into the preallocated ``out`` (``(N, k*C, *L_out)``, any strides) with one
    kernel launch; ``crop`` flat ``[b1, a1, ...]``, ``fill`` the zeros-padding value."""
    input = _dense(input)
    if active:
        if not (input.dtype.is_floating_point and out.dtype == input.dtype):
            raise TypeError(f"input: active=True needs a floating dtype, got {input.dtype}")
        x, o = input, out
    else:
        x, o = _bits(input), _bits(out)
    launch = _planned if _planned is not None else _plan.forward(
        o, x, weight, padding, active, crop, fill, input.dtype, _interpreted())
    if launch is None:
        return
    with _device_guard(x):
        _run(launcher, launch.kernel, launch.grid, (x, o, weight, *launch.scalars), launch.meta)


def launch_backward(grad_input, grad_weight, grad_output, input, weight, padding, active, crop,
                    *, launcher=None, _cache=False):
    """SPEC §4 into the preallocated ``grad_input`` (input's shape, any strides) and
    ``grad_weight`` (weight's shape); either may be ``None`` (not asked for, not computed).
    One launch for grad_input alone, two (the one-pass kernel and the fixed-order reduction
    of its partials) when grad_weight is asked for."""
    need_gi, need_gw = grad_input is not None, grad_weight is not None
    if not (need_gi or need_gw):
        return
    input = _dense(input)
    layout_of = grad_input if need_gi else input
    channels_last = _spec.is_channels_last(layout_of)
    input = _in_layout(input, channels_last)
    grad_output = _in_layout(grad_output, channels_last)
    def build():
        return _plan.backward(grad_input if need_gi else input, grad_output, input, weight,
                              padding, active, crop, need_gi, need_gw, _interpreted())

    if _cache:
        key = ("backward", _signature(grad_input), need_gw, _signature(grad_output),
               _signature(input), _signature(weight), padding, bool(active), tuple(crop),
               _config_key())
        planned = _cached(key, build)
    else:
        planned = build()
    if planned is None:
        if need_gi:
            grad_input.zero_()
        if need_gw:
            grad_weight.zero_()
        return
    main, rows, reduce_launch = planned
    with _device_guard(input):
        if need_gw:
            partials = torch.empty((rows, weight.shape[0], weight.shape[1]), dtype=torch.float64,
                                   device=input.device)
        gi = grad_input if need_gi else partials
        part = partials if need_gw else grad_input
        _run(launcher, main.kernel, main.grid,
             (grad_output, input, weight, gi, part, *main.scalars), main.meta)
        if need_gw:
            _run(launcher, reduce_launch.kernel, reduce_launch.grid,
                 (partials, weight, grad_weight, *reduce_launch.scalars, weight.stride(0),
                  weight.stride(1), grad_weight.stride(0), grad_weight.stride(1)),
                 reduce_launch.meta)


def launch_shift_inplace(input, weight, padding, *, launcher=None, _planned=None):
    """SSL of ``input`` in place (no crop) with one launch; channels whose rounded shift is
    0 in every dim are neither read nor written."""
    if input.numel() == 0:
        return
    if not (input.is_contiguous() or _spec.is_channels_last(input)):
        # Neither layout: shift out of place (one launch) and copy back.
        crop = [0, 0] * (input.dim() - 2)
        out = _spec.empty_output(input, crop, weight)
        launch_forward(out, input, weight, padding, False, crop, 0, launcher=launcher)
        input.copy_(out)
        return
    x = _bits(input)
    launch, scratch_size = _planned if _planned is not None else _plan.shift_inplace(
        x, weight, padding, input.dtype, _interpreted())
    with _device_guard(x):
        scratch = torch.empty(scratch_size, dtype=x.dtype, device=x.device)
        _run(launcher, launch.kernel, launch.grid, (x, weight, scratch, *launch.scalars),
             launch.meta)


# --- the Backend interface ------------------------------------------------------------------

#: Launch plans keyed on everything they depend on, so that a repeated eager call costs a
#: dictionary lookup instead of the planning Python.
_PLANS: dict = {}
_PLAN_LIMIT = 1024
_MISSING = object()


def _signature(t):
    if t is None:
        return None
    return t.device, t.dtype, tuple(t.shape), t.stride()


def _cached(key, build):
    planned = _PLANS.get(key, _MISSING)
    if planned is _MISSING:
        planned = build()  # raises on bad arguments: nothing is cached then
        if len(_PLANS) >= _PLAN_LIMIT:
            _PLANS.clear()
        _PLANS[key] = planned
    return planned


def _config_key():
    return tuple(sorted((k, v) for k, v in CONFIG.items()))


def forward(input, weight, padding, active, crop, fill):
    """SPEC §3 into a new tensor (``(N, k*C, *L_out)`` in the input's layout rule)."""
    _spec.check_finite(weight)  # CPU tensors under the interpreter; a no-op on CUDA
    out = _spec.empty_output(input, crop, weight)
    forward_into(out, input, weight, padding, active, crop, fill)
    return out


def backward(grad_output, input, weight, padding, active, crop, output_mask=(True, True)):
    """SPEC §4: ``(grad_input or None, grad_weight or None)`` as ``output_mask`` asks."""
    _spec.check_finite(weight)
    grad_input, grad_weight = _spec.empty_grads(input, weight, output_mask)
    backward_into(grad_input, grad_weight, grad_output, input, weight, padding, active, crop)
    return grad_input, grad_weight


def shift_inplace(input, weight, padding):
    """SSL in place, without crop; touches only the channels that move."""
    _spec.check_finite(weight)
    if input.numel() == 0:
        return
    x = _bits(input)
    key = ("inplace", _signature(input), _signature(weight), padding, _config_key())
    planned = None
    if input.is_contiguous() or _spec.is_channels_last(input):
        planned = _cached(key, lambda: _plan.shift_inplace(x, weight, padding, input.dtype,
                                                           _interpreted()))
    launch_shift_inplace(input, weight, padding, _planned=planned)


def forward_into(out, input, weight, padding, active, crop, fill):
    """SPEC §3 into the preallocated ``out`` (any strides)."""
    input = _dense(input)
    if active and not input.dtype.is_floating_point:
        raise TypeError(f"input: active=True needs a floating dtype, got {input.dtype}")
    key = ("forward", _signature(out), _signature(input), _signature(weight), padding,
           bool(active), tuple(crop), fill, _config_key())
    x, o = (input, out) if active else (_bits(input), _bits(out))
    planned = _cached(key, lambda: _plan.forward(o, x, weight, padding, active, crop, fill,
                                                 input.dtype, _interpreted()))
    if planned is not None:
        launch_forward(out, input, weight, padding, active, crop, fill, _planned=planned)


def backward_into(grad_input, grad_weight, grad_output, input, weight, padding, active, crop):
    """SPEC §4 into the preallocated ``grad_input`` / ``grad_weight``; either may be
    ``None`` (not asked for)."""
    if grad_input is None and grad_weight is None:
        return
    launch_backward(grad_input, grad_weight, grad_output, input, weight, padding, active, crop,
                    _cache=True)
