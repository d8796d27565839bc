"""Triton kernels of the shift ops (SPEC §2-§4).

Geometry shared by every kernel: an input ``(N, C, L0, L1, L2)``, where 1D and 2D inputs
are padded in front with size-1 spatial dims (whose shift is 0 and which take no
interpolation corner), read through arbitrary strides.

Each program owns a 2D tile ``[BLOCK_A, BLOCK_B]``:

* planar layout (contiguous outputs): one ``(n, c)`` plane per program, rows of the tile
  are the flattened leading spatial positions ``(p0, p1)``, columns the innermost spatial
  dim ``p2`` (contiguous in memory). The shift of the channel is a scalar and the padding
  arithmetic of SPEC §2 is separable: it runs on the ``[BLOCK_A, 1]`` row and
  ``[1, BLOCK_B]`` column vectors only, never per element.
* channels-last layout: one sample ``n`` per program, rows are flattened spatial positions
  and columns are channels (contiguous in memory); the shift varies along the columns.

No kernel uses atomics: the forward and the weight-gradient partials are written once, and
grad_input is a *gather* over the outputs that read each input element (the adjoint of
SPEC §4), so every result is deterministic.

Shifts are reduced in-kernel before any index arithmetic (``_channel_shift``): periodic
modulo L, reflect modulo 2L-2 (L = 1: 0), symmetric modulo 2L (exactly, for any finite
float64 magnitude), zeros/border clamped to [-(L+2), L+2]. Non-finite weights (possible on
CUDA only; the CPU path rejects them) are treated as 0. After reduction every source index
lies in [0, L): no weight value can make a kernel read or write out of bounds.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _pick(A: tl.constexpr, x0, x1):
    """``x0`` for corner ``A == 0``, ``x1`` for ``A == 1`` (compile-time choice)."""
    if A == 0:
        return x0
    else:
        return x1


@triton.jit
def _wrap(x, P):
    """``x mod P`` for ``x`` in ``[-P, 2P)``, without division."""
    x = tl.where(x < 0, x + P, x)
    return tl.where(x >= P, x - P, x)


@triton.jit
def _exact_mod(s, P):
    """``s mod P`` (in ``[0, P)``) of an integer-valued finite float64 ``s`` of any size.

    ``|s| < 4e18`` converts to int64 exactly. Larger values are ``mant * 2**k`` with a
    53-bit integer mantissa: ``mant mod P`` is multiplied by ``2**k`` modulo ``P``, 16 bits
    at a time (``P < 2**47``, so nothing overflows int64). Normal weights skip the loop.
    """
    a = tl.abs(s)
    small = a < 4.0e18
    r_small = tl.where(small, a, 0.0).to(tl.int64) % P
    bits = a.to(tl.int64, bitcast=True)
    k = tl.where(small, 0, ((bits >> 52) & 2047) - 1075)
    mant = (bits & 4503599627370495) | 4503599627370496
    r = tl.where(small, r_small, mant % P)
    for i in range(0, tl.max(k), 16):
        step = tl.minimum(tl.maximum(k - i, 0), 16)
        r = (r << step) % P
    return tl.where((s < 0) & (r != 0), P - r, r)


@triton.jit
def _channel_shift(w_ptr, c, col, swc, swd, cmask, L, PAD: tl.constexpr, ROUND: tl.constexpr,
                   BIG: tl.constexpr, OPDT: tl.constexpr):
    """Reduced integer shift and fractional part of ``weight[c, col]`` for a dim of size L.

    ``ROUND``: the SSL shift ``round(w)`` (half to even); else ``floor(w)``. The fraction
    ``w - floor(w)`` is rounded to the weight's dtype first, as the reference computes it.
    """
    wdt = w_ptr.dtype.element_ty
    w = tl.load(w_ptr + c * swc + col * swd, mask=cmask, other=0.0).to(tl.float64)
    w = tl.where((w - w) == 0.0, w, 0.0)  # NaN and +-inf -> 0
    fl = tl.floor(w)
    fr = w - fl  # exact in float64
    if ROUND:
        half = fl * 0.5
        odd = tl.floor(half) != half
        s = tl.where((fr > 0.5) | ((fr == 0.5) & odd), fl + 1.0, fl)
    else:
        s = fl
    if PAD <= 1:  # zeros, border: every |s| >= L + 1 acts the same
        lim = s * 0.0 + (L + 2)  # float64
        s = tl.minimum(tl.maximum(s, -lim), lim)
        si = s.to(tl.int64)
    else:
        zero = (s * 0.0).to(tl.int64)
        if PAD == 2:
            period = zero + L
        elif PAD == 3:
            period = tl.maximum(zero + (2 * L - 2), 1)
        else:
            period = zero + 2 * L
        si = _exact_mod(s, period)
    if not BIG:
        si = si.to(tl.int32)
    frac = fr.to(wdt).to(OPDT)
    return si, frac


@triton.jit
def _source(k, L, PAD: tl.constexpr):
    """SPEC §2 ``P(k)`` for ``k = i - s - a`` with a reduced shift ``s``.

    Returns ``(index in [0, L), inside)``; ``inside`` is only meaningful for zeros padding.
    """
    if PAD == 0:
        inside = (k >= 0) & (k < L)
        idx = tl.minimum(tl.maximum(k, 0), L - 1)
    elif PAD == 1:
        inside = k == k
        idx = tl.minimum(tl.maximum(k, 0), L - 1)
    elif PAD == 2:  # s in [0, L): k in [-L, L)
        inside = k == k
        idx = tl.where(k < 0, k + L, k)
    elif PAD == 3:  # s in [0, P): k in [-P, L)
        inside = k == k
        period = tl.maximum(2 * L - 2, 1)
        m = tl.where(k < 0, k + period, k)
        idx = tl.where(m < L, m, period - m)
    else:  # s in [0, 2L): k in [-2L, L)
        inside = k == k
        m = tl.where(k < 0, k + 2 * L, k)
        idx = tl.where(m < L, m, 2 * L - 1 - m)
    return idx, inside


@triton.jit
def _adj_bounds(j, u, L, O, PAD: tl.constexpr):
    """Border padding: outputs ``o`` in ``[lo, hi]`` read input ``j`` (``k = o + u``)."""
    lo = tl.maximum(tl.where(j == 0, 0, j - u), 0)
    hi = tl.minimum(tl.where(j == L - 1, O - 1, j - u), O - 1)
    return lo, hi


@triton.jit
def _adj_count(j, u, L, O, PAD: tl.constexpr):
    """How many terms ``t`` :func:`_adj_term` needs for the whole tile (a scalar)."""
    if PAD == 1:
        lo, hi = _adj_bounds(j, u, L, O, PAD)
        count = tl.maximum(tl.max(hi - lo + 1), 1)
    elif PAD == 3:
        period = tl.maximum(2 * L - 2, 1)
        mirror = _wrap(-j - u, period)
        ok = (mirror < O) & (j > 0) & (j < L - 1)
        count = 1 + tl.max(ok.to(tl.int32))
    elif PAD == 4:
        mirror = _wrap(2 * L - 1 - j - u, 2 * L)
        count = 1 + tl.max((mirror < O).to(tl.int32))
    else:
        count = 1
    return count


@triton.jit
def _adj_term(j, u, L, O, t, PAD: tl.constexpr):
    """Term ``t`` of the adjoint along one dim: the output ``o`` (and whether it exists)
    whose read ``P(o + u)`` is input ``j`` (``u = before - shift - corner``).

    zeros: ``o = j - u``; periodic: the one ``o`` congruent to it modulo L; reflect /
    symmetric: one ``o`` per reflection family (t = 0 direct, t = 1 mirrored); border: the
    interval of outputs clamped onto an edge, ``o = lo + t``.
    """
    if PAD == 0:
        o = j - u
        ok = (o >= 0) & (o < O)
    elif PAD == 1:
        lo, hi = _adj_bounds(j, u, L, O, PAD)
        o = lo + t
        ok = o <= hi
    elif PAD == 2:
        o = _wrap(j - u, L)
        ok = o < O
    elif PAD == 3:
        period = tl.maximum(2 * L - 2, 1)
        o = tl.where(t == 0, _wrap(j - u, period), _wrap(-j - u, period))
        ok = (o < O) & ((t == 0) | ((j > 0) & (j < L - 1)))
    else:
        o = tl.where(t == 0, _wrap(j - u, 2 * L), _wrap(2 * L - 1 - j - u, 2 * L))
        ok = o < O
    return o, ok


@triton.jit
def _tile_at(n, cs, ta, tb, C, npos, S1, S2, CL: tl.constexpr, BLOCK_A: tl.constexpr,
             BLOCK_B: tl.constexpr):
    """Tile ``(ta, tb)`` of sample ``n`` (planar: of plane ``(n, cs)``):
    ``(c, p0, p1, p2, lane)``.

    ``npos``: number of rows of positions (planar: S0*S1, channels-last: S0*S1*S2). The
    divisions run on the ``[BLOCK_A, 1]`` row vector only.
    """
    if CL:
        pos = ta * BLOCK_A + tl.arange(0, BLOCK_A)[:, None]
        c = tb * BLOCK_B + tl.arange(0, BLOCK_B)[None, :]
        p2 = pos % S2
        q = pos // S2
        p1 = q % S1
        p0 = q // S1
        lane = (pos < npos) & (c < C)
    else:
        rows = ta * BLOCK_A + tl.arange(0, BLOCK_A)[:, None]
        p2 = tb * BLOCK_B + tl.arange(0, BLOCK_B)[None, :]
        p0 = rows // S1
        p1 = rows - p0 * S1
        lane = (rows < npos) & (p2 < S2)
        c = cs + tl.zeros([1, 1], dtype=tl.int32)
    return c, p0, p1, p2, lane


@triton.jit
def _program(C, tiles_a, tiles_b, CL: tl.constexpr, BIG: tl.constexpr):
    """This program's ``(n, c_scalar, ta, tb)``: programs enumerate (n[, c], ta, tb)."""
    pid = tl.program_id(0)
    if BIG:
        pid = pid.to(tl.int64)
    tiles = tiles_a * tiles_b
    plane = pid // tiles
    t = pid - plane * tiles
    ta = t // tiles_b
    tb = t - ta * tiles_b
    if CL:
        n = plane
        cs = n * 0
    else:
        n = plane // C
        cs = plane - n * C
    return n.to(tl.int64), cs.to(tl.int64), ta, tb


@triton.jit
def _tile(C, npos, S1, S2, tiles_a, tiles_b, CL: tl.constexpr, BIG: tl.constexpr,
          BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """This program's tile: ``(n, c_scalar, c, p0, p1, p2, lane)``."""
    n, cs, ta, tb = _program(C, tiles_a, tiles_b, CL, BIG)
    c, p0, p1, p2, lane = _tile_at(n, cs, ta, tb, C, npos, S1, S2, CL, BLOCK_A, BLOCK_B)
    return n, cs, c, p0, p1, p2, lane


#: Sizes are never specialised (a size of 1 would become a compile-time constant and the
#: padding arithmetic treats them as int tensors); strides keep the ``== 1`` specialisation.
_SIZES = ("C", "L0", "L1", "L2", "O0", "O1", "O2", "B0", "B1", "B2", "npos", "tiles_a", "tiles_b",
          "chunks", "iters", "fill", "R")


def _kernel(fn):
    names = fn.__code__.co_varnames[: fn.__code__.co_argcount]
    return triton.jit(fn, do_not_specialize=[name for name in names if name in _SIZES])


@_kernel
def _forward_kernel(
    x_ptr, out_ptr, w_ptr,
    C, L0, L1, L2, O1, O2, B0, B1, B2,
    sxn, sxc, sx0, sx1, sx2,
    son, soc, so0, so1, so2,
    swc, swd, npos, tiles_a, tiles_b, fill,
    PAD: tl.constexpr, NDIM: tl.constexpr, ACTIVE: tl.constexpr, CL: tl.constexpr,
    BIG: tl.constexpr, OPDT: tl.constexpr, A0: tl.constexpr, A1: tl.constexpr,
    A2: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
):
    """SPEC §3: SSL (one corner, exact copy of the bits, ``fill`` outside for zeros) or
    active (``A_d = 2`` corners per real dim, op-math accumulation)."""
    n, cs, c, p0, p1, p2, lane = _tile(C, npos, O1, O2, tiles_a, tiles_b, CL, BIG,
                                       BLOCK_A, BLOCK_B)
    cmask = c < C
    xb = x_ptr + (n * sxn + cs * sxc)
    ob = out_ptr + (n * son + cs * soc)
    if CL:
        xo = c * sxc
        oo = c * soc
    else:
        xo = c * 0
        oo = c * 0
    s2, f2 = _channel_shift(w_ptr, c, NDIM - 1, swc, swd, cmask, L2, PAD, not ACTIVE, BIG, OPDT)
    if NDIM >= 2:
        s1, f1 = _channel_shift(w_ptr, c, NDIM - 2, swc, swd, cmask, L1, PAD, not ACTIVE, BIG,
                                OPDT)
    else:
        s1 = 0
        f1 = 0.0
    if NDIM >= 3:
        s0, f0 = _channel_shift(w_ptr, c, 0, swc, swd, cmask, L0, PAD, not ACTIVE, BIG, OPDT)
    else:
        s0 = 0
        f0 = 0.0
    i0a, k0a = _source(p0 + B0 - s0, L0, PAD)
    i1a, k1a = _source(p1 + B1 - s1, L1, PAD)
    i2a, k2a = _source(p2 + B2 - s2, L2, PAD)
    i0b, k0b = i0a, k0a
    i1b, k1b = i1a, k1a
    i2b, k2b = i2a, k2a
    if A0 == 2:
        i0b, k0b = _source(p0 + B0 - s0 - 1, L0, PAD)
    if A1 == 2:
        i1b, k1b = _source(p1 + B1 - s1 - 1, L1, PAD)
    if A2 == 2:
        i2b, k2b = _source(p2 + B2 - s2 - 1, L2, PAD)
    out_ptrs = ob + (oo + p0 * so0 + p1 * so1 + p2 * so2)
    if ACTIVE:
        acc = tl.zeros([BLOCK_A, BLOCK_B], dtype=OPDT)
        for a0 in tl.static_range(A0):
            for a1 in tl.static_range(A1):
                for a2 in tl.static_range(A2):
                    off = (xo + _pick(a0, i0a, i0b) * sx0 + _pick(a1, i1a, i1b) * sx1
                           + _pick(a2, i2a, i2b) * sx2)
                    m = lane
                    if PAD == 0:
                        m = m & _pick(a0, k0a, k0b) & _pick(a1, k1a, k1b) & _pick(a2, k2a, k2b)
                    coef = (_pick(a0, 1.0 - f0, f0) * _pick(a1, 1.0 - f1, f1)
                            * _pick(a2, 1.0 - f2, f2))
                    v = tl.load(xb + off, mask=m, other=0.0).to(OPDT)
                    acc += coef * v
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=lane)
    else:
        m = lane
        if PAD == 0:
            m = m & k0a & k1a & k2a
        v = tl.load(xb + (xo + i0a * sx0 + i1a * sx1 + i2a * sx2), mask=m, other=fill)
        tl.store(out_ptrs, v, mask=lane)


@_kernel
def _grad_input_kernel(
    g_ptr, gi_ptr, w_ptr,
    C, L0, L1, L2, O0, O1, O2, B0, B1, B2,
    sgn, sgc, sg0, sg1, sg2,
    sin, sic, si0, si1, si2,
    swc, swd, npos, tiles_a, tiles_b,
    PAD: tl.constexpr, NDIM: tl.constexpr, ACTIVE: tl.constexpr, CL: tl.constexpr,
    BIG: tl.constexpr, OPDT: tl.constexpr, A0: tl.constexpr, A1: tl.constexpr,
    A2: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
):
    """SPEC §4 grad_input: for every input element, the sum over the outputs (and corners)
    that read it, gathered (no atomics, deterministic)."""
    n, cs, c, j0, j1, j2, lane = _tile(C, npos, L1, L2, tiles_a, tiles_b, CL, BIG,
                                       BLOCK_A, BLOCK_B)
    cmask = c < C
    gb = g_ptr + (n * sgn + cs * sgc)
    ib = gi_ptr + (n * sin + cs * sic)
    if CL:
        go = c * sgc
        io = c * sic
    else:
        go = c * 0
        io = c * 0
    s2, f2 = _channel_shift(w_ptr, c, NDIM - 1, swc, swd, cmask, L2, PAD, not ACTIVE, BIG, OPDT)
    if NDIM >= 2:
        s1, f1 = _channel_shift(w_ptr, c, NDIM - 2, swc, swd, cmask, L1, PAD, not ACTIVE, BIG,
                                OPDT)
    else:
        s1 = 0
        f1 = 0.0
    if NDIM >= 3:
        s0, f0 = _channel_shift(w_ptr, c, 0, swc, swd, cmask, L0, PAD, not ACTIVE, BIG, OPDT)
    else:
        s0 = 0
        f0 = 0.0
    u0a = B0 - s0
    u1a = B1 - s1
    u2a = B2 - s2
    n0a = _adj_count(j0, u0a, L0, O0, PAD)
    n1a = _adj_count(j1, u1a, L1, O1, PAD)
    n2a = _adj_count(j2, u2a, L2, O2, PAD)
    n0b, n1b, n2b = n0a, n1a, n2a
    if A0 == 2:
        n0b = _adj_count(j0, u0a - 1, L0, O0, PAD)
    if A1 == 2:
        n1b = _adj_count(j1, u1a - 1, L1, O1, PAD)
    if A2 == 2:
        n2b = _adj_count(j2, u2a - 1, L2, O2, PAD)
    acc = tl.zeros([BLOCK_A, BLOCK_B], dtype=OPDT)
    for a0 in tl.static_range(A0):
        for t0 in range(_pick(a0, n0a, n0b)):
            o0, ok0 = _adj_term(j0, u0a - a0, L0, O0, t0, PAD)
            for a1 in tl.static_range(A1):
                for t1 in range(_pick(a1, n1a, n1b)):
                    o1, ok1 = _adj_term(j1, u1a - a1, L1, O1, t1, PAD)
                    row_off = go + o0 * sg0 + o1 * sg1
                    row_ok = ok0 & ok1
                    for a2 in tl.static_range(A2):
                        for t2 in range(_pick(a2, n2a, n2b)):
                            o2, ok2 = _adj_term(j2, u2a - a2, L2, O2, t2, PAD)
                            m = lane & row_ok & ok2
                            v = tl.load(gb + (row_off + o2 * sg2), mask=m, other=0.0).to(OPDT)
                            if ACTIVE:
                                coef = (_pick(a0, 1.0 - f0, f0) * _pick(a1, 1.0 - f1, f1)
                                        * _pick(a2, 1.0 - f2, f2))
                                acc += coef * v
                            else:
                                acc += v
    tl.store(ib + (io + j0 * si0 + j1 * si1 + j2 * si2), acc.to(gi_ptr.dtype.element_ty),
             mask=lane)


@_kernel
def _grad_weight_kernel(
    g_ptr, x_ptr, w_ptr, part_ptr,
    C, L0, L1, L2, O1, O2, B0, B1, B2,
    sgn, sgc, sg0, sg1, sg2,
    sxn, sxc, sx0, sx1, sx2,
    swc, swd, npos, tiles_a, tiles_b, chunks, iters,
    PAD: tl.constexpr, NDIM: tl.constexpr, CL: tl.constexpr, BIG: tl.constexpr,
    OPDT: tl.constexpr, A0: tl.constexpr, A1: tl.constexpr, A2: tl.constexpr,
    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
):
    """SPEC §4 grad_weight partials: ``sum(grad_out * d out / d frac_d)`` at the unrounded
    weight (active derivative; SSL is straight-through) over ``iters`` consecutive row
    tiles, into ``part[row, c, d]``.

    Programs enumerate (n[, c], chunk, tb); a chunk is ``iters`` row tiles, so the partials
    have ``N * chunks`` (planar: ``N * chunks * tiles_b``) rows whatever the spatial size:
    the reduction stays short.
    """
    n, cs, chunk, tb = _program(C, chunks, tiles_b, CL, BIG)
    c, p0, p1, p2, lane = _tile_at(n, cs, chunk * iters, tb, C, npos, O1, O2, CL, BLOCK_A,
                                   BLOCK_B)
    cmask = c < C
    gb = g_ptr + (n * sgn + cs * sgc)
    xb = x_ptr + (n * sxn + cs * sxc)
    if CL:
        go = c * sgc
        xo = c * sxc
    else:
        go = c * 0
        xo = c * 0
    s2, f2 = _channel_shift(w_ptr, c, NDIM - 1, swc, swd, cmask, L2, PAD, False, BIG, OPDT)
    if NDIM >= 2:
        s1, f1 = _channel_shift(w_ptr, c, NDIM - 2, swc, swd, cmask, L1, PAD, False, BIG, OPDT)
    else:
        s1 = 0
        f1 = 0.0
    if NDIM >= 3:
        s0, f0 = _channel_shift(w_ptr, c, 0, swc, swd, cmask, L0, PAD, False, BIG, OPDT)
    else:
        s0 = 0
        f0 = 0.0
    acc0 = tl.zeros([BLOCK_A, BLOCK_B], dtype=OPDT)
    acc1 = tl.zeros([BLOCK_A, BLOCK_B], dtype=OPDT)
    acc2 = tl.zeros([BLOCK_A, BLOCK_B], dtype=OPDT)
    for it in range(iters):
        c, p0, p1, p2, lane = _tile_at(n, cs, chunk * iters + it, tb, C, npos, O1, O2, CL,
                                       BLOCK_A, BLOCK_B)
        g = tl.load(gb + (go + p0 * sg0 + p1 * sg1 + p2 * sg2), mask=lane, other=0.0).to(OPDT)
        i0a, k0a = _source(p0 + B0 - s0, L0, PAD)
        i1a, k1a = _source(p1 + B1 - s1, L1, PAD)
        i2a, k2a = _source(p2 + B2 - s2, L2, PAD)
        i0b, k0b = i0a, k0a
        i1b, k1b = i1a, k1a
        if A0 == 2:
            i0b, k0b = _source(p0 + B0 - s0 - 1, L0, PAD)
        if A1 == 2:
            i1b, k1b = _source(p1 + B1 - s1 - 1, L1, PAD)
        i2b, k2b = _source(p2 + B2 - s2 - 1, L2, PAD)
        for a0 in tl.static_range(A0):
            for a1 in tl.static_range(A1):
                for a2 in tl.static_range(A2):
                    off = (xo + _pick(a0, i0a, i0b) * sx0 + _pick(a1, i1a, i1b) * sx1
                           + _pick(a2, i2a, i2b) * sx2)
                    m = lane
                    if PAD == 0:
                        m = m & _pick(a0, k0a, k0b) & _pick(a1, k1a, k1b) & _pick(a2, k2a, k2b)
                    gv = tl.load(xb + off, mask=m, other=0.0).to(OPDT) * g
                    w0 = _pick(a0, 1.0 - f0, f0)
                    w1 = _pick(a1, 1.0 - f1, f1)
                    w2 = _pick(a2, 1.0 - f2, f2)
                    if NDIM >= 3:
                        acc0 += (_pick(a0, -1.0, 1.0) * w1 * w2) * gv
                    if NDIM >= 2:
                        acc1 += (w0 * _pick(a1, -1.0, 1.0) * w2) * gv
                    acc2 += (w0 * w1 * _pick(a2, -1.0, 1.0)) * gv
    if CL:  # the channel blocks tb of a chunk share its row
        row = n * chunks + chunk
        pbase = part_ptr + (row * C + c) * 3
        tl.store(pbase + 2, tl.sum(acc2, axis=0, keep_dims=True), mask=cmask)
        if NDIM >= 2:
            tl.store(pbase + 1, tl.sum(acc1, axis=0, keep_dims=True), mask=cmask)
        if NDIM >= 3:
            tl.store(pbase, tl.sum(acc0, axis=0, keep_dims=True), mask=cmask)
    else:
        row = (n * chunks + chunk) * tiles_b + tb
        pbase = part_ptr + (row * C + cs) * 3
        tl.store(pbase + 2, tl.sum(acc2))
        if NDIM >= 2:
            tl.store(pbase + 1, tl.sum(acc1))
        if NDIM >= 3:
            tl.store(pbase, tl.sum(acc0))


@_kernel
def _reduce_partials_kernel(
    part_ptr, gw_ptr, R, C, sgwc, sgwd,
    NDIM: tl.constexpr, OPDT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``grad_weight[c, d] = sum_r part[r, c, 3 - NDIM + d]`` in a fixed order."""
    k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    c = k // NDIM
    d = k - c * NDIM
    kmask = k < C * NDIM
    col = (c * 3 + (3 - NDIM) + d)[None, :]
    acc = tl.zeros([BLOCK_R, BLOCK_K], dtype=OPDT)
    for r0 in range(0, R, BLOCK_R):
        r = (r0 + tl.arange(0, BLOCK_R)).to(tl.int64)[:, None]
        acc += tl.load(part_ptr + (r * (C * 3) + col), mask=(r < R) & kmask[None, :],
                       other=0.0).to(OPDT)
    total = tl.sum(acc, axis=0)
    tl.store(gw_ptr + (c * sgwc + d * sgwd), total.to(gw_ptr.dtype.element_ty), mask=kmask)
