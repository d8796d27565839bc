"""Swap the depthwise convolutions of a model for shift layers of the same output shape."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from . import nn as shift_nn

__all__ = ["DepthwiseShift", "replace_depthwise", "sparsity_loss"]

_SHIFT_FOR_CONV = {nn.Conv1d: shift_nn.Shift1d, nn.Conv2d: shift_nn.Shift2d,
                   nn.Conv3d: shift_nn.Shift3d}


class DepthwiseShift(nn.Module):
    """A shift layer standing in for a depthwise conv: ``forward`` returns only the output.

    The sparsity loss of the wrapped layer is collected by :func:`sparsity_loss`.

    Args:
        shift: a :class:`~torchshift2.Shift1d` / 2d / 3d (or, after quantization, its
            quantized version; anything returning ``(output, loss)``).

    Shape:
        that of ``shift``'s output (the replaced conv's output shape).

    Example:
        >>> import torch, torchshift2 as ts
        >>> block = ts.DepthwiseShift(ts.Shift2d(4, emulate_dw=dict(kernel_size=3)))
        >>> block(torch.randn(1, 4, 6, 6)).shape
        torch.Size([1, 4, 4, 4])
    """

    def __init__(self, shift: nn.Module) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, input: Tensor) -> Tensor:
        """``shift(input)[0]``: the shifted tensor, without the sparsity loss."""
        return self.shift(input)[0]


def _is_depthwise(module: nn.Module) -> bool:
    return (
        type(module) in _SHIFT_FOR_CONV
        and module.groups == module.in_channels == module.out_channels
        and module.in_channels > 0
    )


def replace_depthwise(model: nn.Module, **shift_kwargs) -> nn.Module:
    """Replace every depthwise ``nn.Conv1d/2d/3d`` of ``model`` by an equal-shape shift layer.

    A conv is depthwise when ``groups == in_channels == out_channels``. Each one becomes a
    :class:`DepthwiseShift` around a ``Shift{n}d(in_channels, emulate_dw=...)`` built from the
    conv's own ``kernel_size``, ``stride``, ``padding``, ``dilation`` and ``padding_mode``, so
    the output shape is the conv's for every input size (see
    :func:`torchshift2.nn.depthwise_plan`). The conv's weights and bias are dropped (a shift
    has neither; in MobileNet-style blocks the depthwise conv is followed by a BatchNorm).
    The new layers are on the conv's device with its floating dtype. Subclasses of the conv
    classes (QAT, quantized, lazy modules) are left alone.

    Args:
        model: the model, modified in place.
        **shift_kwargs: arguments of the shift layers (``padding``, ``sparsity_term``,
            ``active_flag``, ``init_thumb_rule``). An explicit ``padding`` wins over the
            convs' ``padding_mode``; ``emulate_dw`` and ``in_channels`` are set here.

    Returns:
        ``model`` (a lone depthwise conv passed as ``model`` is returned replaced).

    Example:
        >>> import torch, torchshift2 as ts
        >>> block = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),
        ...                             torch.nn.Conv2d(8, 16, 1))
        >>> block = ts.replace_depthwise(block, sparsity_term=1e-4)
        >>> type(block[0]).__name__, block(torch.randn(1, 8, 9, 9)).shape
        ('DepthwiseShift', torch.Size([1, 16, 5, 5]))
        >>> ts.sparsity_loss(block).shape
        torch.Size([])
    """
    for key in ("emulate_dw", "in_channels"):
        if key in shift_kwargs:
            raise TypeError(f"replace_depthwise: {key} is derived from each conv, do not pass it")
    if _is_depthwise(model):
        return _shift_for(model, shift_kwargs)
    for name, child in list(model.named_children()):
        if _is_depthwise(child):
            setattr(model, name, _shift_for(child, shift_kwargs))
        else:
            replace_depthwise(child, **shift_kwargs)
    return model


def _shift_for(conv: nn.Module, shift_kwargs: dict) -> DepthwiseShift:
    emulate_dw = dict(
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
    )
    if "padding" not in shift_kwargs:
        emulate_dw["padding_mode"] = conv.padding_mode
    layer = _SHIFT_FOR_CONV[type(conv)](conv.in_channels, emulate_dw=emulate_dw, **shift_kwargs)
    weight = conv.weight
    dtype = weight.dtype if weight.dtype.is_floating_point else None
    return DepthwiseShift(layer.to(device=weight.device, dtype=dtype))


def sparsity_loss(model: nn.Module) -> Tensor:
    """Sum of the sparsity losses of all shift layers in ``model``.

    Args:
        model: any module; its :class:`~torchshift2.Shift1d` / 2d / 3d submodules (wrapped
            or not) contribute ``sparsity_term * weight.abs().sum()`` each.

    Returns:
        a 0-dim tensor (differentiable in the shifts); ``0.`` when no layer has a non-zero
        ``sparsity_term``.

    Example:
        >>> import torch, torchshift2 as ts
        >>> model = torch.nn.Sequential(ts.DepthwiseShift(ts.Shift1d(2, sparsity_term=0.5)))
        >>> with torch.no_grad():
        ...     _ = model[0].shift.weight.fill_(1.0)
        >>> ts.sparsity_loss(model)
        tensor(1., grad_fn=<MulBackward0>)
    """
    total: Optional[Tensor] = None
    for module in model.modules():
        if isinstance(module, shift_nn._ShiftNd):
            loss = module.sparsity_loss()
            if loss is not None:
                total = loss if total is None else total + loss
    return torch.zeros(()) if total is None else total
