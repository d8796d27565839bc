"""The custom ops ``torchshift2::shift`` and ``torchshift2::shift_backward``.

Their implementations hand the arguments to the backend chosen by :mod:`torchshift2.backend`,
which allocates the outputs in the shape and memory format that the fake impls compute with
:mod:`torchshift2._spec` (``opcheck`` holds them to it), and refuses non-finite weights on
CPU. Arguments are assumed checked by :mod:`torchshift2.functional`; the kernels still
refuse anything that could make them read or write out of bounds.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import _spec, backend
from .cpu import loader as _cpu_loader

__all__ = ["apply_shift", "apply_shift_", "eager_shift", "eager_shift_", "shift", "shift_",
           "shift_backward"]


def _backend_module(device: torch.device):
    name = backend.resolve(device)
    if name == "cpp":
        if device.type != "cpu":
            raise RuntimeError(f"backend 'cpp': expected CPU tensors, got device {device}")
        return _cpu_loader
    if name == "triton":
        from . import triton as triton_backend

        return triton_backend
    from . import _reference_backend

    return _reference_backend


@torch.library.custom_op("torchshift2::shift", mutates_args=())
def shift(input: Tensor, weight: Tensor, padding: str, active: bool, crop: List[int]) -> Tensor:
    """Forward shift (SPEC §3) of checked arguments; ``crop`` is flat ``[b1, a1, ...]``."""
    return _backend_module(input.device).forward(input, weight, padding, active, crop, 0)


@shift.register_fake
def _(input, weight, padding, active, crop):
    return _spec.empty_output(input, crop)


@torch.library.custom_op("torchshift2::shift_backward", mutates_args=())
def shift_backward(
    grad_output: Tensor, input: Tensor, weight: Tensor, padding: str, active: bool, crop: List[int]
) -> Tuple[Tensor, Tensor]:
    """``(grad_input, grad_weight)`` of :func:`shift` (SPEC §4)."""
    return _backend_module(input.device).backward(grad_output, input, weight, padding, active, crop)


@shift_backward.register_fake
def _(grad_output, input, weight, padding, active, crop):
    return _spec.empty_grads(input, weight)


# Parameters are plain tensors to dispatch (no __torch_function__ of their own).
_PLAIN = (Tensor, torch.nn.Parameter)


# use_backend names under which the eager entry points may run (TORCHSHIFT2_BACKEND is
# read by the C++ half of their acceptance test).
_CPP_FORCED = (None, "auto", "cpp")


def _intercepted() -> bool:
    """Whether something traces or intercepts ops, which must then see the custom ops."""
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch._C._is_torch_function_mode_enabled()
        or torch._C._len_torch_dispatch_stack() > 0
        or torch._C._are_functorch_transforms_active()
    )


def _eager_cpp(input: Tensor, weight: Tensor) -> bool:
    """Whether a call may bypass the custom ops: plain CPU tensors, nothing tracing or
    intercepting ops, and the C++ backend selected (see ``cpu/ops.cpp`` for why)."""
    return (
        type(input) is Tensor
        and type(weight) in _PLAIN
        and input.device.type == "cpu"
        and not input.is_quantized
        and not _intercepted()
        and backend.resolve(input.device) == "cpp"
    )


def _eager_ready(input, weight, padding) -> bool:
    # _intercepted() first: under torch.compile it is constant True, and Dynamo cannot
    # trace the context variable behind forced_backend().
    return (
        not _intercepted()
        and type(input) is Tensor
        and type(weight) in _PLAIN
        and type(padding) is str
        and backend.forced_backend() in _CPP_FORCED
    )


def eager_shift(input, weight, padding, active, ndim: int = -1) -> Optional[Tensor]:
    """:func:`torchshift2.functional.shift` without crop in one C++ call, argument checks
    included, for plain eager CPU tensors once the C++ library is loaded; ``None`` when the
    call needs the full path (anything else, including every call it would refuse).

    ``ndim``: the spatial dims ``shift1d/2d/3d`` require, ``-1`` for any of 1, 2, 3.
    """
    op = _cpu_loader.eager_shift_op
    if op is None or type(active) is not bool or not _eager_ready(input, weight, padding):
        return None
    code = _spec.PADDING_CODES.get(padding)
    if code is None or not 3 <= input.dim() <= 5:
        return None
    return op(input, weight, code[0], code[1], active, ndim, _spec.is_channels_last(input))


def eager_shift_(input, weight, padding) -> bool:
    """:func:`torchshift2.functional.shift_` in one C++ call, as :func:`eager_shift`;
    ``False`` when the call needs the full path."""
    op = _cpu_loader.eager_shift_inplace_op
    if op is None or not _eager_ready(input, weight, padding):
        return False
    code = _spec.PADDING_CODES.get(padding)
    return code is not None and op(input, weight, code[1])


def apply_shift(input: Tensor, weight: Tensor, padding: str, active: bool, crop: List[int]) -> Tensor:
    """:func:`shift` with autograd; plain eager CPU calls take the C++ fast path, which runs
    the same kernels without torch's Python custom-op wrappers, and without an autograd
    node when no gradient is wanted."""
    if _eager_cpp(input, weight):
        if torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad):
            return _cpu_loader.shift_autograd(input, weight, padding, active, crop)
        return _cpu_loader.forward(input, weight, padding, active, crop, 0)
    return shift(input, weight, padding, active, crop)


def apply_shift_(input: Tensor, weight: Tensor, padding: str) -> None:
    """:func:`shift_`; plain eager CPU calls go straight to the C++ kernel."""
    if _eager_cpp(input, weight) and input.numel():
        _cpu_loader.shift_inplace(input, weight, padding)
        return
    shift_(input, weight, padding)


def _setup_context(ctx, inputs, output):
    input, weight, padding, active, crop = inputs
    ctx.save_for_backward(input, weight)
    ctx.arguments = (padding, active, crop)


def _shift_grad(ctx, grad_output):
    input, weight = ctx.saved_tensors
    grad_input, grad_weight = shift_backward(grad_output, input, weight, *ctx.arguments)
    return (
        grad_input if ctx.needs_input_grad[0] else None,
        grad_weight if ctx.needs_input_grad[1] else None,
        None,
        None,
        None,
    )


shift.register_autograd(_shift_grad, setup_context=_setup_context)


def _no_double_backward(ctx, grad_input_grad, grad_weight_grad):
    raise RuntimeError(
        "torchshift2: double backward (differentiating the gradient of a shift) is not "
        "supported; compute first-order gradients only (create_graph=False)"
    )


shift_backward.register_autograd(_no_double_backward, setup_context=lambda ctx, inputs, output: None)


@torch.library.custom_op("torchshift2::shift_", mutates_args=("input",))
def shift_(input: Tensor, weight: Tensor, padding: str) -> None:
    """SSL forward in place (no crop, no autograd): only moving channels are touched."""
    if input.numel() == 0:
        _spec.check_finite(weight)
        return
    module = _backend_module(input.device)
    if hasattr(module, "shift_inplace"):
        module.shift_inplace(input, weight, padding)
    else:  # backends without an in-place kernel: out of place, then copy back
        input.copy_(module.forward(input, weight, padding, False, [0, 0] * (input.dim() - 2), 0))


@shift_.register_fake
def _(input, weight, padding):
    return None


# Quantized tensors dispatch to QuantizedCPU: shift their integer representation exactly and
# fill zeros padding with the zero point, which represents the real value 0 (SPEC §1).
_quantized_lib = torch.library.Library("torchshift2", "IMPL")


def _shift_quantized(input, weight, padding, active, crop):
    if input.qscheme() != torch.per_tensor_affine:
        raise ValueError(
            f"input: expected a per-tensor affine quantized tensor, got {input.qscheme()}"
        )
    values = input.int_repr()
    out = _backend_module(values.device).forward(
        values, weight, padding, False, crop, input.q_zero_point()
    )
    return torch._make_per_tensor_quantized_tensor(out, input.q_scale(), input.q_zero_point())


_quantized_lib.impl("shift", _shift_quantized, "QuantizedCPU")
