"""The eager fast path: plain CPU calls go to the C++ kernels without torch's Python wrappers.

The public custom ops (:mod:`torchshift2.ops`) run through torch's Python custom-op and
autograd wrappers, which cost tens of microseconds per call. :mod:`torchshift2.functional`
therefore first offers each call to this module, which takes it only for plain eager CPU
tensors with the C++ backend selected: compile, export, tracing, dispatch modes, torch.func
transforms, forward-mode AD and tensor subclasses all see the custom ops. Both paths call
the same kernels (``backends/cpp/ops.cpp``).
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor
from torch.autograd import forward_ad

from . import _spec, backends
from .backends import cpp
from .backends.cpp import build

__all__ = ["shift", "shift_", "try_shift", "try_shift_"]

# Parameters are plain tensors to dispatch (no __torch_function__ of their own).
_PLAIN = (Tensor, torch.nn.Parameter)

# use_backend names under which the eager entry points may run (TORCHSHIFT2_BACKEND is
# read by the C++ half of their acceptance test).
_CPP_FORCED = (None, "auto", "cpp")


def intercepted() -> bool:
    """Whether something traces or intercepts ops, or forward-mode AD is on (the C++ autograd
    node has no tangents): then the call must take the custom ops."""
    return (
        torch.compiler.is_compiling()
        or forward_ad._current_level >= 0
        or torch.jit.is_tracing()
        or torch._C._is_torch_function_mode_enabled()
        or torch._C._len_torch_dispatch_stack() > 0
        or torch._C._are_functorch_transforms_active()
    )


def _takes(input: Tensor, weight: Tensor) -> bool:
    """Whether a checked call may bypass the custom ops: plain CPU tensors, nothing tracing
    or intercepting ops, and the C++ backend selected."""
    return (
        type(input) is Tensor
        and type(weight) in _PLAIN
        and input.device.type == "cpu"
        and not input.is_quantized
        and not intercepted()
        and backends.resolve(input.device) == "cpp"
    )


def _ready(input, weight, padding) -> bool:
    # intercepted() first: under torch.compile it is constant True, and Dynamo cannot
    # trace the context variable behind forced_backend().
    return (
        not intercepted()
        and type(input) is Tensor
        and type(weight) in _PLAIN
        and input.layout is torch.strided  # sparse tensors get the full path's error
        and weight.layout is torch.strided
        and type(padding) is str
        and backends.forced_backend() in _CPP_FORCED
    )


_entry_points = None


def _entries():
    """``(eager_shift, eager_shift_inplace)`` of the loaded C++ library, else ``None``."""
    global _entry_points
    if _entry_points is None:
        ops = build.loaded()
        if ops is not None:
            _entry_points = (ops.eager_shift.default, ops.eager_shift_inplace.default)
    return _entry_points


def try_shift(input, weight, padding, active, ndim: int = -1) -> Optional[Tensor]:
    """:func:`torchshift2.functional.shift` without crop in one C++ call, argument checks
    included, for plain eager CPU tensors once the C++ library is loaded; ``None`` when the
    call needs the full path (anything else, including every call it would refuse).

    ``ndim``: the spatial dims ``shift1d/2d/3d`` require, ``-1`` for any of 1, 2, 3.
    """
    entries = _entries()
    if entries is None or type(active) is not bool or not _ready(input, weight, padding):
        return None
    code = _spec.PADDING_CODES.get(padding)
    if code is None or not 3 <= input.dim() <= 5:
        return None
    return entries[0](input, weight, code[0], code[1], active, ndim, _spec.is_channels_last(input))


def try_shift_(input, weight, padding) -> bool:
    """:func:`torchshift2.functional.shift_` in one C++ call, as :func:`try_shift`;
    ``False`` when the call needs the full path."""
    entries = _entries()
    if entries is None or not _ready(input, weight, padding):
        return False
    code = _spec.PADDING_CODES.get(padding)
    return code is not None and entries[1](input, weight, code[1])


def shift(input: Tensor, weight: Tensor, padding: str, active: bool,
          crop: List[int]) -> Optional[Tensor]:
    """A checked shift through the C++ kernels with a C++ autograd node (or none when no
    gradient is wanted); ``None`` when the call must take the custom op."""
    if not _takes(input, weight):
        return None
    if torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad):
        return cpp.shift_autograd(input, weight, padding, active, crop)
    return cpp.forward(input, weight, padding, active, crop, 0)


def shift_(input: Tensor, weight: Tensor, padding: str) -> bool:
    """A checked in-place shift straight to the C++ kernel; ``False`` when it must take
    the custom op."""
    if not (_takes(input, weight) and input.numel()):
        return False
    cpp.shift_inplace(input, weight, padding)
    return True
