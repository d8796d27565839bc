"""What the harness times: named shapes, cases, layouts, dtypes, weight distributions, and
the tensors and depthwise convolution of one measurement."""

from __future__ import annotations

import math
import re
from typing import Dict, Sequence, Tuple

import torch

#: Named benchmark shapes ``(N, C, *spatial)``.
SHAPES: Dict[str, Tuple[int, ...]] = {
    "1d": (64, 128, 4096),
    "2d_56": (32, 64, 56, 56),
    "2d_28": (8, 256, 28, 28),
    "2d_112": (128, 32, 112, 112),
    "3d": (4, 32, 16, 32, 32),
}
#: Tiny shapes for ``--quick`` (the CI smoke test).
QUICK_SHAPES: Dict[str, Tuple[int, ...]] = {
    "q1d": (2, 8, 64),
    "q2d": (2, 8, 12, 12),
    "q3d": (1, 4, 4, 6, 6),
}

#: Every case, in the order a row group lists them. ``clone`` and ``copy`` always run (they
#: are the denominators of the ratios).
CASES = (
    "clone",
    "copy",
    "ssl_fwd",
    "active_fwd",
    "ssl_fwdbwd",
    "active_fwdbwd",
    "ssl_inplace_sparse",
    "ref_ssl_fwd",
    "ref_ssl_compiled",
    "ref_active_fwd",
    "ref_active_compiled",
    "dwconv_fwd",
    "dwconv_fwdbwd",
)
#: Cases run when ``--cases`` is not given (the active reference is opt-in).
DEFAULT_CASES = tuple(c for c in CASES if c not in ("ref_active_fwd", "ref_active_compiled"))
#: Cases of ``--fuzz`` when ``--cases`` is not given: our op next to the floors and the conv.
FUZZ_CASES = ("clone", "copy", "ssl_fwd", "active_fwd", "ssl_fwdbwd", "active_fwdbwd",
              "dwconv_fwd", "dwconv_fwdbwd")
ALWAYS = ("clone", "copy")
CONV_CASES = ("dwconv_fwd", "dwconv_fwdbwd")
COMPILED_CASES = ("ref_ssl_compiled", "ref_active_compiled")
#: torchshift2's own kernels: the cases the worst-ratio summary and ``ratio_nchw`` are about.
OUR_CASES = ("ssl_fwd", "active_fwd", "ssl_fwdbwd", "active_fwdbwd", "ssl_inplace_sparse")
#: Cases that read no shift weights: timed once per (shape, layout, dtype), distribution "none".
WEIGHTLESS_CASES = ALWAYS + CONV_CASES
#: ``ssl_inplace_sparse`` is the in-place inference of a trained layer: its own distribution.
INPLACE_DISTRIBUTION = "sparse"
NO_DISTRIBUTION = "none"

#: Memory layouts. ``strided``: a view whose last spatial dim is cut out of a longer one (a
#: crop of a feature map): neither contiguous nor channels-last, not even dense.
LAYOUTS = ("contiguous", "channels_last", "strided")
LAYOUT_ALIASES = {
    "contiguous": "contiguous", "nchw": "contiguous", "ncl": "contiguous", "ncdhw": "contiguous",
    "channels_last": "channels_last", "cl": "channels_last", "nhwc": "channels_last",
    "channels_last_3d": "channels_last", "ndhwc": "channels_last",
    "strided": "strided", "crop": "strided",
}
STRIDED_PAD = 3
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}

#: Named weight distributions. ``uniform1.5`` is what the harness always drew (the cheapest
#: for a kernel: SSL moves by -2..2); ``sparse`` is what SSL training produces; ``wide``
#: reaches further than any tile border tuned on small shifts. ``uniform<A>`` for any A.
DISTRIBUTIONS = ("uniform1.5", "sparse", "wide")
SPARSE_MOVING = 0.1  # fraction of channels that move in ``sparse``
SPARSE_MAX_SHIFT = 3
WIDE_BOUND = 4.0
_UNIFORM = re.compile(r"uniform(\d+(?:\.\d+)?)$")
_DISTRIBUTION_ALIASES = {"uniform": "uniform1.5", "wide4": "wide", "ssl": "sparse",
                         "trained": "sparse"}

#: Tensor-sized transfers a case must make at least: a forward reads the input and writes
#: the output; forward+backward adds reading grad_output and input, writing grad_input.
FLOOR_TRANSFERS = {case: 5 if case.endswith("fwdbwd") else 2 for case in CASES}
FLOOR_TRANSFERS["ssl_inplace_sparse"] = 2 * SPARSE_MOVING


def canonical_distribution(name: str) -> str:
    """``name`` as the harness records it; ``ValueError`` naming the known ones if unknown."""
    key = name.strip().lower()
    key = _DISTRIBUTION_ALIASES.get(key, key)
    if key in DISTRIBUTIONS:
        return key
    match = _UNIFORM.match(key)
    if match and float(match.group(1)) > 0:
        return key
    raise ValueError(f"--distributions: unknown {name!r}; expected {', '.join(DISTRIBUTIONS)} "
                     "or uniform<A> (uniform in ±A, A > 0)")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def shape_text(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def make_input(shape: Sequence[int], dtype: torch.dtype, layout: str, device: torch.device,
               seed: int) -> torch.Tensor:
    """Standard-normal tensor of logical ``shape`` in memory ``layout``, filled in place.

    ``channels_last`` puts the channel dim innermost (``torch.channels_last`` for 4D,
    ``channels_last_3d`` for 5D, the ``(N, L, C)`` analogue for 3D tensors); ``strided``
    slices the last dim out of one :data:`STRIDED_PAD` elements longer.
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    if layout == "contiguous":
        x = torch.empty(shape, dtype=dtype, device=device)
    elif layout == "channels_last":
        order = [0] + list(range(2, len(shape))) + [1]
        inverse = [order.index(i) for i in range(len(shape))]
        x = torch.empty([shape[i] for i in order], dtype=dtype, device=device).permute(inverse)
    elif layout == "strided":
        longer = list(shape[:-1]) + [shape[-1] + STRIDED_PAD]
        x = torch.empty(longer, dtype=dtype, device=device)[..., :shape[-1]]
    else:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    return x.normal_(generator=gen)


def grad_layout(layout: str) -> str:
    """The layout of an op's output (so of its grad_output) for an input in ``layout``:
    dense layouts are kept, a non-dense input gives a contiguous output."""
    return "contiguous" if layout == "strided" else layout


def _sparse_weight(channels: int, ndim: int, gen: torch.Generator) -> torch.Tensor:
    weight = torch.zeros(channels, ndim)
    count = max(1, round(SPARSE_MOVING * channels))
    moving = torch.randperm(channels, generator=gen)[:count]
    sign = torch.randint(0, 2, (count, ndim), generator=gen) * 2 - 1
    size = torch.randint(1, SPARSE_MAX_SHIFT + 1, (count, ndim), generator=gen)
    weight[moving] = (size * sign).float()
    return weight


def make_weight(channels: int, ndim: int, device: torch.device, seed: int,
                distribution: str = "uniform1.5") -> torch.Tensor:
    """float32 ``(C, D)`` shifts drawn from ``distribution`` (see :data:`DISTRIBUTIONS`).

    ``uniform1.5`` draws exactly the weights of the harness before distributions existed,
    so its numbers stay comparable with old result files.
    """
    gen = torch.Generator()
    gen.manual_seed(10_000 + seed)
    distribution = canonical_distribution(distribution)
    if distribution == "sparse":
        weight = _sparse_weight(channels, ndim, gen)
    else:
        match = _UNIFORM.match(distribution)
        bound = WIDE_BOUND if distribution == "wide" else float(match.group(1))
        weight = torch.empty(channels, ndim).uniform_(-bound, bound, generator=gen)
    return weight.to(device)


def moving_channels(weight: torch.Tensor) -> int:
    """Channels whose rounded shift is non-zero along some dim (those an SSL moves)."""
    return int((torch.round(weight) != 0).any(dim=1).sum())


def estimate_bytes(shape: Sequence[int], dtype: torch.dtype, input_sets: int) -> int:
    """Rough peak: the input sets, copy_ target, grad_output, output and grad_input in
    ``dtype``, plus ~12 float32 temporaries per element for the reference / autograd."""
    numel = math.prod(shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    return numel * (itemsize * (input_sets + 4) + 4 * 12)


def depthwise_conv(channels: int, ndim: int, dtype: torch.dtype, layout: str,
                   device: torch.device) -> torch.nn.Module:
    """``nn.ConvNd(C, C, 3, padding=1, groups=C, bias=False)`` in ``layout`` (its weights in
    channels-last for a channels-last input, as a channels-last model would have them)."""
    conv_cls = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[ndim]
    conv = conv_cls(channels, channels, 3, padding=1, groups=channels, bias=False)
    conv = conv.to(device=device, dtype=dtype)
    if layout == "channels_last" and ndim in (2, 3):
        conv = conv.to(memory_format=torch.channels_last if ndim == 2 else torch.channels_last_3d)
    return conv
