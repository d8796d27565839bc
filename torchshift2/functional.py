"""Functional API: :func:`shift` and its dimension-checked variants.

All argument checks of SPEC §5 happen here, before any kernel runs.
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch
from torch import Tensor

from . import _eager, _spec, ops

__all__ = ["shift", "shift_", "shift1d", "shift2d", "shift3d", "check_shift_args"]


def check_shift_args(input, weight, padding, active, crop, ndim: Optional[int] = None):
    """Validate the arguments of :func:`shift` (SPEC §5).

    Args:
        input: as in :func:`shift`.
        weight: as in :func:`shift`.
        padding: as in :func:`shift`.
        active: as in :func:`shift`.
        crop: as in :func:`shift`.
        ndim: the required number of spatial dims D (``shift1d/2d/3d``), or ``None`` for
            any of 1, 2, 3.

    Returns:
        ``(padding, crop)``: the canonical padding name and D ``(before, after)`` pairs.

    Raises:
        TypeError: an argument of the wrong type or dtype.
        ValueError: wrong dims, shapes or values.
        RuntimeError: input and weight on different devices.

    Example:
        >>> import torch
        >>> from torchshift2.functional import check_shift_args
        >>> check_shift_args(torch.zeros(1, 2, 5, 6), torch.zeros(2, 2), "circular", False,
        ...                  [(1, 0), (0, 2)])
        ('periodic', ((1, 0), (0, 2)))
    """
    if torch.jit.is_tracing():
        # Sizes are traced tensors here, and every comparison would warn that its value is
        # baked into the trace; the checks record nothing, so there is nothing to bake.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return _check_shift_args(input, weight, padding, active, crop, ndim)
    return _check_shift_args(input, weight, padding, active, crop, ndim)


def _check_shift_args(input, weight, padding, active, crop, ndim):
    if not isinstance(input, Tensor):
        raise TypeError(f"input: expected a torch.Tensor, got {type(input).__name__}")
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight: expected a torch.Tensor, got {type(weight).__name__}")
    for name, tensor in (("input", input), ("weight", weight)):
        if tensor.layout != torch.strided:
            raise TypeError(f"{name}: expected a dense (strided) tensor, got layout "
                            f"{tensor.layout}; convert it with .to_dense()")
    if ndim is None:
        if input.dim() not in (3, 4, 5):
            raise ValueError(
                f"input: expected a 3D, 4D or 5D tensor (N, C, *spatial), got {input.dim()}D "
                f"with shape {tuple(input.shape)}"
            )
    elif input.dim() != ndim + 2:
        raise ValueError(
            f"input: expected a {ndim + 2}D tensor (N, C, {ndim} spatial dims), got "
            f"{input.dim()}D with shape {tuple(input.shape)}"
        )
    spatial = input.dim() - 2
    channels = input.shape[1]
    rows = weight.shape[0] if weight.dim() == 2 else -1
    multiple = rows == channels if channels == 0 else rows > 0 and rows % channels == 0
    if weight.dim() != 2 or not multiple or weight.shape[1] != spatial:
        raise ValueError(
            f"weight: expected shape (k·C, D) = (k·{channels}, {spatial}) with an integer "
            f"k >= 1 for input of shape {tuple(input.shape)}, got {tuple(weight.shape)}"
        )
    if not weight.dtype.is_floating_point:
        raise TypeError(f"weight: expected a floating dtype, got {weight.dtype}")
    if input.device != weight.device:
        raise RuntimeError(
            f"weight: expected the device of input ({input.device}), got {weight.device}"
        )
    if input.dtype.is_complex:
        raise TypeError(f"input: complex dtypes are not supported, got {input.dtype}")
    if not isinstance(active, bool):
        raise TypeError(f"active: expected a bool, got {type(active).__name__} {active!r}")
    if _spec.is_exact_dtype(input.dtype):
        if active:
            raise TypeError(
                f"input: active=True interpolates and needs a floating dtype, got {input.dtype}; "
                "integer and quantized tensors take active=False"
            )
        if weight.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(
                f"weight: requires_grad, but input has dtype {input.dtype}, which has no "
                "gradient; shift integer or quantized tensors under torch.no_grad() or with "
                "a detached weight"
            )
        if input.is_quantized and input.dtype not in _spec.QUANTIZED_DTYPES:
            raise TypeError(
                f"input: expected a quantized dtype with one value per byte or word "
                f"{list(_spec.QUANTIZED_DTYPES)}, got {input.dtype} (sub-byte packed values "
                "cannot be shifted element by element)"
            )
        if input.is_quantized and input.qscheme() != torch.per_tensor_affine:
            raise ValueError(
                f"input: expected per-tensor affine quantization, got {input.qscheme()}"
            )
    return _spec.canonical_padding(padding), _spec.normalize_crop(crop, input.shape[2:])


def shift(
    input: Tensor,
    weight: Tensor,
    padding: str = "zeros",
    active: bool = False,
    crop: Optional[Sequence[Sequence[int]]] = None,
) -> Tensor:
    """Shift every channel of ``input`` by its own offset along each spatial dim.

    Channel ``c`` moves by ``weight[c, d]`` along spatial dim ``d``; a positive shift moves
    content towards higher indices (as ``torch.roll``). SSL (``active=False``) moves by the
    rounded shift and learns ``weight`` through the interpolation gradient (straight-through);
    Active Shift (``active=True``) interpolates linearly between the two nearest integers.

    Args:
        input: ``(N, C, L1)``, ``(N, C, L1, L2)`` or ``(N, C, L1, L2, L3)``; any floating
            dtype, or (SSL without gradient) an integer, bool or per-tensor quantized dtype.
        weight: floating ``(C, D)`` shifts, D = ``input.dim() - 2``, on ``input``'s device;
            or ``(k·C, D)`` for a channel multiplier k: output channel ``o`` reads input
            channel ``o // k`` (a depthwise conv with ``out_channels = k·C``).
        padding: where out-of-range reads come from: ``"zeros"``, ``"border"``,
            ``"periodic"``, ``"reflect"`` or ``"symmetric"`` (``nn.Conv`` aliases
            ``"replicate"`` and ``"circular"`` accepted).
        active: ``False`` for SSL (integer shift), ``True`` for Active Shift (interpolation).
        crop: ``None`` or D pairs ``(before, after)``: elements dropped from the start / end
            of each spatial dim of the output.

    Returns:
        ``(N, k·C, L1 - before1 - after1, ...)`` tensor of ``input``'s dtype, device and
        memory format (contiguous, or channels-last for channels-last inputs).

    Example:
        >>> import torch, torchshift2 as ts
        >>> x = torch.arange(5.0).reshape(1, 1, 5)
        >>> ts.shift(x, torch.tensor([[2.0]]))
        tensor([[[0., 0., 0., 1., 2.]]])
        >>> ts.shift(x, torch.tensor([[2.0]]), padding="periodic")
        tensor([[[3., 4., 0., 1., 2.]]])
        >>> ts.shift(x, torch.tensor([[0.5]]), active=True)
        tensor([[[0.0000, 0.5000, 1.5000, 2.5000, 3.5000]]])
    """
    return _shift(input, weight, padding, active, crop)


def shift_(input: Tensor, weight: Tensor, padding: str = "zeros") -> Tensor:
    """In-place SSL shift for inference: ``input`` becomes ``shift(input, weight, padding)``.

    Only the channels whose rounded shift is non-zero are read and written, so after
    sparse training (most shifts round to 0) this costs a small fraction of a copy. No
    crop, no active interpolation, no autograd.

    Args:
        input: ``(N, C, *L)`` dense tensor of any dtype :func:`shift` accepts, except
            quantized ones; modified in place.
        weight: ``(C, D)`` floating shifts.
        padding: as in :func:`shift`.

    Returns:
        ``input``.

    Raises:
        RuntimeError: when ``input`` or ``weight`` requires grad with grad mode on.

    Example:
        >>> import torch, torchshift2 as ts
        >>> x = torch.arange(8.0).reshape(1, 2, 4)
        >>> ts.shift_(x, torch.tensor([[0.0], [1.0]]), "periodic")
        tensor([[[0., 1., 2., 3.],
                 [7., 4., 5., 6.]]])
    """
    if _eager.try_shift_(input, weight, padding):
        return input
    if torch.is_grad_enabled() and (
        getattr(input, "requires_grad", False) or getattr(weight, "requires_grad", False)
    ):
        raise RuntimeError(
            "shift_: in-place shifting has no gradient; input and weight must not require "
            "grad (use torchshift2.shift for training, or run under torch.no_grad())"
        )
    padding, _ = check_shift_args(input, weight, padding, False, None)
    if weight.shape[0] != input.shape[1]:
        raise ValueError(
            f"weight: shifting in place keeps the channels, expected shape ({input.shape[1]}, "
            f"{input.dim() - 2}), got {tuple(weight.shape)} (a channel multiplier needs shift)")
    if input.is_quantized:
        raise TypeError("input: shift_ does not modify quantized tensors in place; use shift")
    ops.apply_shift_(input, weight, padding)
    return input


def _shift(input, weight, padding, active, crop, ndim: Optional[int] = None) -> Tensor:
    if crop is None:
        out = _eager.try_shift(input, weight, padding, active, -1 if ndim is None else ndim)
        if out is not None:
            return out
    padding, crop = check_shift_args(input, weight, padding, active, crop, ndim)
    return ops.apply_shift(input, weight, padding, active, _spec.flat_crop(crop))


def _shift_nd(ndim: int):
    def shift_nd(
        input: Tensor,
        weight: Tensor,
        padding: str = "zeros",
        active: bool = False,
        crop: Optional[Sequence[Sequence[int]]] = None,
    ) -> Tensor:
        return _shift(input, weight, padding, active, crop, ndim)

    shift_nd.__name__ = shift_nd.__qualname__ = f"shift{ndim}d"
    shift_nd.__doc__ = (
        f"Same as :func:`shift`, but ``input`` must be {ndim + 2}D "
        f"(``(N, C, {', '.join(f'L{d + 1}' for d in range(ndim))})``) and ``weight`` "
        f"``(C, {ndim})``."
    )
    return shift_nd


shift1d = _shift_nd(1)
shift2d = _shift_nd(2)
shift3d = _shift_nd(3)
