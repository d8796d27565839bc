"""The custom ops ``torchshift2::shift`` and ``torchshift2::shift_backward``.

Their implementations hand the arguments to the backend chosen by :mod:`torchshift2.backends`,
which allocates the outputs in the shape and memory format that the fake impls compute with
:mod:`torchshift2._spec` (``opcheck`` holds them to it), and refuses non-finite weights on
CPU. Arguments are assumed checked by :mod:`torchshift2.functional`; the kernels still
refuse anything that could make them read or write out of bounds.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import _eager, _spec, backends

__all__ = ["apply_shift", "apply_shift_", "shift", "shift_", "shift_backward"]


@torch.library.custom_op("torchshift2::shift", mutates_args=())
def shift(input: Tensor, weight: Tensor, padding: str, active: bool, crop: List[int]) -> Tensor:
    """Forward shift (SPEC §3) of checked arguments; ``crop`` is flat ``[b1, a1, ...]``."""
    return backends.module_for(input.device).forward(input, weight, padding, active, crop, 0)


@shift.register_fake
def _(input, weight, padding, active, crop):
    return _spec.empty_output(input, crop)


@torch.library.custom_op("torchshift2::shift_backward", mutates_args=())
def shift_backward(
    grad_output: Tensor, input: Tensor, weight: Tensor, padding: str, active: bool, crop: List[int]
) -> Tuple[Tensor, Tensor]:
    """``(grad_input, grad_weight)`` of :func:`shift` (SPEC §4)."""
    return backends.module_for(input.device).backward(grad_output, input, weight, padding, active, crop)


@shift_backward.register_fake
def _(grad_output, input, weight, padding, active, crop):
    return _spec.empty_grads(input, weight)


def apply_shift(input: Tensor, weight: Tensor, padding: str, active: bool, crop: List[int]) -> Tensor:
    """:func:`shift` with autograd, for checked arguments: plain eager CPU calls take the
    C++ fast path (:mod:`torchshift2._eager`), everything else the custom op."""
    out = _eager.shift(input, weight, padding, active, crop)
    return shift(input, weight, padding, active, crop) if out is None else out


def apply_shift_(input: Tensor, weight: Tensor, padding: str) -> None:
    """:func:`shift_` for checked arguments, through the fast path where it applies."""
    if not _eager.shift_(input, weight, padding):
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
    backends.module_for(input.device).shift_inplace(input, weight, padding)


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
    out = backends.module_for(values.device).forward(
        values, weight, padding, False, crop, input.q_zero_point()
    )
    return torch._make_per_tensor_quantized_tensor(out, input.q_scale(), input.q_zero_point())


_quantized_lib.impl("shift", _shift_quantized, "QuantizedCPU")
