"""Quantized shift layers for eager-mode quantization (``torch.ao.quantization.convert``).

A shift moves values without arithmetic, so a quantized shift is exact: it moves the integer
representation of a per-tensor quantized tensor (``quint8`` / ``qint8``) by the *rounded*
shifts, keeps ``scale`` and ``zero_point``, and zeros padding fills with ``zero_point`` (the
real value 0). The output equals
``quantize_per_tensor(shift(x.dequantize(), round(weight)), scale, zero_point)`` bit for bit.

Conventions (decided here, relied on by :func:`torchshift2.replace_depthwise`):

- ``forward`` returns ``(output, None)``: the float layers return ``(output, loss)``, so code
  written for them (``out, loss = self.shift(x)``) runs unchanged after conversion; there is
  no sparsity loss at inference.
- Active float layers (``active_flag=True``) become the same rounded shift as SSL layers:
  interpolation would need requantization, and the point of a quantized shift is that it is
  exact and free of arithmetic. The quantized output therefore differs from the float active
  output by the rounding of the shifts (up to half an element); SSL layers match exactly.
- ``emulate_dw`` layers keep their crop / extension (exact: zeros padding extends with the
  zero point); their stride pooling averages the integer representations and rounds half to
  even (:func:`torchshift2.nn.pool_output`, the same integers as PyTorch's quantized
  ``avg_pool2d``), the one inexact step, as in any quantized pooling.
- The layers need no observer: ``prepare`` adds none (they are not in PyTorch's propagation
  list) and the output keeps the input's quantization parameters.

Use :data:`torchshift2.quant_mapping` (PyTorch's default static mapping plus the shift
layers) as ``convert``'s ``mapping``.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from . import nn as shift_nn

__all__ = ["QuantizedShift1d", "QuantizedShift2d", "QuantizedShift3d", "quant_mapping",
           "default_quant_mapping"]


class _QuantizedShiftNd(shift_nn._ShiftBase):
    _FLOAT_MODULE = shift_nn._ShiftNd

    def __init__(self, in_channels: int, padding: str = "zeros",
                 emulate_dw: Optional[dict] = None, *, out_channels: Optional[int] = None) -> None:
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 0:
            raise ValueError(f"in_channels: expected a non-negative int, got {in_channels!r}")
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self._init_plan(padding, emulate_dw)
        # Integer-valued shifts (floating: the op's weight dtype); a buffer, not a parameter.
        self.register_buffer("weight", torch.zeros(self.out_channels, self.ndim))

    def forward(self, input: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """Shift ``input`` (quantized, integer or floating) by the integer shifts ``weight``.

        Returns:
            ``(output, None)``: the shifted tensor, with ``input``'s dtype and quantization
            parameters, and no sparsity loss.
        """
        return self._shift(input, self.weight, False), None

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant: bool = False):
        """The quantized layer of a float :class:`~torchshift2.Shift1d` / 2d / 3d.

        Args:
            mod: a float shift layer of the same dimensionality.
            use_precomputed_fake_quant: accepted for ``convert``'s interface; unused (a shift
                has no weight to quantize: its shifts are rounded to integers).

        Returns:
            the quantized layer, with ``weight = round(mod.weight)`` (half to even).
        """
        if type(mod) is not cls._FLOAT_MODULE:
            raise TypeError(
                f"mod: expected a {cls._FLOAT_MODULE.__name__}, got {type(mod).__name__}"
            )
        qmod = cls(mod.in_channels, mod.padding, out_channels=mod.out_channels)
        qmod._copy_plan(mod)
        with torch.no_grad():
            qmod.weight = torch.round(mod.weight.detach()).clone()
        return qmod

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, "
        if self.out_channels != self.in_channels:
            text += f"out_channels={self.out_channels}, "
        text += f"padding={self.padding!r}"
        if self.emulate_dw is not None:
            text += f", emulate_dw={self.emulate_dw}"
        return text


class QuantizedShift1d(_QuantizedShiftNd):
    """Quantized :class:`~torchshift2.Shift1d`: exact integer shift of ``(N, C, L)`` tensors.

    Args:
        in_channels: C.
        padding: padding mode (zeros fills with the zero point).
        emulate_dw: as in :class:`~torchshift2.Shift1d`.
        out_channels: as in :class:`~torchshift2.Shift1d` (a channel multiplier).

    Shape:
        input ``(N, C, L)`` -> output ``(N, C, L)`` (or the emulated conv's size);
        ``weight`` is a ``(C, 1)`` buffer of integer-valued shifts.

    Example:
        >>> import torch, torchshift2 as ts
        >>> layer = ts.QuantizedShift1d.from_float(ts.Shift1d(1))
        >>> layer.weight.fill_(1.0)
        tensor([[1.]])
        >>> x = torch.quantize_per_tensor(torch.tensor([[[1., 2., 3.]]]), 0.5, 3, torch.quint8)
        >>> out, loss = layer(x)
        >>> out.int_repr(), out.q_zero_point(), loss
        (tensor([[[3, 5, 7]]], dtype=torch.uint8), 3, None)
    """

    ndim = 1
    _FLOAT_MODULE = shift_nn.Shift1d


class QuantizedShift2d(_QuantizedShiftNd):
    """Quantized :class:`~torchshift2.Shift2d`; arguments as :class:`QuantizedShift1d`.

    Shape:
        input ``(N, C, H, W)`` -> output ``(N, C, H, W)`` (or the emulated conv's size);
        ``weight`` is a ``(C, 2)`` buffer.

    Example:
        >>> import torch, torchshift2 as ts
        >>> layer = ts.QuantizedShift2d(3)
        >>> x = torch.quantize_per_tensor(torch.rand(1, 3, 4, 4), 0.1, 0, torch.quint8)
        >>> layer(x)[0].shape
        torch.Size([1, 3, 4, 4])
    """

    ndim = 2
    _FLOAT_MODULE = shift_nn.Shift2d


class QuantizedShift3d(_QuantizedShiftNd):
    """Quantized :class:`~torchshift2.Shift3d`; arguments as :class:`QuantizedShift1d`.

    Shape:
        input ``(N, C, D, H, W)`` -> output ``(N, C, D, H, W)`` (or the emulated conv's size);
        ``weight`` is a ``(C, 3)`` buffer.

    Example:
        >>> import torch, torchshift2 as ts
        >>> layer = ts.QuantizedShift3d(2)
        >>> x = torch.quantize_per_tensor(torch.rand(1, 2, 2, 3, 4), 0.1, 0, torch.qint8)
        >>> layer(x)[0].dtype
        torch.qint8
    """

    ndim = 3
    _FLOAT_MODULE = shift_nn.Shift3d


def default_quant_mapping() -> Dict[type, type]:
    """A new dict: PyTorch's default static quantization module mapping plus the shift layers.

    Returns:
        ``{float module class: quantized module class}``, the ``mapping`` argument of
        ``torch.ao.quantization.convert``.

    Example:
        >>> import torch, torchshift2 as ts
        >>> mapping = ts.quantized.default_quant_mapping()
        >>> mapping[ts.Shift2d] is ts.QuantizedShift2d and torch.nn.Conv2d in mapping
        True
    """
    from torch.ao.quantization.quantization_mappings import (
        get_default_static_quant_module_mappings,
    )

    mapping = dict(get_default_static_quant_module_mappings())
    mapping.update({
        shift_nn.Shift1d: QuantizedShift1d,
        shift_nn.Shift2d: QuantizedShift2d,
        shift_nn.Shift3d: QuantizedShift3d,
    })
    return mapping


quant_mapping: Dict[type, type] = default_quant_mapping()
"""The ``mapping`` for ``torch.ao.quantization.convert``: PyTorch's default static mapping
(convs, linears, ...) plus ``Shift1d/2d/3d`` -> ``QuantizedShift1d/2d/3d``.

``torch.ao.quantization.convert(prepared_model, mapping=ts.quant_mapping)``; build a fresh
copy with :func:`default_quant_mapping` to extend it without touching this one."""
