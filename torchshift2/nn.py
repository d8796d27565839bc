"""Learnable shift layers, constructor- and forward-compatible with the original ``torchshifts``."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from . import _spec
from . import functional as F

__all__ = ["Shift1d", "Shift2d", "Shift3d"]


class _ShiftNd(nn.Module):
    ndim: int = 0

    def __init__(
        self,
        in_channels: int,
        padding: str = "zeros",
        init_shift: Union[float, Sequence[float]] = 1,
        sparsity_term: float = 5e-4,
        active_flag: bool = False,
        emulate_dw: Optional[dict] = None,
        init_thumb_rule: int = 1,
    ) -> None:
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 0:
            raise ValueError(f"in_channels: expected a non-negative int, got {in_channels!r}")
        if emulate_dw is not None:
            raise NotImplementedError(
                "emulate_dw: depthwise-convolution emulation is not implemented yet; "
                "pass emulate_dw=None"
            )
        if init_thumb_rule not in (1, 2):
            raise ValueError(f"init_thumb_rule: expected 1 or 2, got {init_thumb_rule!r}")
        if isinstance(init_shift, (int, float)):
            init_shift = (float(init_shift),) * self.ndim
        init_shift = tuple(float(v) for v in init_shift)
        if len(init_shift) != self.ndim or not all(math.isfinite(v) and v >= 0 for v in init_shift):
            raise ValueError(
                f"init_shift: expected a non-negative float or {self.ndim} of them, got {init_shift!r}"
            )
        if not isinstance(sparsity_term, (int, float)) or sparsity_term < 0:
            raise ValueError(f"sparsity_term: expected a float >= 0, got {sparsity_term!r}")
        self.in_channels = in_channels
        self.padding = _spec.canonical_padding(padding)
        self.init_shift = init_shift
        self.sparsity_term = float(sparsity_term)
        self.active_flag = bool(active_flag)
        self.init_thumb_rule = init_thumb_rule
        self.weight = nn.Parameter(torch.empty(in_channels, self.ndim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the shifts: rule 1 uniform in ``[-init_shift, init_shift]``, rule 2 uniform in
        ``[0, init_shift]`` with a random sign per element."""
        with torch.no_grad():
            bound = torch.tensor(self.init_shift, dtype=self.weight.dtype)
            magnitude = torch.rand_like(self.weight) * bound
            if self.init_thumb_rule == 1:
                self.weight.copy_(2 * magnitude - bound)
            else:
                sign = torch.randint(0, 2, self.weight.shape, dtype=self.weight.dtype) * 2 - 1
                self.weight.copy_(magnitude * sign)

    def forward(self, input: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """Shift ``input`` of shape ``(N, C, *L)``.

        Returns:
            ``(output, loss)``: the shifted tensor (same shape) and the sparsity loss
            ``sparsity_term * weight.abs().sum()``, or ``None`` when ``sparsity_term == 0``.
        """
        output = F._shift(input, self.weight, self.padding, self.active_flag, None, self.ndim)
        loss = self.sparsity_term * self.weight.abs().sum() if self.sparsity_term else None
        return output, loss

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, padding={self.padding!r}, active_flag={self.active_flag}, "
            f"sparsity_term={self.sparsity_term}, init_shift={self.init_shift}, "
            f"init_thumb_rule={self.init_thumb_rule}"
        )


class Shift1d(_ShiftNd):
    """Learnable per-channel shift of ``(N, C, L)`` tensors.

    Args:
        in_channels: C.
        padding: padding mode (see :func:`torchshift2.shift`).
        init_shift: bound of the initial shifts (a float or one per spatial dim).
        sparsity_term: weight of the L1 penalty returned as the second output (0: ``None``).
        active_flag: ``True`` for Active Shift (interpolation), ``False`` for SSL.
        emulate_dw: not implemented yet; must be ``None``.
        init_thumb_rule: 1 = uniform(-init_shift, init_shift); 2 = uniform(0, init_shift)
            with a random sign.

    Shape:
        input ``(N, C, L)`` -> output ``(N, C, L)``; ``weight`` is ``(C, 1)``.

    Example:
        >>> import torch, torchshift2 as ts
        >>> layer = ts.Shift1d(4)
        >>> out, loss = layer(torch.randn(2, 4, 10))
        >>> out.shape, loss.shape
        (torch.Size([2, 4, 10]), torch.Size([]))
    """

    ndim = 1


class Shift2d(_ShiftNd):
    """Learnable per-channel shift of ``(N, C, H, W)`` tensors; arguments as :class:`Shift1d`.

    Shape:
        input ``(N, C, H, W)`` -> output ``(N, C, H, W)``; ``weight`` is ``(C, 2)``.

    Example:
        >>> import torch, torchshift2 as ts
        >>> layer = ts.Shift2d(8, padding="reflect", sparsity_term=0)
        >>> out, loss = layer(torch.randn(1, 8, 5, 5))
        >>> out.shape, loss is None
        (torch.Size([1, 8, 5, 5]), True)
    """

    ndim = 2


class Shift3d(_ShiftNd):
    """Learnable per-channel shift of ``(N, C, D, H, W)`` tensors; arguments as :class:`Shift1d`.

    Shape:
        input ``(N, C, D, H, W)`` -> output ``(N, C, D, H, W)``; ``weight`` is ``(C, 3)``.
    """

    ndim = 3
