"""``--fuzz N --seed S``: cases drawn at random, so that a kernel is judged on shapes,
layouts, dtypes and weight distributions nobody tuned it on.

The draw depends only on the seed and the option values (never on the machine), so
``--fuzz 24 --seed 0`` names the same 24 cases everywhere.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import List, Sequence, Tuple

import torch

from . import cases as C

#: Channel counts of real depthwise / shift networks (MobileNet, EfficientNet, ShiftNet);
#: a draw takes one of these most of the time, any count in [1, MAX_CHANNELS] otherwise, so
#: that odd counts (vector tails) come up too.
REALISTIC_CHANNELS = (3, 8, 16, 24, 32, 40, 48, 64, 72, 80, 96, 112, 120, 128, 144, 160, 192,
                      240, 256)
MAX_CHANNELS = 256
BATCHES = (1, 2, 4, 8, 16, 32, 64)
#: Feature-map sizes of a 224 network, drawn as often as any other size in the range.
LADDER = (7, 14, 28, 56, 112)
MIN_SIZE, MAX_SIZE = 7, 112
#: 1, 2, 3 spatial dims: 2D is what most shift networks are.
NDIM_WEIGHTS = (1, 2, 1)
REALISTIC_SHARE = 0.8
SQUARE_SHARE = 0.7
DEFAULT_MAX_MIB = 64.0
#: ``--quick --fuzz``: tiny draws for a smoke test.
QUICK = dict(batches=(1, 2, 3), channels=(1, 3, 4, 8, 16), sizes=(3, 12))


@dataclasses.dataclass(frozen=True)
class FuzzCase:
    name: str
    shape: Tuple[int, ...]
    layout: str
    dtype: torch.dtype
    distribution: str

    def label(self) -> str:
        return (f"{self.name} {C.shape_text(self.shape)} {self.layout} "
                f"{C.dtype_name(self.dtype)} {self.distribution}")


def _size(rng: random.Random) -> int:
    return rng.choice(LADDER) if rng.random() < 0.5 else rng.randint(MIN_SIZE, MAX_SIZE)


def _spatial(rng: random.Random, ndim: int, quick: bool) -> List[int]:
    if quick:
        return [rng.randint(*QUICK["sizes"]) for _ in range(ndim)]
    if ndim >= 2 and rng.random() < SQUARE_SHARE:
        side = _size(rng)
        return [_size(rng)] * (ndim - 2) + [side, side]
    return [_size(rng) for _ in range(ndim)]


def _channels(rng: random.Random, quick: bool) -> int:
    if quick:
        return rng.choice(QUICK["channels"])
    if rng.random() < REALISTIC_SHARE:
        return rng.choice(REALISTIC_CHANNELS)
    return rng.randint(1, MAX_CHANNELS)


def cap_shape(shape: Sequence[int], itemsize: int, max_bytes: float) -> Tuple[int, ...]:
    """Halve the batch, then the channels, then the largest spatial size (not below
    ``MIN_SIZE``) until one tensor of ``shape`` fits in ``max_bytes``."""
    shape = list(shape)
    while math.prod(shape) * itemsize > max_bytes:
        if shape[0] > 1:
            shape[0] //= 2
        elif shape[1] > 1:
            shape[1] //= 2
        else:
            largest = max(range(2, len(shape)), key=lambda i: shape[i])
            if shape[largest] <= MIN_SIZE:
                break
            shape[largest] = max(MIN_SIZE, shape[largest] // 2)
    return tuple(shape)


def draw_cases(count: int, seed: int, layouts: Sequence[str], dtypes: Sequence[torch.dtype],
               distributions: Sequence[str], quick: bool = False,
               max_bytes: float = DEFAULT_MAX_MIB * 2**20) -> List[FuzzCase]:
    """``count`` cases from ``seed``: batch, channels, 1-3 spatial dims of 7-112 (tiny with
    ``quick``), a layout, a dtype and a weight distribution each; one tensor at most
    ``max_bytes``."""
    if count < 1:
        raise ValueError(f"--fuzz: expected a number of cases >= 1, got {count}")
    rng = random.Random(seed)
    out = []
    for i in range(count):
        ndim = rng.choices((1, 2, 3), weights=NDIM_WEIGHTS)[0]
        batch = rng.choice(QUICK["batches"] if quick else BATCHES)
        shape = (batch, _channels(rng, quick), *_spatial(rng, ndim, quick))
        dtype = rng.choice(list(dtypes))
        shape = cap_shape(shape, torch.empty((), dtype=dtype).element_size(), max_bytes)
        out.append(FuzzCase(name=f"fuzz{i:02d}", shape=shape, layout=rng.choice(list(layouts)),
                            dtype=dtype, distribution=rng.choice(list(distributions))))
    return out
