"""The custom ops ``torchshift2::shift`` and ``torchshift2::shift_backward``.

Their implementations allocate the outputs (the same code as the fake impls, so real and
fake tensors always agree on shape and memory format) and hand them to the backend chosen by
:mod:`torchshift2.backend`. Arguments are assumed checked by :mod:`torchshift2.functional`;
the kernels still refuse anything that could make them read or write out of bounds.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from . import _spec, backend

__all__ = ["shift", "shift_", "shift_backward"]


def _backend_module(device: torch.device):
    name = backend.resolve(device)
    if name == "cpp":
        if device.type != "cpu":
            raise RuntimeError(f"backend 'cpp': expected CPU tensors, got device {device}")
        from .cpu import loader

        return loader
    if name == "triton":
        from . import triton as triton_backend

        return triton_backend
    from . import _reference_backend

    return _reference_backend


def _check_finite(weight: Tensor) -> None:
    # On CPU the check is free of device syncs; on CUDA the kernels clamp NaN instead.
    if weight.device.type == "cpu" and weight.numel() and not bool(torch.isfinite(weight).all()):
        raise ValueError("weight: expected finite values on CPU, got NaN or infinity")


def _allocate_output(input: Tensor, crop: List[int]) -> Tensor:
    return _spec.empty_like_layout(input, _spec.output_shape(input.shape, _spec.pair_crop(crop)))


def _allocate_grads(input: Tensor, weight: Tensor) -> Tuple[Tensor, Tensor]:
    return _spec.empty_like_layout(input, input.shape), torch.empty_like(
        weight, memory_format=torch.contiguous_format
    )


@torch.library.custom_op("torchshift2::shift", mutates_args=())
def shift(input: Tensor, weight: Tensor, padding: str, active: bool, crop: List[int]) -> Tensor:
    """Forward shift (SPEC §3) of checked arguments; ``crop`` is flat ``[b1, a1, ...]``."""
    _check_finite(weight)
    out = _allocate_output(input, crop)
    if out.numel():
        _backend_module(input.device).forward(out, input, weight, padding, active, crop, 0)
    return out


@shift.register_fake
def _(input, weight, padding, active, crop):
    return _allocate_output(input, crop)


@torch.library.custom_op("torchshift2::shift_backward", mutates_args=())
def shift_backward(
    grad_output: Tensor, input: Tensor, weight: Tensor, padding: str, active: bool, crop: List[int]
) -> Tuple[Tensor, Tensor]:
    """``(grad_input, grad_weight)`` of :func:`shift` (SPEC §4)."""
    _check_finite(weight)
    grad_input, grad_weight = _allocate_grads(input, weight)
    if input.numel() == 0 or grad_output.numel() == 0:
        grad_input.zero_()
        grad_weight.zero_()
    else:
        _backend_module(input.device).backward(
            grad_input, grad_weight, grad_output, input, weight, padding, active, crop
        )
    return grad_input, grad_weight


@shift_backward.register_fake
def _(grad_output, input, weight, padding, active, crop):
    return _allocate_grads(input, weight)


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
    _check_finite(weight)
    if input.numel() == 0:
        return
    module = _backend_module(input.device)
    if hasattr(module, "shift_inplace"):
        module.shift_inplace(input, weight, padding)
    else:  # backends without an in-place kernel: out of place, then copy back
        out = _allocate_output(input, [0, 0] * (input.dim() - 2))
        module.forward(out, input, weight, padding, False, [0, 0] * (input.dim() - 2), 0)
        input.copy_(out)


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
    _check_finite(weight)
    values = input.int_repr()
    out = _allocate_output(values, crop)
    if out.numel():
        _backend_module(values.device).forward(
            out, values, weight, padding, False, crop, input.q_zero_point()
        )
    return torch._make_per_tensor_quantized_tensor(out, input.q_scale(), input.q_zero_point())


_quantized_lib.impl("shift", _shift_quantized, "QuantizedCPU")
