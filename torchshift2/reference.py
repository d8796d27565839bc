"""Pure-torch reference of SPEC.md: index arithmetic and ``gather``.

This is the oracle of the test suite and the fallback backend. It is differentiable by
autograd and its gradients are the SPEC's (§4): ``gather``'s backward is a scatter-add, i.e.
the exact adjoint for every padding; the SSL weight gradient is straight-through (the
interpolation derivative at the unrounded weight). It favours obviousness over speed.
"""

from __future__ import annotations

import itertools
from typing import Optional, Sequence

import torch

from . import _spec

__all__ = ["shift", "source_index"]


def source_index(position: torch.Tensor, length: int, padding: str):
    """SPEC §2: where integer positions read from.

    Args:
        position: int64 tensor of positions ``k`` (any shape).
        length: size ``L`` of the spatial dim (``L >= 1``).
        padding: canonical padding name.

    Returns:
        ``(index, valid)``: ``index`` in ``[0, L)`` and a bool mask, false where the position
        lies *outside* (zeros padding only).
    """
    valid = torch.ones_like(position, dtype=torch.bool)
    if padding == "zeros":
        valid = (position >= 0) & (position < length)
        index = position.clamp(0, length - 1)
    elif padding == "border":
        index = position.clamp(0, length - 1)
    elif padding == "periodic":
        index = position.remainder(length)
    elif padding == "reflect":
        # Period 2L - 2, or 1 when L == 1 (every position reads index 0), without a branch
        # on the size: under torch.jit.trace sizes are tensors.
        period = 2 * length - 2 + (length == 1)
        m = position.remainder(period)
        index = torch.where(m < length, m, period - m)
    elif padding == "symmetric":
        m = position.remainder(2 * length)
        index = torch.where(m < length, m, 2 * length - 1 - m)
    else:  # pragma: no cover - callers pass canonical names
        raise ValueError(f"padding: unknown '{padding}'")
    return index, valid


def _reduce_shift(shift: torch.Tensor, length: int, padding: str) -> torch.Tensor:
    """An int64 shift equivalent to the integer-valued float64 ``shift`` for this padding.

    Shifts beyond the period (or, for zeros/border, beyond the size) act like smaller ones;
    reducing them keeps the index arithmetic free of overflow for weights like 1e30.
    """
    if padding == "periodic":
        shift = shift.remainder(length)
    elif padding == "reflect":
        shift = shift.remainder(2 * length - 2) if length > 1 else torch.zeros_like(shift)
    elif padding == "symmetric":
        shift = shift.remainder(2 * length)
    else:
        shift = shift.clamp(-(length + 2), length + 2)
    return shift.to(torch.int64)


_SIGNED_TWIN = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}


def _gather(x: torch.Tensor, shifts: torch.Tensor, padding: str, crop, fill, corner=None):
    """``V(n, c, i - shifts[c] - corner)`` for every output position (SPEC §2/§3).

    ``x`` is ``(N, C, *L)``, ``shifts`` an integer-valued float64 ``(C, D)`` tensor and
    ``corner`` D small ints, added after the shift is reduced (``1e30 + 1 == 1e30``).
    """
    corner = corner or (0,) * shifts.shape[1]
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    ndim = len(spatial)
    flat_index = torch.zeros((c,) + (1,) * ndim, dtype=torch.int64, device=x.device)
    valid = torch.ones_like(flat_index, dtype=torch.bool)
    out_spatial = []
    for d, (length, (before, after)) in enumerate(zip(spatial, crop)):
        out_len = length - before - after
        out_spatial.append(out_len)
        positions = torch.arange(before, before + out_len, device=x.device)
        shift = _reduce_shift(shifts[:, d], length, padding)
        index, ok = source_index(positions[None, :] - shift[:, None] - corner[d], length, padding)
        view = [c] + [1] * ndim
        view[1 + d] = out_len
        flat_index = flat_index * length + index.reshape(view)
        valid = valid & ok.reshape(view)
    flat_index = flat_index.expand([c] + out_spatial).reshape(1, c, -1).expand(n, c, -1)
    flat = x.reshape(n, c, -1)
    if x.dtype in _SIGNED_TWIN:  # gather has no kernel for these: move their bits instead
        values = flat.view(_SIGNED_TWIN[x.dtype]).gather(2, flat_index).view(x.dtype)
    else:  # (a view as the same dtype would cut the autograd graph)
        values = flat.gather(2, flat_index)
    values = values.reshape([n, c] + out_spatial)
    if padding == "zeros":
        values = torch.where(valid, values, torch.full((), fill, dtype=values.dtype))
    return values


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _interpolate(x: torch.Tensor, weight: torch.Tensor, padding: str, crop) -> torch.Tensor:
    """SPEC §3 active forward in the op-math dtype, differentiable in ``x`` and ``weight``."""
    ndim = weight.shape[1]
    floor = torch.floor(weight.detach())
    frac = (weight - floor).to(x.dtype)  # d frac / d weight = 1: the SPEC's weight derivative
    floor = floor.to(torch.float64)
    bshape = (1, -1) + (1,) * ndim
    out = 0
    for corner in itertools.product((0, 1), repeat=ndim):
        coeff = 1
        for d, a in enumerate(corner):
            coeff = coeff * (frac[:, d] if a else 1 - frac[:, d])
        out = out + coeff.reshape(bshape) * _gather(x, floor, padding, crop, 0, corner)
    return out


def shift(
    input: torch.Tensor,
    weight: torch.Tensor,
    padding: str = "zeros",
    active: bool = False,
    crop: Optional[Sequence[Sequence[int]]] = None,
    *,
    fill: float = 0,
) -> torch.Tensor:
    """Reference shift (SPEC §3), differentiable with the SPEC §4 gradients.

    Args:
        input: ``(N, C, *L)`` with ``D = len(L)`` in 1..3.
        weight: ``(C, D)`` floating shifts, or ``(k·C, D)``: output channel ``o`` reads input
            channel ``o // k`` (a channel multiplier, SPEC §1).
        padding: a padding name or alias (SPEC §2).
        active: interpolate (Active Shift) instead of rounding (SSL).
        crop: ``None`` or D ``(before, after)`` pairs.
        fill: value of *outside* reads for zeros padding (the zero point of quantized data).

    Returns:
        ``(N, k·C, *L_out)`` tensor, same dtype and memory format as ``input``.
    """
    padding = _spec.canonical_padding(padding)
    crop = _spec.normalize_crop(crop, input.shape[2:])
    if input.is_quantized:
        if input.qscheme() != torch.per_tensor_affine:
            raise ValueError(f"input: expected per-tensor quantization, got {input.qscheme()}")
        values = shift(input.int_repr(), weight, padding, False, crop, fill=input.q_zero_point())
        return torch._make_per_tensor_quantized_tensor(
            values, input.q_scale(), input.q_zero_point()
        )
    out_shape = _spec.output_shape(input.shape, crop, weight.shape[0])
    k = _spec.multiplier(input.shape[1], weight.shape[0])
    if k != 1:  # output channel o reads input channel o // k
        layout = input
        input = input.index_select(1, torch.arange(weight.shape[0], device=input.device) // k)
        input = _spec.empty_like_layout(layout, input.shape, input.dtype).copy_(input)
    if input.numel() == 0 or 0 in out_shape:
        out = _spec.empty_like_layout(input, out_shape)
        if input.dtype.is_floating_point and torch.is_grad_enabled():
            # Stay in the autograd graph so that gradients come back as zeros, not errors.
            link = (input.sum() + weight.sum()).to(input.dtype) * 0
            out = out.copy_(link.expand(out_shape))
        return out
    if not input.dtype.is_floating_point:
        values = _gather(input, torch.round(weight.detach()).double(), padding, crop, fill)
    else:
        x = input.to(_opmath(input.dtype))
        if active:
            values = _interpolate(x, weight, padding, crop)
        else:
            values = _gather(x, torch.round(weight.detach()).double(), padding, crop, fill)
            if weight.requires_grad and torch.is_grad_enabled():
                # Straight-through (SPEC §4): the value stays the rounded shift, the weight
                # receives the interpolation derivative at the unrounded weight.
                interp = _interpolate(x.detach(), weight, padding, crop)
                values = values + (interp - interp.detach())
        values = values.to(input.dtype)
    out = _spec.empty_like_layout(input, out_shape)
    return out.copy_(values)
