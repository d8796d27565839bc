"""Learnable shift layers, constructor- and forward-compatible with the original ``torchshifts``.

A layer's forward is one pipeline shared with the quantized layers
(:mod:`torchshift2.quantized`): optionally extend the input (``emulate_dw`` with a padding
wider than the kernel), shift (with the ``emulate_dw`` crop), optionally average-pool
(``emulate_dw`` stride). It runs unchanged under ``torch.compile``, ``torch.export`` and
``torch.jit.trace``; under ``torch.jit.script`` the checked Python call is replaced by a direct
call of the registered op ``torch.ops.torchshift2.shift`` (whose kernels refuse malformed
arguments themselves), so scripted models can be saved and reloaded in any process that
imports :mod:`torchshift2`.
"""


import itertools
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as TF
from torch import Tensor, nn

from . import _spec, ops, reference
from . import functional as F

__all__ = ["GroupedShift1d", "GroupedShift2d", "GroupedShift3d", "Shift1d", "Shift2d", "Shift3d",
           "depthwise_plan", "extend_input", "grouped_shifts", "pool_output"]

#: Keys of ``emulate_dw`` that shape the emulation (the ``nn.Conv*d`` argument names).
EMULATE_DW_KEYS = ("kernel_size", "stride", "padding", "padding_mode", "dilation")
# Other ``nn.Conv*d`` constructor arguments, accepted (so that a conv's kwargs can be passed
# as they are) and ignored: they do not change the output shape of a depthwise conv.
_IGNORED_CONV_KEYS = ("in_channels", "out_channels", "groups", "bias", "device", "dtype")


def _per_dim(value, ndim: int, name: str, minimum: int) -> Tuple[int, ...]:
    values = (value,) * ndim if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        values = tuple(values)
    except TypeError:
        raise TypeError(
            f"emulate_dw[{name!r}]: expected an int or {ndim} ints, got {value!r}"
        ) from None
    if len(values) != ndim or any(
        isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in values
    ):
        raise ValueError(
            f"emulate_dw[{name!r}]: expected an int >= {minimum} or {ndim} of them, got {value!r}"
        )
    return values


def depthwise_plan(emulate_dw: dict, ndim: int) -> Dict[str, object]:
    """How a shift layer emulates the output shape of a depthwise ``nn.Conv{ndim}d``.

    Per spatial dim, with effective kernel ``e = dilation * (kernel_size - 1) + 1`` and
    ``t = 2 * padding - (e - 1)`` (the conv output before the stride is ``L + t``):

    - ``t < 0``: the shift crops ``-t`` elements (``-t // 2`` before, the rest after);
    - ``t > 0``: the input is first extended by ``t`` elements (``t // 2`` before, the rest
      after) with the layer's padding mode (SPEC §2, as ``np.pad`` would), then shifted;
    - ``stride > 1``: the shift output is average-pooled with kernel = stride = ``stride``
      and ``ceil_mode=True``, which gives ``ceil((L + t) / stride)`` =
      ``floor((L + t - 1) / stride) + 1`` elements, the conv's output size.

    ``padding="same"`` keeps the size before the stride, so the output has ``ceil(L / stride)``
    elements: ``nn.Conv``'s ``"same"`` (stride 1) and, with a stride, TensorFlow's ``"SAME"``
    (timm's ``Conv2dSame``, which pads at run time for any input size).
    ``padding="valid"`` is ``padding=0``.

    Args:
        emulate_dw: ``nn.Conv*d`` arguments: ``kernel_size`` (required), ``stride``,
            ``padding``, ``padding_mode``, ``dilation``; ``in_channels``, ``out_channels``,
            ``groups``, ``bias``, ``device`` and ``dtype`` are accepted and ignored.
        ndim: number of spatial dims D.

    Returns:
        dict with the normalized arguments (``kernel_size``, ``stride``, ``padding``,
        ``dilation`` as D-tuples or ``padding`` as ``"same"``, ``padding_mode`` or ``None``)
        and ``crop`` / ``extend`` (flat ``[before1, after1, ...]``), ``pool`` (D strides, or
        ``[]`` when all are 1) and ``init_shift`` (``(e - 1) / 2`` per dim).

    Example:
        >>> from torchshift2.nn import depthwise_plan
        >>> plan = depthwise_plan(dict(kernel_size=3, stride=2), 2)
        >>> plan["crop"], plan["extend"], plan["pool"], plan["init_shift"]
        ([1, 1, 1, 1], [0, 0, 0, 0], [2, 2], (1.0, 1.0))
    """
    if not isinstance(emulate_dw, dict):
        raise TypeError(
            f"emulate_dw: expected None or a dict of nn.Conv{ndim}d arguments, got "
            f"{type(emulate_dw).__name__}"
        )
    unknown = sorted(set(emulate_dw) - set(EMULATE_DW_KEYS) - set(_IGNORED_CONV_KEYS))
    if unknown:
        raise ValueError(
            f"emulate_dw: unknown keys {unknown}; expected some of {list(EMULATE_DW_KEYS)}"
        )
    if "kernel_size" not in emulate_dw:
        raise ValueError("emulate_dw: 'kernel_size' is required")
    kernel_size = _per_dim(emulate_dw["kernel_size"], ndim, "kernel_size", 1)
    stride = _per_dim(emulate_dw.get("stride", 1), ndim, "stride", 1)
    dilation = _per_dim(emulate_dw.get("dilation", 1), ndim, "dilation", 1)
    padding = emulate_dw.get("padding", 0)
    extent = [d * (k - 1) + 1 for k, d in zip(kernel_size, dilation)]
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0,) * ndim
        elif padding != "same":
            raise ValueError(
                f"emulate_dw['padding']: expected ints, 'same' or 'valid', got {padding!r}"
            )
    if padding == "same":
        growth = [0] * ndim
    else:
        padding = _per_dim(padding, ndim, "padding", 0)
        growth = [2 * p - (e - 1) for p, e in zip(padding, extent)]
    padding_mode = emulate_dw.get("padding_mode")
    if padding_mode is not None:
        _spec.canonical_padding(padding_mode)  # raises naming padding
    crop: List[int] = []
    extend: List[int] = []
    for t in growth:
        amount = abs(t)
        pair = [amount // 2, amount - amount // 2]
        crop += pair if t < 0 else [0, 0]
        extend += pair if t > 0 else [0, 0]
    return dict(
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        dilation=dilation,
        padding_mode=padding_mode,
        crop=crop,
        extend=extend,
        pool=list(stride) if any(s != 1 for s in stride) else [],
        init_shift=tuple((e - 1) / 2 for e in extent),
    )


def _source_positions(length: int, before: int, after: int, padding: str,
                      device: torch.device) -> Tensor:
    """SPEC §2 source indices of positions ``-before .. length + after - 1`` (not zeros)."""
    if not torch.jit.is_tracing() and length == 0:  # traced, a size is a tensor: no check
        raise ValueError("input: cannot extend a zero-length dim with a non-zeros padding")
    k = torch.arange(-before, length + after, device=device)
    return reference.source_index(k, length, padding)[0]


def extend_input(input: Tensor, extend: List[int], padding: str) -> Tensor:
    """Grow each spatial dim of ``input`` as the padding mode ``padding`` reads beyond it.

    Args:
        input: ``(N, C, L1, ..., LD)`` tensor (floating, integer or quantized).
        extend: flat ``[before1, after1, ..., beforeD, afterD]`` non-negative ints.
        padding: canonical padding name; ``"zeros"`` fills with 0 (the zero point of
            quantized tensors), the others read ``input`` at SPEC §2's source index, i.e.
            ``np.pad`` with mode constant / edge / wrap / reflect / symmetric.

    Returns:
        ``(N, C, L1 + before1 + after1, ...)`` tensor of ``input``'s dtype.

    Example:
        >>> import torch
        >>> from torchshift2.nn import extend_input
        >>> extend_input(torch.tensor([[[1., 2., 3.]]]), [2, 1], "symmetric")
        tensor([[[2., 1., 1., 2., 3., 3.]]])
    """
    if padding == "zeros":
        pads: List[int] = []
        for d in range(len(extend) // 2 - 1, -1, -1):  # F.pad lists the last dim first
            pads += [extend[2 * d], extend[2 * d + 1]]
        if sum(pads) == 0:
            return input
        return TF.pad(input, pads)
    for d in range(len(extend) // 2):
        before = extend[2 * d]
        after = extend[2 * d + 1]
        if before != 0 or after != 0:
            index = _source_positions(input.shape[2 + d], before, after, padding, input.device)
            input = input.index_select(2 + d, index)
    return input


def _block_mean(input: Tensor, dim: int, size: int) -> Tensor:
    """Means of consecutive blocks of ``size`` along ``dim``; a short last block averages
    the elements it has."""
    length = input.shape[dim]
    blocks = (length + size - 1) // size
    pads = [0, 0] * (input.dim() - 1 - dim) + [0, blocks * size - length]
    sums = TF.pad(input, pads).unflatten(dim, [blocks, size]).sum(dim + 1)
    counts = (length - torch.arange(blocks, device=input.device) * size).clamp(max=size)
    # (blocks, 1, ...) broadcasts from the right; a (1, 1, blocks, 1) view would have strides
    # Inductor cannot order when `blocks` may be 1 (dynamic shapes).
    return sums / counts.to(sums.dtype).reshape([blocks] + [1] * (input.dim() - 1 - dim))


def pool_output(output: Tensor, pool: List[int]) -> Tensor:
    """Average-pool with kernel = stride = ``pool`` and ``ceil_mode`` (``[]``: identity).

    Block means: along spatial dim d, output element j is the mean of input elements
    ``j * pool[d] .. min((j + 1) * pool[d], L_d) - 1``, so a last block that overhangs the
    end averages the elements it has (as ``avg_poolNd(..., ceil_mode=True)``, which
    however refuses some inputs smaller than the kernel). Quantized tensors average their
    integer representations and round half to even, keeping scale and zero point.

    Pad + reshape + sum rather than ``avg_poolNd``: ``torch.compile(dynamic=True)`` traces it
    without the size-parity guards of Inductor's pooling lowering (one recompilation per
    parity otherwise) and without its wrong ``ceil_mode`` backward (pytorch/pytorch#198119).

    Args:
        output: ``(N, C, L1, ..., LD)`` floating or quantized tensor.
        pool: D strides, or ``[]``.

    Returns:
        ``(N, C, ceil(L1 / pool[0]), ...)`` tensor of ``output``'s dtype.

    Example:
        >>> import torch
        >>> from torchshift2.nn import pool_output
        >>> pool_output(torch.tensor([[[1., 3., 5., 7., 9.]]]), [2])
        tensor([[[2., 6., 9.]]])
    """
    if len(pool) == 0:
        return output
    if output.is_quantized:
        values = output.int_repr()
        means = _block_means(values.to(torch.float32), pool)
        return torch._make_per_tensor_quantized_tensor(
            torch.round(means).to(values.dtype), output.q_scale(), output.q_zero_point()
        )
    if not output.is_floating_point():
        raise TypeError(
            "input: emulate_dw with stride > 1 averages, which needs a floating or quantized "
            "tensor"
        )
    return _block_means(output, pool)


def _block_means(output: Tensor, pool: List[int]) -> Tensor:
    for d in range(len(pool)):
        if pool[d] != 1:
            output = _block_mean(output, 2 + d, pool[d])
    return output


def _checked_out_channels(in_channels: int, out_channels: Optional[int]) -> int:
    """``out_channels`` (default ``in_channels``) after checking that it is ``k·in_channels``."""
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 0:
        raise ValueError(f"in_channels: expected a non-negative int, got {in_channels!r}")
    out_channels = in_channels if out_channels is None else out_channels
    if (isinstance(out_channels, bool) or not isinstance(out_channels, int)
            or (out_channels != in_channels if in_channels == 0
                else out_channels <= 0 or out_channels % in_channels)):
        raise ValueError(f"out_channels: expected a positive multiple of in_channels = "
                         f"{in_channels} (a channel multiplier), got {out_channels!r}")
    return out_channels


class _ShiftBase(nn.Module):
    """The forward pipeline shared by the float and the quantized layers (not public).

    Subclasses must not declare class annotations (TorchScript would then miss these).
    """

    ndim: int = 0
    padding: str
    _crop: List[int]
    _extend: List[int]
    _pool: List[int]

    def _init_plan(self, padding: str, emulate_dw: Optional[dict]) -> Optional[Dict[str, object]]:
        """Set ``padding`` and the emulation attributes; return the plan (or ``None``)."""
        plan = None if emulate_dw is None else depthwise_plan(emulate_dw, self.ndim)
        if plan is not None and plan["padding_mode"] is not None:
            padding = plan["padding_mode"]  # the conv's padding mode takes precedence
        self.padding = _spec.canonical_padding(padding)
        self.emulate_dw = None if plan is None else {k: plan[k] for k in EMULATE_DW_KEYS}
        self._crop = list(plan["crop"]) if plan else [0, 0] * self.ndim
        self._extend = list(plan["extend"]) if plan else [0, 0] * self.ndim
        self._pool = list(plan["pool"]) if plan else []
        return plan

    def _copy_plan(self, other: "_ShiftBase") -> None:
        self.padding = other.padding
        self.emulate_dw = None if other.emulate_dw is None else dict(other.emulate_dw)
        self._crop = list(other._crop)
        self._extend = list(other._extend)
        self._pool = list(other._pool)

    @torch.jit.unused
    def _checked_shift(self, input: Tensor, weight: Tensor, active: bool) -> Tensor:
        crop = _spec.pair_crop(self._crop) if any(self._crop) else None
        if crop is not None and not torch.jit.is_tracing():
            self._check_emulated_size(input)
        # The crop is checked against the unextended input: a dim is cropped or extended,
        # never both.
        padding, crop = F.check_shift_args(input, weight, self.padding, active, crop, self.ndim)
        input = extend_input(input, self._extend, padding)
        return ops.apply_shift(input, weight, padding, active, _spec.flat_crop(crop))

    @torch.jit.unused
    def _check_emulated_size(self, input) -> None:
        """An input too small for the emulated conv's kernel, named in its own terms (the
        crop it becomes is the layer's business, not the caller's)."""
        if not isinstance(input, Tensor) or input.dim() != self.ndim + 2:
            return  # check_shift_args reports it
        for d in range(self.ndim):
            needed = self._crop[2 * d] + self._crop[2 * d + 1]
            if input.shape[2 + d] < needed:
                dw = self.emulate_dw or {}
                raise ValueError(
                    f"input: spatial dim {d} has size {input.shape[2 + d]}, smaller than the "
                    f"emulated depthwise conv needs ({needed}: kernel_size "
                    f"{dw.get('kernel_size')}, dilation {dw.get('dilation')}, padding "
                    f"{dw.get('padding')}); got input of shape {tuple(input.shape)}"
                )

    def _shift(self, input: Tensor, weight: Tensor, active: bool) -> Tensor:
        if torch.jit.is_scripting():
            input = extend_input(input, self._extend, self.padding)
            output = torch.ops.torchshift2.shift(input, weight, self.padding, active, self._crop)
        else:
            output = self._checked_shift(input, weight, active)
        return pool_output(output, self._pool)


class _ShiftNd(_ShiftBase):
    # No class annotations here: TorchScript reads one class's ``__annotations__`` (this
    # class's would hide _ShiftBase's); the attributes below have inferable types.

    def __init__(
        self,
        in_channels: int,
        padding: str = "zeros",
        init_shift: Union[float, Sequence[float]] = 1,
        sparsity_term: float = 5e-4,
        active_flag: bool = False,
        emulate_dw: Optional[dict] = None,
        init_thumb_rule: int = 1,
        inplace: bool = False,
        *,
        out_channels: Optional[int] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        out_channels = _checked_out_channels(in_channels, out_channels)
        if init_thumb_rule not in (1, 2):
            raise ValueError(f"init_thumb_rule: expected 1 or 2, got {init_thumb_rule!r}")
        plan = self._init_plan(padding, emulate_dw)
        if not isinstance(inplace, bool):
            raise TypeError(f"inplace: expected a bool, got {type(inplace).__name__}")
        if inplace and active_flag:
            raise ValueError("inplace: True needs SSL (active_flag=False); an interpolating "
                             "shift cannot run in place, got active_flag=True")
        if inplace and out_channels != in_channels:
            raise ValueError(f"inplace: True keeps the channels, but out_channels = "
                             f"{out_channels} != in_channels = {in_channels}")
        if inplace and (any(self._crop) or any(self._extend) or self._pool):
            raise ValueError(
                f"inplace: True needs an output of the input's shape, but emulate_dw="
                f"{self.emulate_dw} crops, extends or pools it"
            )
        if plan is not None:
            init_shift = plan["init_shift"]
        if isinstance(init_shift, (int, float)):
            init_shift = (float(init_shift),) * self.ndim
        init_shift = tuple(float(v) for v in init_shift)
        if len(init_shift) != self.ndim or not all(math.isfinite(v) and v >= 0 for v in init_shift):
            raise ValueError(
                f"init_shift: expected a non-negative float or {self.ndim} of them, "
                f"got {init_shift!r}"
            )
        if (isinstance(sparsity_term, bool) or not isinstance(sparsity_term, (int, float))
                or not math.isfinite(sparsity_term) or sparsity_term < 0):
            raise ValueError(f"sparsity_term: expected a finite float >= 0, got {sparsity_term!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.init_shift = init_shift
        self.sparsity_term = float(sparsity_term)
        self.active_flag = bool(active_flag)
        self.init_thumb_rule = init_thumb_rule
        self.inplace = inplace
        self.weight = nn.Parameter(torch.empty(out_channels, self.ndim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the shifts: rule 1 uniform in ``[-init_shift, init_shift]``, rule 2 uniform in
        ``[0, init_shift]`` with a random sign per element."""
        with torch.no_grad():
            bound = torch.tensor(self.init_shift, dtype=self.weight.dtype,
                                 device=self.weight.device)
            magnitude = torch.rand_like(self.weight) * bound
            if self.init_thumb_rule == 1:
                self.weight.copy_(2 * magnitude - bound)
            else:
                sign = torch.randint_like(self.weight, 0, 2) * 2 - 1
                self.weight.copy_(magnitude * sign)

    def sparsity_loss(self) -> Optional[Tensor]:
        """``sparsity_term * weight.abs().sum()``, or ``None`` when ``sparsity_term == 0``."""
        if self.sparsity_term == 0.0:
            return None
        return self.sparsity_term * self.weight.abs().sum()

    def forward(self, input: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """Shift ``input`` of shape ``(N, C, *L)``.

        Returns:
            ``(output, loss)``: the shifted tensor (same shape, or the emulated depthwise
            conv's output shape with ``emulate_dw``) and :meth:`sparsity_loss`. With
            ``inplace=True`` the output is ``input`` itself, shifted in place.

        Raises:
            RuntimeError: ``inplace=True`` while autograd records (grad mode on and
                ``input`` or the weight requiring grad).
        """
        if self.inplace:
            return self._shift_inplace(input), self.sparsity_loss()
        return self._shift(input, self.weight, self.active_flag), self.sparsity_loss()

    def _shift_inplace(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            torch.ops.torchshift2.shift_(input, self.weight, self.padding)
            return input
        return self._checked_shift_inplace(input)

    @torch.jit.unused
    def _checked_shift_inplace(self, input: Tensor) -> Tensor:
        if torch.is_grad_enabled() and (input.requires_grad or self.weight.requires_grad):
            raise RuntimeError(
                "inplace: True is for inference (only the channels whose rounded shift is "
                "non-zero are touched, and nothing is recorded for autograd); run under "
                "torch.no_grad() / torch.inference_mode(), or set inplace=False to train"
            )
        return F.shift_(input, self.weight, self.padding)

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, "
        if self.out_channels != self.in_channels:
            text += f"out_channels={self.out_channels}, "
        text += (
            f"padding={self.padding!r}, active_flag={self.active_flag}, "
            f"sparsity_term={self.sparsity_term}, init_shift={self.init_shift}, "
            f"init_thumb_rule={self.init_thumb_rule}"
        )
        if self.inplace:
            text += ", inplace=True"
        if self.emulate_dw is not None:
            text += f", emulate_dw={self.emulate_dw}"
        return text


class Shift1d(_ShiftNd):
    """Learnable per-channel shift of ``(N, C, L)`` tensors.

    Args:
        in_channels: C.
        padding: padding mode (see :func:`torchshift2.shift`); the ``nn.Conv`` names
            ``"replicate"`` and ``"circular"`` are accepted.
        init_shift: bound of the initial shifts (a float or one per spatial dim); with
            ``emulate_dw`` it is replaced by ``(e - 1) / 2`` per dim, ``e`` the effective
            kernel size ``dilation * (kernel_size - 1) + 1``.
        sparsity_term: weight of the L1 penalty returned as the second output (0: ``None``).
        active_flag: ``True`` for Active Shift (interpolation), ``False`` for SSL.
        emulate_dw: ``None``, or the arguments of a depthwise ``nn.Conv1d/2d/3d``
            (``kernel_size`` required; ``stride``, ``padding`` (ints, ``"same"`` or
            ``"valid"``), ``padding_mode``, ``dilation``) whose output shape the layer
            reproduces: the shift output is cropped where the conv is narrower than its
            input, the input is first extended with the layer's padding mode where it is
            wider (``2 * padding > e - 1``), and a stride is an average pooling (kernel =
            stride, ``ceil_mode``). ``padding_mode``, when given, replaces ``padding``.
            Dilation enters through the effective kernel size only. See
            :func:`torchshift2.nn.depthwise_plan`.
        init_thumb_rule: 1 = uniform(-init_shift, init_shift); 2 = uniform(0, init_shift)
            with a random sign.
        inplace: inference only (SSL, output of the input's shape): shift ``input`` in place
            with :func:`torchshift2.shift_`, touching only the channels whose rounded shift
            is non-zero (after sparsity training most are), and return it. Raises while
            autograd records; the attribute can be switched on a trained layer.
        out_channels: ``k · in_channels`` for a channel multiplier k (default ``in_channels``):
            output channel ``o`` is input channel ``o // k`` shifted by ``weight[o]``, as a
            depthwise conv with ``out_channels = k · in_channels``; ``weight`` is
            ``(out_channels, D)``.
        device: where the weight is created (``nn.Module`` factory argument).
        dtype: the weight's floating dtype (``nn.Module`` factory argument).

    Shape:
        input ``(N, C, L)`` -> output ``(N, out_channels, L)`` (with ``emulate_dw``: the
        conv's ``L_out``); ``weight`` is ``(out_channels, 1)``.

    Example:
        >>> import torch, torchshift2 as ts
        >>> layer = ts.Shift1d(4)
        >>> out, loss = layer(torch.randn(2, 4, 10))
        >>> out.shape, loss.shape
        (torch.Size([2, 4, 10]), torch.Size([]))
        >>> ts.Shift1d(4, emulate_dw=dict(kernel_size=3, stride=2))(torch.randn(2, 4, 10))[0].shape
        torch.Size([2, 4, 4])
    """

    ndim = 1


class Shift2d(_ShiftNd):
    """Learnable per-channel shift of ``(N, C, H, W)`` tensors; arguments as :class:`Shift1d`.

    Shape:
        input ``(N, C, H, W)`` -> output ``(N, out_channels, H, W)`` (with ``emulate_dw``:
        the conv's ``(H_out, W_out)``); ``weight`` is ``(out_channels, 2)``.

    Example:
        >>> import torch, torchshift2 as ts
        >>> layer = ts.Shift2d(8, padding="reflect", sparsity_term=0)
        >>> out, loss = layer(torch.randn(1, 8, 5, 5))
        >>> out.shape, loss is None
        (torch.Size([1, 8, 5, 5]), True)
        >>> dw = dict(kernel_size=3, stride=2, padding=1)
        >>> ts.Shift2d(8, emulate_dw=dw)(torch.randn(1, 8, 7, 7))[0].shape
        torch.Size([1, 8, 4, 4])
    """

    ndim = 2


class Shift3d(_ShiftNd):
    """Learnable per-channel shift of ``(N, C, D, H, W)`` tensors; arguments as :class:`Shift1d`.

    Shape:
        input ``(N, C, D, H, W)`` -> output ``(N, out_channels, D, H, W)`` (with
        ``emulate_dw``: the conv's output size); ``weight`` is ``(out_channels, 3)``.

    Example:
        >>> import torch, torchshift2 as ts
        >>> layer = ts.Shift3d(2, active_flag=True)
        >>> layer(torch.randn(1, 2, 3, 4, 5))[0].shape
        torch.Size([1, 2, 3, 4, 5])
    """

    ndim = 3


def grouped_shifts(channels: int, kernel_size: Union[int, Sequence[int]] = 3,
                   dilation: Union[int, Sequence[int]] = 1, ndim: int = 2) -> Tensor:
    """The fixed shifts of Grouped Shift (Wu et al., arXiv 1711.08141).

    The channels are split into ``K = k_1 ... k_D`` groups, one per tap of a ``k_1 x ... x
    k_D`` kernel in raster order; every group has ``channels // K`` channels, and the
    remainder joins the centre tap's group (which does not move). A group moves as a
    depthwise conv whose kernel is one-hot at its tap: tap ``i`` along dim d shifts by
    ``dilation_d * ((k_d - 1) // 2 - i)`` (the centre tap of an even kernel is its lower
    middle, as ``nn.Conv``'s ``padding="same"`` places it).

    Args:
        channels: C.
        kernel_size: k, an int or one per spatial dim.
        dilation: spacing of the taps, an int or one per spatial dim.
        ndim: number of spatial dims D.

    Returns:
        ``(C, D)`` float32 tensor of integer shifts, groups in channel order.

    Example:
        >>> from torchshift2.nn import grouped_shifts
        >>> grouped_shifts(10, 3, ndim=1).flatten().tolist()
        [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0, -1.0, -1.0]
    """
    kernel = _per_dim(kernel_size, ndim, "kernel_size", 1)
    spacing = _per_dim(dilation, ndim, "dilation", 1)
    taps = list(itertools.product(*[range(k) for k in kernel]))
    centre = tuple((k - 1) // 2 for k in kernel)
    size, extra = divmod(channels, len(taps))
    rows: List[List[float]] = []
    for tap in taps:
        count = size + (extra if tap == centre else 0)
        rows += [[float(dil * (c - i)) for i, c, dil in zip(tap, centre, spacing)]] * count
    return torch.tensor(rows, dtype=torch.float32).reshape(channels, ndim)


class _GroupedShiftNd(_ShiftBase):
    # No class annotations here (see _ShiftNd).

    def __init__(
        self,
        in_channels: int,
        kernel_size: Union[int, Sequence[int]] = 3,
        dilation: Union[int, Sequence[int]] = 1,
        padding: str = "zeros",
        emulate_dw: Optional[dict] = None,
        *,
        out_channels: Optional[int] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        out_channels = _checked_out_channels(in_channels, out_channels)
        self._init_plan(padding, emulate_dw)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _per_dim(kernel_size, self.ndim, "kernel_size", 1)
        self.dilation = _per_dim(dilation, self.ndim, "dilation", 1)
        shifts = grouped_shifts(out_channels, self.kernel_size, self.dilation, self.ndim)
        # A buffer: fixed shifts, saved in the state_dict, never trained.
        self.register_buffer("weight", shifts.to(device=device, dtype=dtype or torch.float32))

    def forward(self, input: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """Shift ``input`` of shape ``(N, C, *L)`` by the fixed group shifts.

        Returns:
            ``(output, None)``: the shifted tensor (the emulated depthwise conv's output
            shape with ``emulate_dw``) and no sparsity loss. The backward computes
            ``grad_input`` only: the shifts are not trained.
        """
        return self._shift(input, self.weight, False), None

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, "
        if self.out_channels != self.in_channels:
            text += f"out_channels={self.out_channels}, "
        text += (f"kernel_size={self.kernel_size}, dilation={self.dilation}, "
                 f"padding={self.padding!r}")
        if self.emulate_dw is not None:
            text += f", emulate_dw={self.emulate_dw}"
        return text


class GroupedShift1d(_GroupedShiftNd):
    """Grouped Shift (Wu et al.) of ``(N, C, L)`` tensors: fixed shifts, no parameters.

    The channels move in ``k`` groups, one per tap of a size-``k`` kernel
    (:func:`grouped_shifts`); the shifts are a buffer (saved in the ``state_dict``, not
    trained), so training computes only ``grad_input``.

    Args:
        in_channels: C.
        kernel_size: k: the groups are the taps of a size-k kernel (an int, or one per
            spatial dim in 2D / 3D).
        dilation: spacing of the taps.
        padding: padding mode, as in :class:`Shift1d`.
        emulate_dw: as in :class:`Shift1d`: reproduce a depthwise conv's output shape.
        out_channels: ``k · in_channels`` for a channel multiplier (the groups are then
            taken over the output channels).
        device: where the shifts are created.
        dtype: the shifts' floating dtype (default float32).

    Shape:
        input ``(N, C, L)`` -> output ``(N, out_channels, L)`` (with ``emulate_dw``: the
        conv's ``L_out``); ``weight`` is an ``(out_channels, 1)`` buffer.

    Example:
        >>> import torch, torchshift2 as ts
        >>> layer = ts.GroupedShift1d(3, kernel_size=3)
        >>> layer.weight.flatten().tolist()
        [1.0, 0.0, -1.0]
        >>> out, loss = layer(torch.arange(12.).reshape(1, 3, 4))
        >>> out, loss
        (tensor([[[ 0.,  0.,  1.,  2.],
                 [ 4.,  5.,  6.,  7.],
                 [ 9., 10., 11.,  0.]]]), None)
    """

    ndim = 1


class GroupedShift2d(_GroupedShiftNd):
    """Grouped Shift (Wu et al.) of ``(N, C, H, W)`` tensors; arguments as
    :class:`GroupedShift1d`: ``k x k`` groups, the shifts of a ``k x k`` kernel's taps.

    Shape:
        input ``(N, C, H, W)`` -> output ``(N, out_channels, H, W)`` (with ``emulate_dw``:
        the conv's ``(H_out, W_out)``); ``weight`` is an ``(out_channels, 2)`` buffer.

    Example:
        >>> import torch, torchshift2 as ts
        >>> layer = ts.GroupedShift2d(18, kernel_size=3)
        >>> layer.weight[::2].tolist()  # 2 channels per group
        [[1.0, 1.0], [1.0, 0.0], [1.0, -1.0], [0.0, 1.0], [0.0, 0.0], [0.0, -1.0],
         [-1.0, 1.0], [-1.0, 0.0], [-1.0, -1.0]]
        >>> layer(torch.randn(2, 18, 5, 5))[0].shape
        torch.Size([2, 18, 5, 5])
    """

    ndim = 2


class GroupedShift3d(_GroupedShiftNd):
    """Grouped Shift (Wu et al.) of ``(N, C, D, H, W)`` tensors; arguments as
    :class:`GroupedShift1d`: ``k x k x k`` groups.

    Shape:
        input ``(N, C, D, H, W)`` -> output ``(N, out_channels, D, H, W)`` (with
        ``emulate_dw``: the conv's output size); ``weight`` is an ``(out_channels, 3)``
        buffer.

    Example:
        >>> import torch, torchshift2 as ts
        >>> ts.GroupedShift3d(30)(torch.randn(1, 30, 3, 4, 5))[0].shape
        torch.Size([1, 30, 3, 4, 5])
    """

    ndim = 3
