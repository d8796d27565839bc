"""The eager fast paths: plain calls go to a backend's kernels without torch's Python wrappers.

The public custom ops (:mod:`torchshift2.ops`) run through torch's Python custom-op and
autograd wrappers, which cost tens of microseconds per call. :mod:`torchshift2.functional`
therefore first offers each call to this module, which takes it only for plain eager
tensors, with nothing tracing or intercepting ops: compile, export, tracing, dispatch modes,
torch.func transforms, forward-mode AD and tensor subclasses all see the custom ops.

* CPU with the C++ backend: one C++ call, argument checks and autograd node included
  (``backends/cpp/csrc/eager.cpp``).
* The Triton backend (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``): one Python
  autograd node, :class:`BackendShift`, whose forward and backward call the backend's
  ``forward`` / ``backward`` (cached launch plans) directly.

Every path runs the same kernels as the custom ops.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor
from torch.autograd import forward_ad

from . import _spec, backends
from .backends import cpp
from .backends.cpp import build

__all__ = ["BackendShift", "shift", "shift_", "try_shift", "try_shift_"]

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


def _lean_backend(input: Tensor, weight: Tensor) -> Optional[str]:
    """The backend whose eager path takes a checked call (``"cpp"`` or ``"triton"``), else
    ``None``: plain tensors, not quantized, nothing tracing or intercepting ops."""
    if (type(input) is not Tensor or type(weight) not in _PLAIN or input.is_quantized
            or intercepted()):
        return None
    name = backends.resolve(input.device)
    if name == "triton" or (name == "cpp" and input.device.type == "cpu"):
        return name
    return None


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


class BackendShift(torch.autograd.Function):
    """One autograd node around a backend's own ``forward`` and ``backward`` (the Triton
    eager path): what the custom op and its registered autograd compute, without their
    wrappers. The backward computes only the gradients its inputs need (``output_mask``)."""

    @staticmethod
    def forward(ctx, input, weight, padding, active, crop, module):
        ctx.save_for_backward(input, weight)
        ctx.arguments = (padding, active, list(crop))
        ctx.module = module
        return module.forward(input, weight, padding, active, list(crop), 0)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        mask = tuple(ctx.needs_input_grad[:2])
        if torch.is_grad_enabled():
            # create_graph=True: the public op, whose own backward refuses double backward
            # with a clear error (SPEC §4), instead of gradients without a graph.
            from . import ops

            grads = ops.shift_backward(grad_output, input, weight, *ctx.arguments, list(mask))
        else:
            grads = ctx.module.backward(grad_output, input, weight, *ctx.arguments, mask)
        return (grads[0] if mask[0] else None, grads[1] if mask[1] else None,
                None, None, None, None)


def shift(input: Tensor, weight: Tensor, padding: str, active: bool,
          crop: List[int]) -> Optional[Tensor]:
    """A checked shift through a backend's kernels with one autograd node (the C++ one on
    CPU, :class:`BackendShift` for Triton; none when no gradient is wanted); ``None`` when
    the call must take the custom op."""
    name = _lean_backend(input, weight)
    if name is None:
        return None
    wants_grad = torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad)
    if name == "cpp":
        if wants_grad:
            return cpp.shift_autograd(input, weight, padding, active, crop)
        return cpp.forward(input, weight, padding, active, crop, 0)
    module = backends.module_for(input.device)
    if wants_grad:
        return BackendShift.apply(input, weight, padding, active, tuple(crop), module)
    return module.forward(input, weight, padding, active, crop, 0)


def shift_(input: Tensor, weight: Tensor, padding: str) -> bool:
    """A checked in-place shift straight to the C++ kernel; ``False`` when it must take
    the custom op."""
    if not (_lean_backend(input, weight) == "cpp" and input.numel()):
        return False
    cpp.shift_inplace(input, weight, padding)
    return True
