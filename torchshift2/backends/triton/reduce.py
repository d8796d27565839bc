"""The grad_weight reduction: ``part[rows, KC, D]`` (float64) -> ``grad_weight[KC, D]``.

Each program owns ``BLOCK_K`` flattened ``(o, d)`` columns and walks the rows in order,
adding ``BLOCK_R`` rows per step lane by lane (a fixed order); the final sum over the
``BLOCK_R`` lanes is :func:`.common.exact_sum`, which no layout or warp count can change.
So grad_weight depends only on the partials, whose layout depends only on the shape.
"""

from __future__ import annotations

import triton.language as tl

from .common import exact_sum
from .planar import kernel


@kernel
def reduce_partials(
    part_ptr, w_ptr, gw_ptr, rows, KC, swc, swd, sgc, sgd,
    NDIM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, LOG2R: tl.constexpr,
):
    """``grad_weight[o, d] = sum_r part[r, o, d]``; NaN for every ``d`` of an output
    channel whose weight row holds a non-finite value (SPEC §5 on CUDA)."""
    k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)[None, :]
    kmask = k < KC * NDIM
    acc = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float64)
    for r0 in range(0, rows, BLOCK_R):
        r = (r0 + tl.arange(0, BLOCK_R)).to(tl.int64)[:, None]
        acc += tl.load(part_ptr + (r * (KC * NDIM) + k), mask=(r < rows) & kmask, other=0.0)
    total = exact_sum(acc, 0, LOG2R)
    o = k // NDIM
    d = k - o * NDIM
    bad = k < 0
    for e in tl.static_range(NDIM):
        w = tl.load(w_ptr + (o * swc + e * swd), mask=kmask, other=0.0).to(tl.float64)
        bad = bad | ((w - w) != 0.0)
    total = tl.where(bad, float("nan"), total)
    tl.store(gw_ptr + (o * sgc + d * sgd), total.to(gw_ptr.dtype.element_ty), mask=kmask)
