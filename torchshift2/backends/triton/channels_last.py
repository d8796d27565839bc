"""Channels-last kernels: channels innermost in memory, the vector dimension.

A program owns sample ``n``, a block of ``BC`` channels (128 bytes of one position) and a
chunk of ``M`` tiles; a tile is a box of ``T0 x T1 x T2`` positions (``TP`` in all), so a
tile is ``[TP, BC]`` with whole cache lines per position. Shifts, their canonical forms and
the candidate set below are computed once per program.

Every channel has its own shift, so a warp reading one position of 32 channels would touch
as many source positions as there are distinct shifts. Two paths, chosen per program (a
uniform branch) and computing the same bits:

* **candidates** (the common case): the distinct source offsets ``delta = shift + corner``
  of the block fit a box of at most 63 cells and there are at most ``CMAX`` of them
  (counted with a 64-bit set, :func:`.common.popcount`). For each candidate the whole tile
  is read with aligned 16-byte vectors along the channels, from source positions that
  depend on the position only (the padding of SPEC §2 runs on the ``[TP, 1]`` position
  vector), and each channel keeps the candidates that are its own (a select, or a
  multiply-add with its corner weight). Loads are as wide as the stores; each candidate
  costs one pass of the tile through L1.
* **gather** (blocks whose shifts span far, or ``K > 1``): every lane computes its own
  source index per dim and loads it.

Both walk a channel's corners in the same (lexicographic) order with the same arithmetic,
so which path ran never shows in the results. The backward is one pass over the input
positions: per candidate (or corner) the adjoint terms of SPEC §4 (the reflection families
of :func:`.common.adj_term`) are gathered from grad_output once and serve grad_input and,
times the input, the per-lane grad_weight terms; their per-chunk sums are
order-independent (:func:`.common.exact_sum`).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import (adj_count, adj_term, channel_shift, exact_sum, lowest_bit, or_reduce,
                     popcount, source)
from .planar import aligned, corner_slope_rt, corner_weight_rt, kernel

#: Most candidate cells a program tracks: bits 0..62 of an int64.
BOX_LIMIT = tl.constexpr(63)


@triton.jit
def block_shifts(w_ptr, o, omask, swc, swd, L0, L1, L2, PAD: tl.constexpr,
                 NDIM: tl.constexpr, BIG: tl.constexpr, OPDT: tl.constexpr):
    """:func:`.common.channel_shift` of the channels ``o`` (``[1, BC]``) for the 3 padded
    dims."""
    s2, r2, f2, b2 = channel_shift(w_ptr, o, NDIM - 1, swc, swd, omask, L2, PAD, BIG, OPDT)
    if NDIM >= 2:
        s1, r1, f1, b1 = channel_shift(w_ptr, o, NDIM - 2, swc, swd, omask, L1, PAD, BIG, OPDT)
    else:
        s1 = s2 * 0
        r1 = r2 * 0
        f1 = tl.zeros_like(f2)
        b1 = b2 & False
    if NDIM >= 3:
        s0, r0, f0, b0 = channel_shift(w_ptr, o, 0, swc, swd, omask, L0, PAD, BIG, OPDT)
    else:
        s0 = s2 * 0
        r0 = r2 * 0
        f0 = tl.zeros_like(f2)
        b0 = b2 & False
    return s0, s1, s2, r0, r1, r2, f0, f1, f2, b0 | b1 | b2


@triton.jit
def candidates(s0, s1, s2, omask, A0: tl.constexpr, A1: tl.constexpr, A2: tl.constexpr):
    """The set of offsets ``s + a`` (``a`` a corner in ``{0, ..A_d-1}``) over the valid
    channels of the block: ``(lo0, lo1, lo2, n1, n2, bits, count, fits)`` with cell
    ``((d0 - lo0) * n1 + d1 - lo1) * n2 + d2 - lo2`` of the box; ``fits`` is False (and
    ``bits`` meaningless) when the box has more than ``BOX_LIMIT`` cells."""
    big = 1 << 30
    lo0 = tl.min(tl.where(omask, s0, big))
    lo1 = tl.min(tl.where(omask, s1, big))
    lo2 = tl.min(tl.where(omask, s2, big))
    n0 = tl.max(tl.where(omask, s0, -big)) - lo0 + A0
    n1 = tl.max(tl.where(omask, s1, -big)) - lo1 + A1
    n2 = tl.max(tl.where(omask, s2, -big)) - lo2 + A2
    fits = (n0 <= BOX_LIMIT) & (n1 <= BOX_LIMIT) & (n2 <= BOX_LIMIT)
    fits = fits & (n0.to(tl.int64) * n1 * n2 <= BOX_LIMIT)
    n1 = tl.where(fits, n1, 1)
    n2 = tl.where(fits, n2, 1)
    cell = ((s0 - lo0).to(tl.int64) * n1 + (s1 - lo1)) * n2 + (s2 - lo2)
    cell = tl.where(fits & omask, cell, 0)
    bits = cell * 0
    for a0 in tl.static_range(A0):
        for a1 in tl.static_range(A1):
            for a2 in tl.static_range(A2):
                one = tl.where(omask & fits, cell * 0 + 1, 0)
                bits = bits | (one << (cell + (a0 * n1 + a1) * n2 + a2))
    bits = or_reduce(bits, 1)
    bits = tl.max(bits, 0)  # [1, BC] -> scalar
    return lo0, lo1, lo2, n1, n2, bits, popcount(bits), fits


@triton.jit
def candidate_offsets(ci, lo0, lo1, lo2, n1, n2):
    """Box cell ``ci`` as the offsets ``(d0, d1, d2)``."""
    d2 = ci % n2
    rest = ci // n2
    d1 = rest % n1
    return lo0 + rest // n1, lo1 + d1, lo2 + d2


@triton.jit
def match(d0, d1, d2, s0, s1, s2, A0: tl.constexpr, A1: tl.constexpr, A2: tl.constexpr):
    """Per channel: which corner ``(a0, a1, a2) = d - s`` candidate ``d`` is, and whether it
    is one of the ``A`` corners at all."""
    a0 = d0 - s0
    a1 = d1 - s1
    a2 = d2 - s2
    hit = (a0 >= 0) & (a0 < A0) & (a1 >= 0) & (a1 < A1) & (a2 >= 0) & (a2 < A2)
    return a0, a1, a2, hit


@triton.jit
def box_positions(t, tg1, tg2, S0, S1, S2, NDIM: tl.constexpr, T0: tl.constexpr,
                  T1: tl.constexpr, T2: tl.constexpr):
    """Positions ``(p0, p1, p2)`` (each ``[TP, 1]``) of tile ``t`` of a ``tg0 x tg1 x tg2``
    grid of boxes, and which of them exist."""
    TP: tl.constexpr = T0 * T1 * T2
    t2 = t % tg2
    rest = t // tg2
    t1 = rest % tg1
    t0 = rest // tg1
    p = tl.arange(0, TP)[:, None]
    p2 = t2 * T2 + p % T2
    if NDIM < 2:
        p1 = tl.zeros_like(p)
    else:
        p1 = t1 * T1 + (p // T2) % T1
    if NDIM < 3:
        p0 = tl.zeros_like(p)
    else:
        p0 = t0 * T0 + p // (T1 * T2)
    return p0, p1, p2, (p0 < S0) & (p1 < S1) & (p2 < S2)


@triton.jit
def block_bad(w_ptr, c, cmask, K, swc, swd, NDIM: tl.constexpr):
    """Per channel ``c``: whether any of the weights of output channels ``c*K .. c*K+K-1``
    is NaN or infinite (reloaded where needed instead of kept live through the tile loop)."""
    bad = c < 0
    for m in range(K):
        for d in tl.static_range(NDIM):
            w = tl.load(w_ptr + (c * K + m) * swc + d * swd, mask=cmask, other=0.0)
            bad = bad | ((w - w) != 0.0)
    return bad & cmask


@triton.jit
def nan_pass(ptr, c, bad, chunk, M, tiles, tg1, tg2, S0, S1, S2, s0, s1, s2, sc, nan,
             NDIM: tl.constexpr, T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr):
    """Overwrite the channels ``bad`` of this program's tiles with ``nan`` (SPEC §5: a
    non-finite weight never gives a finite value). Runs only for blocks that hold one."""
    for t in range(chunk * M, tl.minimum(chunk * M + M, tiles)):
        p0, p1, p2, pmask = box_positions(t, tg1, tg2, S0, S1, S2, NDIM, T0, T1, T2)
        pos = p0.to(tl.int64) * s0 + p1.to(tl.int64) * s1 + p2.to(tl.int64) * s2
        value = tl.zeros([T0 * T1 * T2, 1], dtype=ptr.dtype.element_ty) + nan
        tl.store(ptr + pos + c * sc, value, mask=pmask & bad)


# --- forward ------------------------------------------------------------------------------

@triton.jit
def forward_tile(xb, xc, p0, p1, p2, lane, use_candidates, bits, lo0, lo1, lo2, n1, n2,
                 s0, s1, s2, f0, f1, f2, L0, L1, L2, B0, B1, B2, sx0, sx1, sx2, fill,
                 PAD: tl.constexpr, ACTIVE: tl.constexpr, OPDT: tl.constexpr, VX: tl.constexpr,
                 A0: tl.constexpr, A1: tl.constexpr, A2: tl.constexpr, TP: tl.constexpr,
                 BC: tl.constexpr):
    """One ``[TP, BC]`` output tile (SSL: ``s`` rounded, the read bits; active: ``s`` the
    floor, the interpolation in ``OPDT``), by candidates or by lane gathers."""
    acc = tl.zeros([TP, BC], dtype=OPDT)
    value = tl.zeros([TP, BC], dtype=xb.dtype.element_ty)
    if use_candidates:
        rest = bits
        while rest != 0:
            ci = lowest_bit(rest)
            rest = rest & (rest - 1)
            d0, d1, d2 = candidate_offsets(ci, lo0, lo1, lo2, n1, n2)
            i0, k0 = source(p0 + B0 - d0, L0, PAD)
            i1, k1 = source(p1 + B1 - d1, L1, PAD)
            i2, k2 = source(p2 + B2 - d2, L2, PAD)
            pos = i0 * sx0 + i1 * sx1 + i2 * sx2
            m = lane
            if PAD == 0:
                m = m & k0 & k1 & k2
            v = tl.load(xb + pos + xc, mask=m, other=fill)
            a0, a1, a2, hit = match(d0, d1, d2, s0, s1, s2, A0, A1, A2)
            if ACTIVE:
                w = corner_weight_rt(a0, a1, a2, f0, f1, f2)
                acc = tl.where(hit, acc + w * v.to(OPDT), acc)
            else:
                value = tl.where(hit, v, value)
    else:
        for corner in range(A0 * A1 * A2):  # a run-time loop: one copy of the gather
            a0 = corner // (A1 * A2)
            a1 = (corner // A2) % A1
            a2 = corner % A2
            i0, k0 = source(p0 + B0 - s0 - a0, L0, PAD)
            i1, k1 = source(p1 + B1 - s1 - a1, L1, PAD)
            i2, k2 = source(p2 + B2 - s2 - a2, L2, PAD)
            m = lane
            if PAD == 0:
                m = m & k0 & k1 & k2
            v = tl.load(xb + (i0 * sx0 + i1 * sx1 + i2 * sx2 + xc), mask=m, other=fill)
            if ACTIVE:
                acc = acc + corner_weight_rt(a0, a1, a2, f0, f1, f2) * v.to(OPDT)
            else:
                value = v
    if ACTIVE:
        value = acc
    return value


@kernel
def cl_forward(
    x_ptr, out_ptr, w_ptr,
    C, KC, K, L0, L1, L2, O0, O1, O2, B0, B1, B2,
    sxn, sxc, sx0, sx1, sx2, son, soc, so0, so1, so2, swc, swd,
    tg1, tg2, tiles, C_blocks, chunks, M, fill, nan_fill, CMAX,
    PAD: tl.constexpr, NDIM: tl.constexpr, ACTIVE: tl.constexpr, MULTI: tl.constexpr,
    BIG: tl.constexpr, OPDT: tl.constexpr, VX: tl.constexpr, VO: tl.constexpr,
    BC: tl.constexpr, T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr,
):
    """SPEC §3 for a chunk of tiles of one channel block of sample ``n`` (output channels
    ``o``, reading input channel ``o // K``)."""
    if NDIM < 3:  # dims the input does not have: constants, so their arithmetic folds
        L0 = 1
        O0 = 1
        B0 = 0
    if NDIM < 2:
        L1 = 1
        O1 = 1
        B1 = 0
    pid = tl.program_id(0)
    block = pid // chunks
    chunk = pid - block * chunks
    n = block // C_blocks
    cb = block - n * C_blocks
    o = cb * BC + tl.arange(0, BC)[None, :]
    KC = aligned(KC, VX if VX > VO else VO)
    omask = o < KC
    s0, s1, s2, r0, r1, r2, f0, f1, f2, bad = block_shifts(w_ptr, o, omask, swc, swd, L0, L1,
                                                           L2, PAD, NDIM, BIG, OPDT)
    if not ACTIVE:
        s0 = s0 + r0
        s1 = s1 + r1
        s2 = s2 + r2
    A0: tl.constexpr = 2 if ACTIVE and NDIM >= 3 else 1
    A1: tl.constexpr = 2 if ACTIVE and NDIM >= 2 else 1
    A2: tl.constexpr = 2 if ACTIVE else 1
    if MULTI:
        c = o // K
    else:
        c = o
    xb = x_ptr + n.to(tl.int64) * sxn
    ob = out_ptr + n.to(tl.int64) * son
    xc = c * sxc
    if BIG:
        xc = xc.to(tl.int64)
    sx0 = aligned(sx0, VX)
    sx1 = aligned(sx1, VX)
    sx2 = aligned(sx2, VX)
    so0 = aligned(so0, VO)
    so1 = aligned(so1, VO)
    so2 = aligned(so2, VO)
    TP: tl.constexpr = T0 * T1 * T2
    use_candidates = False
    lo0 = 0
    lo1 = 0
    lo2 = 0
    n1 = 1
    n2 = 1
    bits = 0
    if VX > 1 and not MULTI:
        lo0, lo1, lo2, n1, n2, bits, count, fits = candidates(s0, s1, s2, omask, A0, A1, A2)
        use_candidates = fits & (count <= CMAX)
    for t in range(chunk * M, tl.minimum(chunk * M + M, tiles)):
        p0, p1, p2, pmask = box_positions(t, tg1, tg2, O0, O1, O2, NDIM, T0, T1, T2)
        if BIG:
            p0 = p0.to(tl.int64)
            p1 = p1.to(tl.int64)
            p2 = p2.to(tl.int64)
        lane = pmask & omask
        value = forward_tile(xb, xc, p0, p1, p2, lane, use_candidates, bits, lo0, lo1, lo2, n1,
                             n2, s0, s1, s2, f0, f1, f2, L0, L1, L2, B0, B1, B2, sx0, sx1, sx2,
                             fill, PAD, ACTIVE, OPDT, VX, A0, A1, A2, TP, BC)
        pos = p0 * so0 + p1 * so1 + p2 * so2
        tl.store(ob + pos + o * soc, value.to(out_ptr.dtype.element_ty), mask=lane)
    bad = block_bad(w_ptr, o, omask, 1, swc, swd, NDIM)
    if tl.max(bad.to(tl.int32)) > 0:
        nan_pass(ob, o, bad, chunk, M, tiles, tg1, tg2, O0, O1, O2, so0, so1, so2, soc,
                 nan_fill, NDIM, T0, T1, T2)


# --- backward -----------------------------------------------------------------------------

@triton.jit
def _adjoint_sum(gb, goff, j0, j1, j2, u0, u1, u2, lane, L0, L1, L2, O0, O1, O2,
                 sg0, sg1, sg2, PAD: tl.constexpr, OPDT: tl.constexpr, VG: tl.constexpr,
                 SHAPE: tl.constexpr):
    """``sum_{o : P(o + u) = j} g[o]`` (SPEC §4's adjoint of one corner, per dim the
    reflection families of ``adj_term``), with ``u`` per position (candidates) or per lane
    (gather); ``goff`` adds the channel offset."""
    G = tl.zeros(SHAPE, dtype=OPDT)
    for t0 in range(adj_count(j0, u0, L0, O0, PAD)):
        o0, ok0 = adj_term(j0, u0, L0, O0, t0, PAD)
        for t1 in range(adj_count(j1, u1, L1, O1, PAD)):
            o1, ok1 = adj_term(j1, u1, L1, O1, t1, PAD)
            for t2 in range(adj_count(j2, u2, L2, O2, PAD)):
                o2, ok2 = adj_term(j2, u2, L2, O2, t2, PAD)
                pos = o0 * sg0 + o1 * sg1 + o2 * sg2
                G += tl.load(gb + pos + goff, mask=lane & ok0 & ok1 & ok2, other=0.0).to(OPDT)
    return G


@triton.jit
def _accumulate(G, x, gi, gw0, gw1, gw2, a0, a1, a2, hit, r0, r1, r2, f0, f1, f2,
                NDIM: tl.constexpr, ACTIVE: tl.constexpr, NEED_GI: tl.constexpr,
                NEED_GW: tl.constexpr):
    """Add corner ``(a0, a1, a2)``'s adjoint ``G`` to grad_input and the grad_weight terms,
    for the channels where ``hit``."""
    if NEED_GI:
        if ACTIVE:
            gi = tl.where(hit, gi + corner_weight_rt(a0, a1, a2, f0, f1, f2) * G, gi)
        elif NEED_GW:
            gi = tl.where(hit & (a0 == r0) & (a1 == r1) & (a2 == r2), gi + G, gi)
        else:
            gi = tl.where(hit, gi + G, gi)
    if NEED_GW:
        xg = x * G
        if NDIM >= 3:
            gw0 = tl.where(hit, gw0 + corner_slope_rt(a0, a1, a2, f0, f1, f2, 0) * xg, gw0)
        if NDIM >= 2:
            gw1 = tl.where(hit, gw1 + corner_slope_rt(a0, a1, a2, f0, f1, f2, 1) * xg, gw1)
        gw2 = tl.where(hit, gw2 + corner_slope_rt(a0, a1, a2, f0, f1, f2, 2) * xg, gw2)
    return gi, gw0, gw1, gw2


@triton.jit
def _cl_bwd_channels(gb, goff, x, gi, gw0, gw1, gw2, j0, j1, j2, lane, use_candidates, bits,
                     lo0, lo1, lo2, n1, n2, s0, s1, s2, r0, r1, r2, f0, f1, f2,
                     L0, L1, L2, O0, O1, O2, B0, B1, B2, sg0, sg1, sg2,
                     PAD: tl.constexpr, NDIM: tl.constexpr, ACTIVE: tl.constexpr,
                     NEED_GI: tl.constexpr, NEED_GW: tl.constexpr, OPDT: tl.constexpr,
                     VG: tl.constexpr, A0: tl.constexpr, A1: tl.constexpr, A2: tl.constexpr,
                     TP: tl.constexpr, BC: tl.constexpr):
    """One set of output channels' contribution to a tile (see :func:`cl_backward`)."""
    if use_candidates:
        rest = bits
        while rest != 0:
            ci = lowest_bit(rest)
            rest = rest & (rest - 1)
            d0, d1, d2 = candidate_offsets(ci, lo0, lo1, lo2, n1, n2)
            G = _adjoint_sum(gb, goff, j0, j1, j2, B0 - d0, B1 - d1, B2 - d2, lane, L0, L1,
                             L2, O0, O1, O2, sg0, sg1, sg2, PAD, OPDT, VG, [TP, BC])
            a0, a1, a2, hit = match(d0, d1, d2, s0, s1, s2, A0, A1, A2)
            gi, gw0, gw1, gw2 = _accumulate(G, x, gi, gw0, gw1, gw2, a0, a1, a2, hit, r0, r1,
                                            r2, f0, f1, f2, NDIM, ACTIVE, NEED_GI, NEED_GW)
    else:
        for corner in range(A0 * A1 * A2):  # a run-time loop: one copy of the gather
            a0 = corner // (A1 * A2)
            a1 = (corner // A2) % A1
            a2 = corner % A2
            G = _adjoint_sum(gb, goff, j0, j1, j2, B0 - s0 - a0, B1 - s1 - a1, B2 - s2 - a2,
                             lane, L0, L1, L2, O0, O1, O2, sg0, sg1, sg2, PAD, OPDT, 1, [TP, BC])
            gi, gw0, gw1, gw2 = _accumulate(G, x, gi, gw0, gw1, gw2, a0, a1, a2, lane | True,
                                            r0, r1, r2, f0, f1, f2, NDIM, ACTIVE, NEED_GI,
                                            NEED_GW)
    return gi, gw0, gw1, gw2


@kernel
def cl_backward(
    g_ptr, x_ptr, w_ptr, gi_ptr, part_ptr,
    C, K, L0, L1, L2, O0, O1, O2, B0, B1, B2,
    sgn, sgc, sg0, sg1, sg2, sxn, sxc, sx0, sx1, sx2, sin, sic, si0, si1, si2, swc, swd,
    tg1, tg2, tiles, C_blocks, chunks, M, CMAX,
    PAD: tl.constexpr, NDIM: tl.constexpr, ACTIVE: tl.constexpr, NEED_GI: tl.constexpr,
    NEED_GW: tl.constexpr, MULTI: tl.constexpr, BIG: tl.constexpr, OPDT: tl.constexpr,
    VG: tl.constexpr, VX: tl.constexpr, VI: tl.constexpr, BC: tl.constexpr,
    T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr, LOG2N: tl.constexpr,
):
    """SPEC §4 in one pass over a chunk of input tiles of channel block ``cb`` of sample
    ``n``: grad_input (summed over the ``K`` output channels ``c*K + m`` of input channel
    ``c``) and per-channel grad_weight partials ``part[row, o, d]``: ``row = n * chunks +
    chunk`` (``K == 1``) or ``n * tiles + tile`` (``MULTI``)."""
    if NDIM < 3:  # dims the input does not have: constants, so their arithmetic folds
        L0 = 1
        O0 = 1
        B0 = 0
    if NDIM < 2:
        L1 = 1
        O1 = 1
        B1 = 0
    pid = tl.program_id(0)
    block = pid // chunks
    chunk = pid - block * chunks
    n = block // C_blocks
    cb = block - n * C_blocks
    c = cb * BC + tl.arange(0, BC)[None, :]
    VQ: tl.constexpr = VX if VX > VI else VI
    C = aligned(C, VQ if VQ > VG else VG)
    cmask = c < C
    KC = K * C
    gb = g_ptr + n.to(tl.int64) * sgn
    xb = x_ptr + n.to(tl.int64) * sxn
    ib = gi_ptr + n.to(tl.int64) * sin
    sg0 = aligned(sg0, VG)
    sg1 = aligned(sg1, VG)
    sg2 = aligned(sg2, VG)
    sx0 = aligned(sx0, VX)
    sx1 = aligned(sx1, VX)
    sx2 = aligned(sx2, VX)
    si0 = aligned(si0, VI)
    si1 = aligned(si1, VI)
    si2 = aligned(si2, VI)
    TP: tl.constexpr = T0 * T1 * T2
    if NEED_GW or ACTIVE:
        A0: tl.constexpr = 2 if NDIM >= 3 else 1
        A1: tl.constexpr = 2 if NDIM >= 2 else 1
        A2: tl.constexpr = 2
    else:
        A0: tl.constexpr = 1
        A1: tl.constexpr = 1
        A2: tl.constexpr = 1
    zero = tl.zeros([TP, BC], dtype=OPDT)
    gw0 = zero
    gw1 = zero
    gw2 = zero
    use_candidates = False
    lo0 = 0
    lo1 = 0
    lo2 = 0
    n1 = 1
    n2 = 1
    bits = 0
    if not MULTI:
        s0, s1, s2, r0, r1, r2, f0, f1, f2, bad = block_shifts(w_ptr, c, cmask, swc, swd, L0,
                                                               L1, L2, PAD, NDIM, BIG, OPDT)
        if not (NEED_GW or ACTIVE):  # SSL grad_input alone: the rounded shift only
            s0 = s0 + r0
            s1 = s1 + r1
            s2 = s2 + r2
        if VG > 1:
            lo0, lo1, lo2, n1, n2, bits, count, fits = candidates(s0, s1, s2, cmask, A0, A1, A2)
            use_candidates = fits & (count <= CMAX)
        goff = c * sgc
        if BIG:
            goff = goff.to(tl.int64)
    for t in range(chunk * M, tl.minimum(chunk * M + M, tiles)):
        j0, j1, j2, pmask = box_positions(t, tg1, tg2, L0, L1, L2, NDIM, T0, T1, T2)
        if BIG:
            j0 = j0.to(tl.int64)
            j1 = j1.to(tl.int64)
            j2 = j2.to(tl.int64)
        lane = pmask & cmask
        if NEED_GW:
            pos = j0 * sx0 + j1 * sx1 + j2 * sx2
            x = tl.load(xb + pos + c * sxc, mask=lane, other=0.0).to(OPDT)
        else:
            x = zero
        gi = zero
        if MULTI:
            for m in range(K):
                o = c * K + m
                s0, s1, s2, r0, r1, r2, f0, f1, f2, bad = block_shifts(
                    w_ptr, o, cmask, swc, swd, L0, L1, L2, PAD, NDIM, BIG, OPDT)
                if not (NEED_GW or ACTIVE):
                    s0 = s0 + r0
                    s1 = s1 + r1
                    s2 = s2 + r2
                goff = o * sgc
                if BIG:
                    goff = goff.to(tl.int64)
                gi, tw0, tw1, tw2 = _cl_bwd_channels(
                    gb, goff, x, gi, zero, zero, zero, j0, j1, j2, lane, False, bits,
                    lo0, lo1, lo2, n1, n2, s0, s1, s2, r0, r1, r2, f0, f1, f2,
                    L0, L1, L2, O0, O1, O2, B0, B1, B2, sg0, sg1, sg2,
                    PAD, NDIM, ACTIVE, NEED_GI, NEED_GW, OPDT, 1, A0, A1, A2, TP, BC)
                if NEED_GW:
                    row = (n * tiles + t).to(tl.int64)
                    base = part_ptr + (row * KC + o) * NDIM
                    tl.store(base + (NDIM - 1), exact_sum(tw2, 0, LOG2N), mask=cmask)
                    if NDIM >= 2:
                        tl.store(base + (NDIM - 2), exact_sum(tw1, 0, LOG2N), mask=cmask)
                    if NDIM >= 3:
                        tl.store(base, exact_sum(tw0, 0, LOG2N), mask=cmask)
        else:
            gi, gw0, gw1, gw2 = _cl_bwd_channels(
                gb, goff, x, gi, gw0, gw1, gw2, j0, j1, j2, lane, use_candidates, bits,
                lo0, lo1, lo2, n1, n2, s0, s1, s2, r0, r1, r2, f0, f1, f2,
                L0, L1, L2, O0, O1, O2, B0, B1, B2, sg0, sg1, sg2,
                PAD, NDIM, ACTIVE, NEED_GI, NEED_GW, OPDT, VG, A0, A1, A2, TP, BC)
        if NEED_GI:
            pos = j0 * si0 + j1 * si1 + j2 * si2
            tl.store(ib + pos + c * sic, gi.to(gi_ptr.dtype.element_ty), mask=lane)
    if NEED_GI:
        bad = block_bad(w_ptr, c, cmask, K, swc, swd, NDIM)
        if tl.max(bad.to(tl.int32)) > 0:
            nan_pass(ib, c, bad, chunk, M, tiles, tg1, tg2, L0, L1, L2, si0, si1, si2, sic,
                     float("nan"), NDIM, T0, T1, T2)
    if NEED_GW and not MULTI:
        row = (n * chunks + chunk).to(tl.int64)
        base = part_ptr + (row * KC + c) * NDIM
        tl.store(base + (NDIM - 1), exact_sum(gw2, 0, LOG2N), mask=cmask)
        if NDIM >= 2:
            tl.store(base + (NDIM - 2), exact_sum(gw1, 0, LOG2N), mask=cmask)
        if NDIM >= 3:
            tl.store(base, exact_sum(gw0, 0, LOG2N), mask=cmask)
