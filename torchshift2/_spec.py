"""The vocabulary of SPEC.md shared by every layer of the package.

Padding names and their aliases, the crop rule and the output shape live here and only
here; the functional API, the ops, the backends and the layers import them.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

#: Padding modes of SPEC §2, in the order of their integer codes (shared with the C++ and
#: Triton kernels, which receive ``PADDINGS.index(name)``).
PADDINGS: Tuple[str, ...] = ("zeros", "border", "periodic", "reflect", "symmetric")

#: Quantized dtypes the shift accepts (one stored integer per element).
QUANTIZED_DTYPES = (torch.quint8, torch.qint8, torch.qint32)

#: ``torch.nn.Conv*d(padding_mode=...)`` names accepted as aliases.
PADDING_ALIASES = {"replicate": "border", "circular": "periodic"}

#: Every accepted padding name (SPEC name or alias) -> (SPEC name, integer code).
PADDING_CODES = {name: (name, code) for code, name in enumerate(PADDINGS)}
PADDING_CODES.update({alias: PADDING_CODES[name] for alias, name in PADDING_ALIASES.items()})

Crop = Tuple[Tuple[int, int], ...]


def canonical_padding(padding: str) -> str:
    """Return the SPEC name of ``padding``, resolving the ``nn.Conv`` aliases."""
    if not isinstance(padding, str):
        raise TypeError(
            f"padding: expected a string, one of {list(PADDINGS) + list(PADDING_ALIASES)}, "
            f"got {type(padding).__name__} {padding!r}"
        )
    name = PADDING_ALIASES.get(padding, padding)
    if name not in PADDINGS:
        raise ValueError(
            f"padding: expected one of {list(PADDINGS)} (or the aliases "
            f"{list(PADDING_ALIASES)}), got {padding!r}"
        )
    return name


def padding_code(padding: str) -> int:
    """Integer code of a padding name (or alias), as the kernels know it.

    Raises ``ValueError`` / ``TypeError`` naming ``padding`` for anything else (the ops reach
    here with whatever a direct ``torch.ops.torchshift2.shift`` call passed)."""
    code = PADDING_CODES.get(padding) if isinstance(padding, str) else None
    return PADDING_CODES[canonical_padding(padding)][1] if code is None else code[1]


def normalize_crop(crop: Optional[Sequence[Sequence[int]]], spatial: Sequence[int]) -> Crop:
    """Check ``crop`` against the spatial sizes and return it as D ``(before, after)`` pairs.

    ``None`` means no crop. Raises ``TypeError``/``ValueError`` naming ``crop``.
    """
    ndim = len(spatial)
    if crop is None:
        return tuple((0, 0) for _ in range(ndim))
    try:
        pairs = [tuple(pair) for pair in crop]
    except TypeError:
        raise TypeError(
            f"crop: expected None or {ndim} (before, after) pairs of ints, got {crop!r}"
        ) from None
    if len(pairs) != ndim or any(len(pair) != 2 for pair in pairs):
        raise ValueError(
            f"crop: expected {ndim} (before, after) pairs (one per spatial dim), got {crop!r}"
        )
    result = []
    for d, ((before, after), length) in enumerate(zip(pairs, spatial)):
        for value in (before, after):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"crop: expected ints, got {value!r} in dim {d} of {crop!r}")
            if value < 0:
                raise ValueError(f"crop: expected non-negative values, got {value} in dim {d}")
        if before + after > length:
            raise ValueError(
                f"crop: dim {d} has size {length}, cannot drop {before} + {after} elements"
            )
        result.append((before, after))
    return tuple(result)


def flat_crop(crop: Crop) -> list:
    """``((b1, a1), (b2, a2))`` -> ``[b1, a1, b2, a2]``: the op schemas take ``int[]``."""
    return [int(v) for pair in crop for v in pair]


def pair_crop(flat: Sequence[int]) -> Crop:
    """Inverse of :func:`flat_crop`."""
    return tuple((int(flat[2 * d]), int(flat[2 * d + 1])) for d in range(len(flat) // 2))


def output_shape(input_shape: Sequence[int], crop: Crop, channels: Optional[int] = None) -> list:
    """Shape of the shift output: ``channels`` channels (default: the input's; ``k·C`` with a
    channel multiplier), spatial dim d shrunk by ``before_d + after_d``."""
    channels = input_shape[1] if channels is None else channels
    return [input_shape[0], channels] + [
        length - before - after for length, (before, after) in zip(input_shape[2:], crop)
    ]


def multiplier(input_channels: int, weight_rows: int) -> int:
    """The channel multiplier k of a ``(k·C, D)`` weight for ``C`` input channels (1 when
    ``C == 0``); output channel ``o`` reads input channel ``o // k`` (SPEC §1).

    Raises ``ValueError`` naming ``weight`` when the rows are not ``k·C`` for an integer
    ``k >= 1`` (the ops reach here with whatever a direct op call passed)."""
    if input_channels == 0 and weight_rows == 0:
        return 1
    if input_channels <= 0 or weight_rows <= 0 or weight_rows % input_channels:
        raise ValueError(f"weight: expected k·C rows for C = {input_channels} input channels "
                         f"and an integer k >= 1, got {weight_rows} rows")
    return weight_rows // input_channels


def is_channels_last(tensor: torch.Tensor) -> bool:
    """True when the channel dim is innermost in memory (channels_last / _3d, or the 1D analogue).

    A tensor that is also plain contiguous counts as contiguous; this rule decides the memory
    format of every output the ops allocate, for the real kernels and the fake ones alike.
    """
    if tensor.is_contiguous():
        return False
    order = [0] + list(range(2, tensor.dim())) + [1]
    return tensor.permute(order).is_contiguous()


def empty_like_layout(like: torch.Tensor, shape: Sequence[int], dtype=None) -> torch.Tensor:
    """Uninitialised tensor of ``shape`` with the memory layout rule of :func:`is_channels_last`."""
    dtype = like.dtype if dtype is None else dtype
    if not is_channels_last(like):
        return torch.empty(shape, dtype=dtype, device=like.device)
    order = [0] + list(range(2, len(shape))) + [1]
    physical = [shape[i] for i in order]
    inverse = [order.index(i) for i in range(len(shape))]
    return torch.empty(physical, dtype=dtype, device=like.device).permute(inverse)


def empty_output(input: torch.Tensor, crop: Sequence[int],
                 weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Uninitialised shift output for ``input`` and flat ``crop`` (``weight.shape[0]``
    channels when ``weight`` is given), in the layout rule's format."""
    channels = None if weight is None else weight.shape[0]
    return empty_like_layout(input, output_shape(input.shape, pair_crop(crop), channels))


def not_computed(like: torch.Tensor) -> torch.Tensor:
    """What ``torchshift2::shift_backward`` returns for a gradient left out of its
    ``output_mask``: an empty tensor of shape ``(0,)`` (a custom op cannot return ``None``
    for a ``Tensor`` output)."""
    return torch.empty((0,), dtype=like.dtype, device=like.device)


def empty_grads(input: torch.Tensor, weight: torch.Tensor,
                output_mask: Sequence[bool] = (True, True)
                ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Uninitialised ``(grad_input, grad_weight)``: input's layout rule, weight contiguous;
    ``None`` for a gradient not in ``output_mask``."""
    grad_input = empty_like_layout(input, input.shape) if output_mask[0] else None
    grad_weight = (torch.empty_like(weight, memory_format=torch.contiguous_format)
                   if output_mask[1] else None)
    return grad_input, grad_weight


def check_finite(weight: torch.Tensor) -> None:
    """SPEC §5: non-finite shifts are refused on CPU (on CUDA the kernels treat them as 0,
    since checking would synchronise the device)."""
    if weight.device.type == "cpu" and weight.numel() and not bool(torch.isfinite(weight).all()):
        raise ValueError("weight: expected finite values on CPU, got NaN or infinity")


def is_exact_dtype(dtype: torch.dtype) -> bool:
    """Dtypes that only SSL without gradient may shift (integers, bool, quantized)."""
    return not (dtype.is_floating_point or dtype.is_complex)
