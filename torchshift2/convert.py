"""Swap the depthwise convolutions of a model for shift layers of the same output shape."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from . import nn as shift_nn

__all__ = ["ConversionSummary", "DepthwiseShift", "replace_depthwise", "sparsity_loss"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_SHIFTS = (shift_nn.Shift1d, shift_nn.Shift2d, shift_nn.Shift3d)
_GROUPED = (shift_nn.GroupedShift1d, shift_nn.GroupedShift2d, shift_nn.GroupedShift3d)


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


@dataclasses.dataclass
class ConversionSummary:
    """What :func:`replace_depthwise` did, by module name (``""`` for the model itself).

    Attributes:
        replaced: name -> ``"<the conv> -> <the shift layer>"``.
        skipped: name -> why a depthwise-shaped conv (``groups == in_channels``) was kept.
    """

    replaced: Dict[str, str] = dataclasses.field(default_factory=dict)
    skipped: Dict[str, str] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"replaced {len(self.replaced)} depthwise conv(s), kept {len(self.skipped)}"]
        lines += [f"  replaced {name or '<model>'}: {what}" for name, what in self.replaced.items()]
        lines += [f"  kept {name or '<model>'}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


def _conv_class(module: nn.Module) -> Optional[type]:
    """The ``nn.ConvNd`` a module is (or derives from) if it is depthwise: ``groups ==
    in_channels``, with any channel multiplier; else ``None``. A conv with one input channel
    and several outputs (a grayscale stem) has that shape too but is a dense conv: not
    depthwise unless ``out_channels == 1``."""
    for conv in _CONVS:
        if isinstance(module, conv):
            groups, channels = module.groups, module.in_channels
            depthwise = channels > 0 and groups == channels
            return conv if depthwise and (groups > 1 or module.out_channels == 1) else None
    return None


def _output_lengths(conv: nn.Module, lengths) -> Optional[list]:
    """Spatial output sizes of ``conv`` (on the meta device, nothing computed) for an input
    of spatial size ``lengths``; ``None`` if its forward cannot run there."""
    probe = copy.deepcopy(conv).to("meta")
    x = torch.empty(1, conv.in_channels, *lengths, device="meta")
    try:
        with torch.no_grad():
            return list(probe(x).shape[2:])
    except Exception:  # a forward that needs real data or a device: not probed
        return None


def _padding_of_subclass(conv: nn.Module):
    """How a subclass of ``nn.ConvNd`` pads, read from what it outputs: ``"static"`` when its
    output size is ``nn.Conv``'s for its attributes, ``"same"`` for a padding decided at run
    time as TensorFlow's SAME (``ceil(L / stride)`` outputs: timm's ``Conv2dSame``), else
    ``None``."""
    ndim = len(conv.kernel_size)
    extent = [d * (k - 1) + 1 for k, d in zip(conv.kernel_size, conv.dilation)]
    static = same = True
    for offset in range(3):  # three sizes, so that parities and remainders differ
        lengths = [2 * e + 2 * s + offset for e, s in zip(extent, conv.stride)]
        out = _output_lengths(conv, lengths)
        if out is None:
            return None
        for d in range(ndim):
            padding = conv.padding if isinstance(conv.padding, str) else conv.padding[d]
            if padding == "same":
                expected = lengths[d]
            else:
                expected = (lengths[d] + 2 * padding - extent[d]) // conv.stride[d] + 1
            static &= out[d] == expected
            same &= out[d] == -(-lengths[d] // conv.stride[d])
    return "static" if static else "same" if same else None


def _plan_for(module: nn.Module):
    """``(emulate_dw, None)`` for a conv that converts, ``(None, reason)`` for one that stays."""
    conv_class = _conv_class(module)
    if conv_class is None:
        return None, None
    emulate_dw = dict(kernel_size=module.kernel_size, stride=module.stride,
                      padding=module.padding, dilation=module.dilation)
    if type(module) is conv_class:
        return emulate_dw, None
    name = type(module).__name__
    if hasattr(module, "weight_fake_quant"):
        return None, f"{name} is a quantization-aware (QAT) conv; convert before prepare_qat"
    padding = _padding_of_subclass(module)
    if padding is None:
        return None, (f"{name} is a subclass of nn.{conv_class.__name__} whose output size is "
                      "neither nn.Conv's nor TensorFlow's SAME: its forward is unknown")
    if padding == "same":
        emulate_dw["padding"] = "same"
    return emulate_dw, None


def replace_depthwise(model: nn.Module, *, grouped: bool = False, return_summary: bool = False,
                      **shift_kwargs):
    """Replace every depthwise ``nn.Conv1d/2d/3d`` of ``model`` by an equal-shape shift layer.

    A conv is depthwise when ``groups == in_channels`` (and, for a conv with one input channel,
    one output channel: otherwise it is a dense stem conv); ``out_channels = k · in_channels``
    (a channel multiplier) gives a shift layer with ``k · C`` output channels, output
    channel ``o`` reading input channel ``o // k`` as in the conv. Each one becomes a
    :class:`DepthwiseShift` around a ``Shift{n}d(in_channels, out_channels=...,
    emulate_dw=...)`` built from the conv's ``kernel_size``, ``stride``, ``padding``,
    ``dilation`` and ``padding_mode``, so the output shape is the conv's for every input size
    (see :func:`torchshift2.nn.depthwise_plan`). The conv's weights and bias are dropped (a
    shift has neither; in MobileNet-style blocks the depthwise conv is followed by a
    BatchNorm). The new layers are on the conv's device with its floating dtype.

    Subclasses of the conv classes are converted when their output size shows how they pad
    (probed on the meta device): as ``nn.Conv`` does, or TensorFlow's SAME decided at run
    time (timm's ``Conv2dSame``: ``ceil(L / stride)`` outputs, emulated with
    ``padding="same"``). Quantization-aware convs and subclasses that pad otherwise are
    kept; each kept one is listed, with the reason, in one warning and in the summary.

    Args:
        model: the model, modified in place.
        grouped: convert to :class:`~torchshift2.GroupedShift2d` (1d / 3d) instead: the
            fixed shifts of Grouped Shift, one group per tap of the conv's kernel (its
            ``kernel_size`` and ``dilation``), with the same ``emulate_dw`` output shape.
        return_summary: also return a :class:`ConversionSummary`.
        **shift_kwargs: arguments of the shift layers (``padding``, ``sparsity_term``,
            ``active_flag``, ``init_thumb_rule``; only ``padding`` with ``grouped=True``).
            An explicit ``padding`` wins over the convs' ``padding_mode``; ``emulate_dw``,
            ``in_channels`` and ``out_channels`` are set here.

    Returns:
        ``model`` (a lone depthwise conv passed as ``model`` is returned replaced), or
        ``(model, summary)`` with ``return_summary=True``.

    Example:
        >>> import torch, torchshift2 as ts
        >>> block = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),
        ...                             torch.nn.Conv2d(8, 16, 1))
        >>> block, summary = ts.replace_depthwise(block, sparsity_term=1e-4, return_summary=True)
        >>> type(block[0]).__name__, block(torch.randn(1, 8, 9, 9)).shape
        ('DepthwiseShift', torch.Size([1, 16, 5, 5]))
        >>> list(summary.replaced), summary.skipped
        (['0'], {})
        >>> ts.sparsity_loss(block).shape
        torch.Size([])
    """
    for key in ("emulate_dw", "in_channels", "out_channels", "kernel_size", "dilation"):
        if key in shift_kwargs:
            raise TypeError(f"replace_depthwise: {key} is derived from each conv, do not pass it")
    if grouped and set(shift_kwargs) - {"padding"}:
        raise TypeError(f"replace_depthwise: grouped=True takes only padding, got "
                        f"{sorted(shift_kwargs)} (Grouped Shift has no learnable shifts)")
    summary = ConversionSummary()
    model = _replace(model, "", dict(shift_kwargs, grouped=grouped), summary)
    if summary.skipped:
        warnings.warn(
            "replace_depthwise kept depthwise-shaped convs it cannot convert: "
            + "; ".join(f"{name or '<model>'} ({why})" for name, why in summary.skipped.items()),
            UserWarning, stacklevel=2)
    return (model, summary) if return_summary else model


def _replace(module: nn.Module, name: str, shift_kwargs: dict, summary: ConversionSummary):
    emulate_dw, reason = _plan_for(module)
    if reason is not None:
        summary.skipped[name] = reason
    if emulate_dw is not None:
        shift = _shift_for(module, emulate_dw, shift_kwargs)
        summary.replaced[name] = f"{module} -> {shift.shift}"
        return shift
    for child_name, child in list(module.named_children()):
        replaced = _replace(child, f"{name}.{child_name}" if name else child_name, shift_kwargs,
                            summary)
        if replaced is not child:
            setattr(module, child_name, replaced)
    return module


def _shift_for(conv: nn.Module, emulate_dw: dict, shift_kwargs: dict) -> DepthwiseShift:
    shift_kwargs = dict(shift_kwargs)
    grouped = shift_kwargs.pop("grouped")
    if "padding" not in shift_kwargs:
        emulate_dw = dict(emulate_dw, padding_mode=conv.padding_mode)
    weight = conv.weight
    factory = dict(out_channels=conv.out_channels, device=weight.device,
                   dtype=weight.dtype if weight.dtype.is_floating_point else None)
    ndim = len(conv.kernel_size)
    if grouped:
        layer = _GROUPED[ndim - 1](conv.in_channels, conv.kernel_size, conv.dilation,
                                   emulate_dw=emulate_dw, **factory, **shift_kwargs)
    else:
        layer = _SHIFTS[ndim - 1](conv.in_channels, emulate_dw=emulate_dw, **factory,
                                  **shift_kwargs)
    return DepthwiseShift(layer)


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
