"""Planar kernels: contiguous (NCHW-like) tensors, one ``(n, channel)`` plane per program.

A program owns one plane and a *chunk* of ``M`` consecutive tiles of it, so the weight
load and the shift arithmetic run once per chunk, not once per tile. A tile is
``[BR, BW]``: ``BR`` rows (the flattened leading spatial positions ``(p0, p1)``) by ``BW``
columns (the innermost dim, contiguous in memory). The shift of a plane is a scalar, so all
padding arithmetic of SPEC §2 is separable: it runs on the ``[BR, 1]`` row vector and the
``[1, BW]`` column vector, never per element.

Columns are read at full width: a shifted row segment is misaligned by ``u mod V``
elements, so the kernels load the two aligned ``V``-element vectors around every lane's
source (128-bit loads when ``V * itemsize == 16``) and pick the shifted lanes between
registers (:func:`.common.funnel`); stores are aligned vectors too. ``V*`` are 1 when a
tensor's strides or row length are not multiples of ``V`` (the planner decides), and then
the same code does scalar gathers. Lanes that read through the padding of the column dim
are fixed up by a short loop over those few output columns (``padded_count <= CPAD``);
larger shifts take the general per-lane path.

The backward is one pass over the *input* plane: for every corner the adjoint gathers the
grad_output terms that read each input element (rows: the reflection families of
:func:`.common.adj_term`, only on tiles that touch an edge; columns: the funnelled direct
term plus the padded outputs), which serve grad_input and, multiplied by the input, the
weight derivative. Per-chunk grad_weight partials are order-independent sums
(:func:`.common.exact_sum`) of per-lane accumulators, so they do not depend on the number
of warps or on how chunks map to programs.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import (adj_count, adj_term, channel_shift, exact_sum, funnel, padded_count,
                     pick, source, true_mod)

#: Arguments that are sizes (never specialised: a size of 1 or a multiple of 16 would be
#: baked into the binary); strides keep Triton's ``== 1`` / multiple-of-16 specialisation.
SIZES = ("C", "KC", "K", "L0", "L1", "L2", "O0", "O1", "O2", "B0", "B1", "B2", "R", "npos",
         "tiles_q", "tiles", "chunks", "M", "fill", "nan_fill", "C_blocks", "tg1", "tg2",
         "rows", "planes", "slots")


def kernel(fn):
    names = fn.__code__.co_varnames[: fn.__code__.co_argcount]
    return triton.jit(fn, do_not_specialize=[name for name in names if name in SIZES])


@triton.jit
def aligned(x, V: tl.constexpr):
    """``x`` (a multiple of ``V``, checked by the planner) as an expression the compiler
    knows is one, so that vector accesses are proven aligned."""
    return (x // V) * V


@triton.jit
def plane_shifts(w_ptr, o, swc, swd, L0, L1, L2, PAD: tl.constexpr, NDIM: tl.constexpr,
                 BIG: tl.constexpr, OPDT: tl.constexpr):
    """``channel_shift`` of output channel ``o`` for the 3 padded dims (front dims that the
    input does not have get shift 0)."""
    s2, r2, f2, b2 = channel_shift(w_ptr, o, NDIM - 1, swc, swd, True, L2, PAD, BIG, OPDT)
    if NDIM >= 2:
        s1, r1, f1, b1 = channel_shift(w_ptr, o, NDIM - 2, swc, swd, True, L1, PAD, BIG, OPDT)
    else:
        s1 = s2 * 0
        r1 = r2 * 0
        f1 = tl.zeros_like(f2)
        b1 = b2 & False
    if NDIM >= 3:
        s0, r0, f0, b0 = channel_shift(w_ptr, o, 0, swc, swd, True, L0, PAD, BIG, OPDT)
    else:
        s0 = s2 * 0
        r0 = r2 * 0
        f0 = tl.zeros_like(f2)
        b0 = b2 & False
    return s0, s1, s2, r0, r1, r2, f0, f1, f2, b0 | b1 | b2


@triton.jit
def corner_weight(a0: tl.constexpr, a1: tl.constexpr, a2: tl.constexpr, f0, f1, f2):
    """Interpolation weight of corner ``(a0, a1, a2)`` (SPEC §3), the same product order
    everywhere so that every kernel rounds it identically."""
    return pick(a0, 1.0 - f0, f0) * pick(a1, 1.0 - f1, f1) * pick(a2, 1.0 - f2, f2)


@triton.jit
def corner_weight_rt(a0, a1, a2, f0, f1, f2):
    """:func:`corner_weight` for corners known at run time (the same product order, so the
    same bits)."""
    return (tl.where(a0 == 1, f0, 1.0 - f0) * tl.where(a1 == 1, f1, 1.0 - f1)
            * tl.where(a2 == 1, f2, 1.0 - f2))


@triton.jit
def corner_slope_rt(a0, a1, a2, f0, f1, f2, D: tl.constexpr):
    """``d corner_weight / d frac_D`` of corner ``(a0, a1, a2)``."""
    w0 = tl.where(a0 == 1, f0, 1.0 - f0)
    w1 = tl.where(a1 == 1, f1, 1.0 - f1)
    w2 = tl.where(a2 == 1, f2, 1.0 - f2)
    if D == 0:
        return tl.where(a0 == 1, 1.0, -1.0) * w1 * w2
    elif D == 1:
        return w0 * tl.where(a1 == 1, 1.0, -1.0) * w2
    else:
        return w0 * w1 * tl.where(a2 == 1, 1.0, -1.0)


@triton.jit
def tile_coords(t, tiles_q, R, S1, S2, NDIM: tl.constexpr, BR: tl.constexpr, BW: tl.constexpr):
    """Tile ``t`` of a plane with ``R`` rows of ``S2`` columns (rows flatten ``(p0, p1)``
    with ``S1`` values of p1): ``(p0, p1, rmask, q, qmask, q0)``."""
    tr = t // tiles_q
    tq = t - tr * tiles_q
    r = tr * BR + tl.arange(0, BR)[:, None]
    q0 = tq * BW
    q = q0 + tl.arange(0, BW)[None, :]
    if NDIM < 3:
        p0 = tl.zeros_like(r)
        p1 = r
    else:
        p0 = r // S1
        p1 = r - p0 * S1
    return p0, p1, r < R, q, q < S2, q0


# --- forward ------------------------------------------------------------------------------

@triton.jit
def _fwd_window(xrow, rok, q, u, L2, sx2, fill, PAD: tl.constexpr, V: tl.constexpr,
                TWO: tl.constexpr):
    """Row segment ``V(row, q + u)`` (and ``q + u + 1`` when ``TWO``) through aligned
    vectors; lanes reading outside ``[0, L2)`` get ``fill`` here and are fixed up by the
    caller for paddings other than zeros."""
    m = true_mod(u, V)
    col = q + aligned(u - m, V)  # aligned vectors, provably (no hint the compiler could misapply)
    lo = tl.load(xrow + col, mask=rok & (col >= 0) & (col < L2), other=fill)
    col = col + V
    hi = tl.load(xrow + col, mask=rok & (col >= 0) & (col < L2), other=fill)
    va = funnel(lo, hi, m, V)
    if TWO:
        vb = funnel(lo, hi, m + 1, V)
    else:
        vb = va
    return va, vb


@triton.jit
def _fwd_padded(v, xrow, rok, q, q0, u, L2, O2, sx2, PAD: tl.constexpr, BW: tl.constexpr):
    """Replace the lanes of output columns ``o`` whose read ``o + u`` lies outside
    ``[0, L2)`` by ``x[row, P(o + u)]``: a loop over those columns of this tile only."""
    hi1 = tl.minimum(tl.minimum(-u, O2), q0 + BW)
    for o in range(tl.maximum(q0, 0), hi1):
        i, _ = source(o + u, L2, PAD)
        v = tl.where(q == o, tl.load(xrow + i * sx2, mask=rok), v)
    lo2 = tl.maximum(tl.maximum(L2 - u, 0), q0)
    for o in range(lo2, tl.minimum(O2, q0 + BW)):
        i, _ = source(o + u, L2, PAD)
        v = tl.where(q == o, tl.load(xrow + i * sx2, mask=rok), v)
    return v


@triton.jit
def _fwd_gather(xrow, rok, q, u, L2, sx2, fill, PAD: tl.constexpr):
    """Row segment ``V(row, q + u)`` lane by lane (any stride, any shift)."""
    i, inside = source(q + u, L2, PAD)
    return tl.load(xrow + i * sx2, mask=rok & inside, other=fill)


@triton.jit
def fwd_columns(xrow, rok, q, q0, u, L2, O2, sx2, fill, CPAD, PAD: tl.constexpr,
                V: tl.constexpr, TWO: tl.constexpr, BW: tl.constexpr):
    """``(V(row, q + u), V(row, q + u + 1))`` (the second only when ``TWO``) for a tile's
    rows ``xrow``: funnelled aligned vectors when possible, lane gathers otherwise. Both
    paths return the same bits."""
    if V > 1:
        fast = True
        if PAD != 0:
            npad = padded_count(u, L2, O2)
            if TWO:
                npad = tl.maximum(npad, padded_count(u + 1, L2, O2))
            fast = npad <= CPAD
        if fast:
            va, vb = _fwd_window(xrow, rok, q, u, L2, sx2, fill, PAD, V, TWO)
            if PAD != 0:
                va = _fwd_padded(va, xrow, rok, q, q0, u, L2, O2, sx2, PAD, BW)
                if TWO:
                    vb = _fwd_padded(vb, xrow, rok, q, q0, u + 1, L2, O2, sx2, PAD, BW)
        else:
            va = _fwd_gather(xrow, rok, q, u, L2, sx2, fill, PAD)
            vb = va
            if TWO:
                vb = _fwd_gather(xrow, rok, q, u + 1, L2, sx2, fill, PAD)
    else:
        va = _fwd_gather(xrow, rok, q, u, L2, sx2, fill, PAD)
        vb = va
        if TWO:
            vb = _fwd_gather(xrow, rok, q, u + 1, L2, sx2, fill, PAD)
    return va, vb


@triton.jit
def forward_tile(xb, s0, s1, s2, f0, f1, f2, p0, p1, rmask, q, q0, L0, L1, L2, O2, B0, B1, B2,
                 sx0, sx1, sx2, fill, CPAD, PAD: tl.constexpr, NDIM: tl.constexpr,
                 ACTIVE: tl.constexpr, OPDT: tl.constexpr, VX: tl.constexpr, BR: tl.constexpr,
                 BW: tl.constexpr):
    """One output tile of a plane: the read values (SSL: ``s`` is the rounded shift, bits
    in ``x``'s dtype) or the interpolation in ``OPDT`` (active: ``s`` is the floor)."""
    A0: tl.constexpr = 2 if ACTIVE and NDIM >= 3 else 1
    A1: tl.constexpr = 2 if ACTIVE and NDIM >= 2 else 1
    acc = tl.zeros([BR, BW], dtype=OPDT)
    for a0 in tl.static_range(A0):
        i0, k0 = source(p0 + B0 - s0 - a0, L0, PAD)
        for a1 in tl.static_range(A1):
            i1, k1 = source(p1 + B1 - s1 - a1, L1, PAD)
            rok = rmask
            if PAD == 0:
                rok = rok & k0 & k1
            xrow = xb + i0 * sx0 + i1 * sx1
            if ACTIVE:  # corner a2 = 1 reads u, a2 = 0 reads u + 1
                v1, v0 = fwd_columns(xrow, rok, q, q0, B2 - s2 - 1, L2, O2, sx2, fill, CPAD,
                                     PAD, VX, True, BW)
                acc += corner_weight(a0, a1, 0, f0, f1, f2) * v0.to(OPDT)
                acc += corner_weight(a0, a1, 1, f0, f1, f2) * v1.to(OPDT)
                value = acc
            else:
                value, _ = fwd_columns(xrow, rok, q, q0, B2 - s2, L2, O2, sx2, fill, CPAD, PAD,
                                       VX, False, BW)
    return value


@kernel
def planar_forward(
    x_ptr, out_ptr, w_ptr,
    KC, K, L0, L1, L2, O1, O2, B0, B1, B2, R,
    sxn, sxc, sx0, sx1, sx2, son, soc, so0, so1, so2, swc, swd,
    tiles_q, tiles, chunks, M, fill, nan_fill, CPAD,
    PAD: tl.constexpr, NDIM: tl.constexpr, ACTIVE: tl.constexpr, BIG: tl.constexpr,
    OPDT: tl.constexpr, VX: tl.constexpr, VO: tl.constexpr, BR: tl.constexpr,
    BW: tl.constexpr,
):
    """SPEC §3 for one chunk of one output plane ``(n, o)``, reading input plane
    ``(n, o // K)``: SSL copies bits (``x`` / ``out`` are integer views, ``fill`` the bits
    of zeros padding), active accumulates the ``2**D`` corners in op-math. A non-finite
    weight writes ``nan_fill`` over its plane."""
    if NDIM < 3:  # dims the input does not have: constants, so their arithmetic folds
        L0 = 1
        B0 = 0
    if NDIM < 2:
        L1 = 1
        O1 = 1
        B1 = 0
    pid = tl.program_id(0)
    plane = pid // chunks
    chunk = pid - plane * chunks
    n = plane // KC
    o = plane - n * KC
    c = o // K
    s0, s1, s2, r0, r1, r2, f0, f1, f2, bad = plane_shifts(w_ptr, o, swc, swd, L0, L1, L2,
                                                           PAD, NDIM, BIG, OPDT)
    if not ACTIVE:  # SSL reads the rounded shift: one corner
        s0 = s0 + r0
        s1 = s1 + r1
        s2 = s2 + r2
    xb = x_ptr + (n.to(tl.int64) * sxn + c.to(tl.int64) * sxc)
    ob = out_ptr + (n.to(tl.int64) * son + o.to(tl.int64) * soc)
    sx0 = aligned(sx0, VX)
    sx1 = aligned(sx1, VX)
    L2 = aligned(L2, VX)
    so0 = aligned(so0, VO)
    so1 = aligned(so1, VO)
    O2 = aligned(O2, VO)
    for t in range(chunk * M, tl.minimum(chunk * M + M, tiles)):
        p0, p1, rmask, q, qmask, q0 = tile_coords(t, tiles_q, R, O1, O2, NDIM, BR, BW)
        if BIG:
            p0 = p0.to(tl.int64)
            p1 = p1.to(tl.int64)
        value = forward_tile(xb, s0, s1, s2, f0, f1, f2, p0, p1, rmask, q, q0, L0, L1, L2, O2,
                             B0, B1, B2, sx0, sx1, sx2, fill, CPAD, PAD, NDIM, ACTIVE, OPDT,
                             VX, BR, BW)
        value = tl.where(bad, nan_fill, value).to(out_ptr.dtype.element_ty)
        orow = p0 * so0 + p1 * so1
        tl.store(ob + orow + q * so2, value, mask=rmask & qmask)


# --- backward -----------------------------------------------------------------------------

@triton.jit
def _bwd_window(grow, rok, q, u, O2, V: tl.constexpr):
    """Direct adjoint terms of corners 0 and 1 along the columns: ``g[row, q - u]`` and
    ``g[row, q - u + 1]`` (0 outside ``[0, O2)``), through aligned vectors."""
    m = true_mod(-u, V)
    col = q + aligned(-u - m, V)
    lo = tl.load(grow + col, mask=rok & (col >= 0) & (col < O2), other=0.0)
    col = col + V
    hi = tl.load(grow + col, mask=rok & (col >= 0) & (col < O2), other=0.0)
    return funnel(lo, hi, m, V), funnel(lo, hi, m + 1, V)


@triton.jit
def _bwd_padded(G, grow, rok, q, u, L2, O2, sg2, PAD: tl.constexpr, OPDT: tl.constexpr):
    """Add the padded adjoint terms of one corner: every output column ``o`` that reads
    ``o + u`` outside ``[0, L2)`` lands on column ``P(o + u)``."""
    for o in range(0, tl.minimum(tl.maximum(-u, 0), O2)):
        j, _ = source(o + u, L2, PAD)
        G += tl.where(q == j, tl.load(grow + o * sg2, mask=rok, other=0.0).to(OPDT), 0.0)
    for o in range(tl.maximum(L2 - u, 0), O2):
        j, _ = source(o + u, L2, PAD)
        G += tl.where(q == j, tl.load(grow + o * sg2, mask=rok, other=0.0).to(OPDT), 0.0)
    return G


@triton.jit
def _bwd_gather(grow, rok, q, qmask, u, L2, O2, sg2, PAD: tl.constexpr, OPDT: tl.constexpr,
                BR: tl.constexpr, BW: tl.constexpr):
    """All adjoint terms of one corner along the columns, lane by lane."""
    G = tl.zeros([BR, BW], dtype=OPDT)
    for t in range(adj_count(q, u, L2, O2, PAD)):
        o, ok = adj_term(q, u, L2, O2, t, PAD)
        G += tl.load(grow + o * sg2, mask=rok & ok & qmask, other=0.0).to(OPDT)
    return G


@triton.jit
def bwd_columns(grow, rok, q, qmask, u, L2, O2, sg2, CPAD, PAD: tl.constexpr,
                OPDT: tl.constexpr, V: tl.constexpr, BR: tl.constexpr, BW: tl.constexpr):
    """Column adjoints ``(G0, G1)`` of corners ``a2 = 0`` (reads ``o + u``) and ``a2 = 1``
    (``o + u - 1``) for the rows ``grow`` of one row term."""
    fast = V > 1
    if fast and PAD != 0:
        fast = tl.maximum(padded_count(u, L2, O2), padded_count(u - 1, L2, O2)) <= CPAD
    if fast:
        G0, G1 = _bwd_window(grow, rok, q, u, O2, V)
        G0 = G0.to(OPDT)
        G1 = G1.to(OPDT)
        if PAD != 0:
            G0 = _bwd_padded(G0, grow, rok, q, u, L2, O2, sg2, PAD, OPDT)
            G1 = _bwd_padded(G1, grow, rok, q, u - 1, L2, O2, sg2, PAD, OPDT)
    else:
        G0 = _bwd_gather(grow, rok, q, qmask, u, L2, O2, sg2, PAD, OPDT, BR, BW)
        G1 = _bwd_gather(grow, rok, q, qmask, u - 1, L2, O2, sg2, PAD, OPDT, BR, BW)
    return G0, G1


@triton.jit
def _bwd_channel(gb, x, gi, gw0, gw1, gw2, j0, j1, rmask, q, qmask,
                 s0, s1, s2, r0, r1, r2, f0, f1, f2,
                 L0, L1, L2, O0, O1, O2, B0, B1, B2, sg0, sg1, sg2, CPAD,
                 PAD: tl.constexpr, NDIM: tl.constexpr, ACTIVE: tl.constexpr,
                 NEED_GI: tl.constexpr, NEED_GW: tl.constexpr, OPDT: tl.constexpr,
                 VG: tl.constexpr, BR: tl.constexpr, BW: tl.constexpr):
    """One output channel's contribution to a tile of its input plane: ``gi`` gets the
    adjoint (SPEC §4), ``gw_d`` the per-lane terms of ``d out / d frac_d`` (straight-through
    for SSL: the same as active)."""
    if NEED_GW:  # every corner (SSL's grad_input uses the rounded one among them)
        A0: tl.constexpr = 2 if NDIM >= 3 else 1
        A1: tl.constexpr = 2 if NDIM >= 2 else 1
        A2: tl.constexpr = 2
    else:
        if not ACTIVE:
            s0 = s0 + r0
            s1 = s1 + r1
            s2 = s2 + r2
        A0: tl.constexpr = 2 if ACTIVE and NDIM >= 3 else 1
        A1: tl.constexpr = 2 if ACTIVE and NDIM >= 2 else 1
        A2: tl.constexpr = 2 if ACTIVE else 1
    for corner in range(A0 * A1):  # a run-time loop: one copy of the column code
        a0 = corner // A1
        a1 = corner - a0 * A1
        u0 = B0 - s0 - a0
        u1 = B1 - s1 - a1
        for t0 in range(adj_count(j0, u0, L0, O0, PAD)):
            o0, ok0 = adj_term(j0, u0, L0, O0, t0, PAD)
            for t1 in range(adj_count(j1, u1, L1, O1, PAD)):
                o1, ok1 = adj_term(j1, u1, L1, O1, t1, PAD)
                rok = rmask & ok0 & ok1
                grow = gb + o0 * sg0 + o1 * sg1
                G0, G1 = bwd_columns(grow, rok, q, qmask, B2 - s2, L2, O2, sg2, CPAD, PAD,
                                     OPDT, VG, BR, BW)
                for a2 in tl.static_range(A2):
                    G = pick(a2, G0, G1)
                    if NEED_GI:
                        if ACTIVE:
                            gi += corner_weight_rt(a0, a1, a2, f0, f1, f2) * G
                        elif NEED_GW:
                            hit = (r0 == a0) & (r1 == a1) & (r2 == a2)
                            gi = tl.where(hit, gi + G, gi)
                        else:
                            gi += G
                    if NEED_GW:
                        xg = x * G
                        if NDIM >= 3:
                            gw0 += corner_slope_rt(a0, a1, a2, f0, f1, f2, 0) * xg
                        if NDIM >= 2:
                            gw1 += corner_slope_rt(a0, a1, a2, f0, f1, f2, 1) * xg
                        gw2 += corner_slope_rt(a0, a1, a2, f0, f1, f2, 2) * xg
    return gi, gw0, gw1, gw2


@triton.jit
def _store_partials(part_ptr, row, KC, o, gw0, gw1, gw2, NDIM: tl.constexpr,
                    LOG2N: tl.constexpr):
    """``part[row, o, d]`` (float64) = the order-independent sum of a tile's lane terms."""
    base = part_ptr + (row.to(tl.int64) * KC + o) * NDIM
    tl.store(base + (NDIM - 1) + tl.zeros([1, 1], tl.int32), exact_sum(gw2, None, LOG2N))
    if NDIM >= 2:
        tl.store(base + (NDIM - 2) + tl.zeros([1, 1], tl.int32), exact_sum(gw1, None, LOG2N))
    if NDIM >= 3:
        tl.store(base + tl.zeros([1, 1], tl.int32), exact_sum(gw0, None, LOG2N))


@kernel
def planar_backward(
    g_ptr, x_ptr, w_ptr, gi_ptr, part_ptr,
    C, K, L0, L1, L2, O0, O1, O2, B0, B1, B2, R,
    sgn, sgc, sg0, sg1, sg2, sxn, sxc, sx0, sx1, sx2, sin, sic, si0, si1, si2, swc, swd,
    tiles_q, tiles, chunks, M, CPAD,
    PAD: tl.constexpr, NDIM: tl.constexpr, ACTIVE: tl.constexpr, NEED_GI: tl.constexpr,
    NEED_GW: tl.constexpr, MULTI: tl.constexpr, BIG: tl.constexpr, OPDT: tl.constexpr,
    VG: tl.constexpr, VX: tl.constexpr, VI: tl.constexpr, BR: tl.constexpr,
    BW: tl.constexpr, LOG2N: tl.constexpr,
):
    """SPEC §4 in one pass over a chunk of input plane ``(n, c)``: grad_input for the tile
    (the sum over the ``K`` output channels ``c*K .. c*K+K-1`` that read it) and the
    grad_weight partial of each of them.

    Partials: ``part[n * chunks + chunk, c, d]`` (``K == 1``: one row per chunk of ``M``
    tiles), or ``part[n * tiles + tile, o, d]`` (``MULTI``: chunks are single tiles), summed
    by :func:`.reduce.reduce_partials` in a fixed order.
    """
    if NDIM < 3:  # dims the input does not have: constants, so their arithmetic folds
        L0 = 1
        O0 = 1
        B0 = 0
    if NDIM < 2:
        L1 = 1
        O1 = 1
        B1 = 0
    pid = tl.program_id(0)
    plane = pid // chunks
    chunk = pid - plane * chunks
    n = plane // C
    c = plane - n * C
    KC = K * C
    gb = g_ptr + n.to(tl.int64) * sgn
    xb = x_ptr + (n.to(tl.int64) * sxn + c.to(tl.int64) * sxc)
    ib = gi_ptr + (n.to(tl.int64) * sin + c.to(tl.int64) * sic)
    sg0 = aligned(sg0, VG)
    sg1 = aligned(sg1, VG)
    O2 = aligned(O2, VG)
    sx0 = aligned(sx0, VX)
    sx1 = aligned(sx1, VX)
    si0 = aligned(si0, VI)
    si1 = aligned(si1, VI)
    VQ: tl.constexpr = VX if VX > VI else VI
    L2 = aligned(L2, VQ)
    zero = tl.zeros([BR, BW], dtype=OPDT)
    gw0 = zero
    gw1 = zero
    gw2 = zero
    if not MULTI:
        s0, s1, s2, r0, r1, r2, f0, f1, f2, bad = plane_shifts(w_ptr, c, swc, swd, L0, L1, L2,
                                                               PAD, NDIM, BIG, OPDT)
        gc = gb + c.to(tl.int64) * sgc
    for t in range(chunk * M, tl.minimum(chunk * M + M, tiles)):
        j0, j1, rmask, q, qmask, q0 = tile_coords(t, tiles_q, R, L1, L2, NDIM, BR, BW)
        if BIG:
            j0 = j0.to(tl.int64)
            j1 = j1.to(tl.int64)
        lane = rmask & qmask
        if NEED_GW:
            xrow = xb + j0 * sx0 + j1 * sx1
            x = tl.load(xrow + q * sx2, mask=lane, other=0.0).to(OPDT)
        else:
            x = zero
        gi = zero
        if MULTI:
            any_bad = c < 0
            for m in range(K):
                o = c * K + m
                s0, s1, s2, r0, r1, r2, f0, f1, f2, bad = plane_shifts(
                    w_ptr, o, swc, swd, L0, L1, L2, PAD, NDIM, BIG, OPDT)
                any_bad = any_bad | bad
                gi, tw0, tw1, tw2 = _bwd_channel(
                    gb + o.to(tl.int64) * sgc, x, gi, zero, zero, zero, j0, j1, rmask, q,
                    qmask, s0, s1, s2, r0, r1, r2, f0, f1, f2, L0, L1, L2, O0, O1, O2,
                    B0, B1, B2, sg0, sg1, sg2, CPAD, PAD, NDIM, ACTIVE, NEED_GI, NEED_GW,
                    OPDT, VG, BR, BW)
                if NEED_GW:
                    _store_partials(part_ptr, n * tiles + t, KC, o, tw0, tw1, tw2, NDIM, LOG2N)
            bad = any_bad
        else:
            gi, gw0, gw1, gw2 = _bwd_channel(
                gc, x, gi, gw0, gw1, gw2, j0, j1, rmask, q, qmask, s0, s1, s2, r0, r1, r2,
                f0, f1, f2, L0, L1, L2, O0, O1, O2, B0, B1, B2, sg0, sg1, sg2, CPAD, PAD,
                NDIM, ACTIVE, NEED_GI, NEED_GW, OPDT, VG, BR, BW)
        if NEED_GI:
            gi = tl.where(bad, float("nan"), gi)
            irow = j0 * si0 + j1 * si1
            tl.store(ib + irow + q * si2, gi.to(gi_ptr.dtype.element_ty), mask=lane)
    if NEED_GW and not MULTI:
        _store_partials(part_ptr, n * chunks + chunk, KC, c, gw0, gw1, gw2, NDIM, LOG2N)
