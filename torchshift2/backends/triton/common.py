"""Triton helpers shared by the kernel families (SPEC §2-§4 arithmetic).

Everything here is ``@triton.jit`` and inlined into the kernels of :mod:`.planar`,
:mod:`.channels_last` and :mod:`.inplace`; it works on scalars and on tensors alike.

Conventions used throughout:

* Geometry is padded to three spatial dims in front (size 1, shift 0, no crop): dim ``d``
  has input length ``L``, output length ``O`` and crop-before ``B``.
* A channel's integer shift is reduced once per program to a *canonical* representative
  (:func:`canonical`): zeros / border clamp to ``[-(L+2), L+2]`` (every larger shift reads
  only padding), periodic / reflect / symmetric take the residue nearest to 0 modulo their
  period. With it every index the kernels form lies in ``[-2L-4, 3L+4)``, so the padding
  map :func:`source` needs at most one wrap, and a small true shift stays small (a shift
  of -1 with reflect padding is -1, not ``2L-3``), which is what the fast paths need.
* Output position ``o`` of corner ``a`` reads virtual input position ``k = o + u`` with
  ``u = B - s - a`` (``s`` the canonical floor, or for SSL the canonical rounded shift).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def pick(A: tl.constexpr, x0, x1):
    """``x0`` for ``A == 0``, ``x1`` for ``A == 1`` (a compile-time choice)."""
    if A == 0:
        return x0
    else:
        return x1


@triton.jit
def wrap(x, P):
    """``x mod P`` for ``x`` in ``[-P, 2P)``, without division."""
    x = tl.where(x < 0, x + P, x)
    return tl.where(x >= P, x - P, x)


@triton.jit
def true_mod(x, P):
    """``x mod P`` in ``[0, P)`` for any integer ``x`` (``%`` truncates on the GPU)."""
    r = x % P
    return tl.where(r < 0, r + P, r)


@triton.jit
def _exact_mod(s, P):
    """``s mod P`` (in ``[0, P)``) of an integer-valued finite float64 ``s`` of any size.

    ``|s| < 4e18`` converts to int64 exactly. Larger values are ``mant * 2**k`` with a
    53-bit integer mantissa: ``mant mod P`` is multiplied by ``2**k`` modulo ``P``, 16 bits
    at a time (``P < 2**47``, so nothing overflows int64). Ordinary weights skip the loop.
    """
    a = tl.abs(s)
    small = a < 4.0e18
    r_small = tl.where(small, a, 0.0).to(tl.int64) % P
    bits = a.to(tl.int64, bitcast=True)
    k = tl.where(small, 0, ((bits >> 52) & 2047) - 1075)
    mant = (bits & 4503599627370495) | 4503599627370496
    r = tl.where(small, r_small, mant % P)
    for i in range(0, tl.max(k + tl.zeros([1], tl.int64)), 16):  # scalar or tensor k
        step = tl.minimum(tl.maximum(k - i, 0), 16)
        r = (r << step) % P
    return tl.where((s < 0) & (r != 0), P - r, r)


@triton.jit
def canonical(s, L, PAD: tl.constexpr):
    """The canonical int64 representative of the integer-valued float64 shift ``s`` (see the
    module docstring); any finite magnitude is reduced exactly."""
    if PAD <= 1:
        lim = s * 0.0 + (L + 2)  # float64
        return tl.minimum(tl.maximum(s, -lim), lim).to(tl.int64)
    else:
        zero = (s * 0.0).to(tl.int64)
        if PAD == 2:
            period = zero + L
        elif PAD == 3:
            period = tl.maximum(zero + (2 * L - 2), 1)
        else:
            period = zero + 2 * L
        r = _exact_mod(s, period)
        return tl.where(2 * r > period, r - period, r)


@triton.jit
def channel_shift(w_ptr, o, d, swc, swd, wmask, L, PAD: tl.constexpr, BIG: tl.constexpr,
                  OPDT: tl.constexpr):
    """Shift of output channel(s) ``o`` along spatial dim ``d`` (weight column ``d``).

    Returns ``(s, rc, frac, bad)``: ``s`` the canonical ``floor(w)``, ``rc`` in {0, 1} with
    ``round(w) = floor(w) + rc`` (half to even; the SSL shift), ``frac = w - floor(w)``
    rounded to the weight's dtype and then to ``OPDT`` (as the reference computes it) and
    ``bad`` whether ``w`` is NaN or infinite. A bad weight computes as 0 (so no index can go
    out of bounds); the caller turns its channel's results into NaN.
    """
    wdt = w_ptr.dtype.element_ty
    w = tl.load(w_ptr + o * swc + d * swd, mask=wmask, other=0.0).to(tl.float64)
    bad = (w - w) != 0.0  # NaN and +-inf
    w = tl.where(bad, 0.0, w)
    fl = tl.floor(w)
    fr = w - fl  # exact in float64
    half = fl * 0.5
    odd = tl.floor(half) != half
    rc = ((fr > 0.5) | ((fr == 0.5) & odd)).to(tl.int32)
    s = canonical(fl, L, PAD)
    if not BIG:
        s = s.to(tl.int32)
    return s, rc, fr.to(wdt).to(OPDT), bad


@triton.jit
def source(k, L, PAD: tl.constexpr):
    """SPEC §2 ``P(k)`` for a virtual position ``k = o + B - s - a`` read by a forward output
    ``o`` (``0 <= o < O``, ``B + O <= L``) with a canonical shift ``s`` and ``a`` in {0, 1}.

    Then ``k`` lies in ``[-L-1, 2L)`` for periodic, ``[-L, 2L-1)`` for reflect and
    ``[-L-1, 2L)`` for symmetric, within one period of ``[0, P)``: one wrap suffices.
    Returns ``(index in [0, L), inside)``; ``inside`` is only meaningful for zeros padding
    (the other paddings always read somewhere).
    """
    if PAD == 0:
        inside = (k >= 0) & (k < L)
        idx = tl.minimum(tl.maximum(k, 0), L - 1)
    elif PAD == 1:
        inside = k == k
        idx = tl.minimum(tl.maximum(k, 0), L - 1)
    elif PAD == 2:
        inside = k == k
        idx = wrap(k, L)
    elif PAD == 3:
        inside = k == k
        period = tl.maximum(2 * L - 2, 1)
        m = wrap(k, period)
        idx = tl.where(m < L, m, period - m)
    else:
        inside = k == k
        m = wrap(k, 2 * L)
        idx = tl.where(m < L, m, 2 * L - 1 - m)
    return idx, inside


@triton.jit
def _border_bounds(j, u, L, OL):
    """Border padding: the outputs ``o`` in ``[lo, hi]`` read input ``j`` (``k = o + u``)."""
    lo = tl.maximum(tl.where(j == 0, 0, j - u), 0)
    hi = tl.minimum(tl.where(j == L - 1, OL - 1, j - u), OL - 1)
    return lo, hi


@triton.jit
def adj_count(j, u, L, OL, PAD: tl.constexpr):
    """How many terms :func:`adj_term` needs for all of ``j`` (a scalar: the maximum).

    Outputs lie in ``[0, OL)`` with ``OL <= L <=`` the period, so each reflection family of
    ``j`` holds at most one of them: 1 term for zeros / periodic, 2 for reflect / symmetric
    when some ``j`` has a mirrored reader, the length of the clamped run for border.
    """
    if PAD == 1:
        lo, hi = _border_bounds(j, u, L, OL)
        count = tl.maximum(tl.max(hi - lo + 1), 1)
    elif PAD == 3:
        period = tl.maximum(2 * L - 2, 1)
        mirror = true_mod(-j - u, period)
        ok = (mirror < OL) & (j > 0) & (j < L - 1)
        count = 1 + tl.max(ok.to(tl.int32))
    elif PAD == 4:
        mirror = true_mod(2 * L - 1 - j - u, 2 * L)
        count = 1 + tl.max((mirror < OL).to(tl.int32))
    else:
        count = tl.max(j * 0 + 1)
    return count


@triton.jit
def adj_term(j, u, L, OL, t, PAD: tl.constexpr):
    """Term ``t`` of the adjoint along one dim: the output ``o`` (and whether it exists)
    whose read ``P(o + u)`` is input ``j``.

    zeros: ``o = j - u``; periodic: the ``o`` congruent to it modulo L; reflect / symmetric:
    one ``o`` per reflection family (t = 0 direct, t = 1 mirrored); border: the run of
    outputs clamped onto an edge, ``o = lo + t``.
    """
    if PAD == 0:
        o = j - u
        ok = (o >= 0) & (o < OL)
    elif PAD == 1:
        lo, hi = _border_bounds(j, u, L, OL)
        o = lo + t
        ok = o <= hi
    elif PAD == 2:
        o = true_mod(j - u, L)
        ok = o < OL
    elif PAD == 3:
        period = tl.maximum(2 * L - 2, 1)
        o = tl.where(t == 0, true_mod(j - u, period), true_mod(-j - u, period))
        ok = (o < OL) & ((t == 0) | ((j > 0) & (j < L - 1)))
    else:
        o = tl.where(t == 0, true_mod(j - u, 2 * L), true_mod(2 * L - 1 - j - u, 2 * L))
        ok = o < OL
    return o, ok


@triton.jit
def padded_count(u, L, OL):
    """How many outputs ``o`` in ``[0, OL)`` read through padding (``o + u`` outside
    ``[0, L)``): those before the start plus those past the end."""
    return tl.minimum(tl.maximum(-u, 0), OL) + tl.minimum(tl.maximum(u + OL - L, 0), OL)


# --- register funnel: a misaligned contiguous window from two aligned vectors ------------

@triton.jit
def _pieces(x, V: tl.constexpr):
    """``x`` of shape ``[R, V]`` as a tuple of its ``V`` columns (each ``[R]``)."""
    R: tl.constexpr = x.shape[0]
    if V == 1:
        return (tl.reshape(x, [R]),)
    else:
        even, odd = tl.split(tl.reshape(x, [R, V // 2, 2]))
        pe = _pieces(even, V // 2)
        po = _pieces(odd, V // 2)
        out = ()
        for i in tl.static_range(V // 2):
            out = out + (pe[i], po[i])
        return out


@triton.jit
def _assemble(p, V: tl.constexpr):
    """Inverse of :func:`_pieces`: ``V`` tensors ``[R]`` as one ``[R, V]``."""
    if V == 1:
        return p[0][:, None]
    else:
        even = ()
        odd = ()
        for i in tl.static_range(V // 2):
            even = even + (p[2 * i],)
            odd = odd + (p[2 * i + 1],)
        a = _assemble(even, V // 2)
        b = _assemble(odd, V // 2)
        return tl.reshape(tl.join(a, b), [a.shape[0], V])


@triton.jit
def funnel(lo, hi, m, V: tl.constexpr):
    """Lane ``i`` of vector ``v`` gets element ``i + m`` of ``lo[v] ++ hi[v]`` (``0 <= m <=
    V``), where ``lo`` / ``hi`` are tiles whose last dim is split into aligned vectors of
    ``V`` lanes and ``hi[v]`` is the vector after ``lo[v]``.

    This is how a window shifted by a misaligned amount is read with aligned 128-bit loads:
    the selection happens between registers of one thread (``m`` is uniform), no shared
    memory and no shuffles.
    """
    if V == 1:
        return tl.where(m == 0, lo, hi)
    else:
        shape: tl.constexpr = lo.shape
        R: tl.constexpr = lo.numel // V
        cat = _pieces(tl.reshape(lo, [R, V]), V) + _pieces(tl.reshape(hi, [R, V]), V)
        outs = ()
        for k in tl.static_range(V):
            r = cat[k]
            for j in tl.static_range(1, V + 1):
                r = tl.where(m == j, cat[k + j], r)
            outs = outs + (r,)
        return tl.reshape(_assemble(outs, V), shape)


# --- deterministic sums ----------------------------------------------------------------

@triton.jit
def _pow2(e):
    """``2.0 ** e`` as float64 for an int32/int64 ``e`` in ``[-1022, 1023]``."""
    return ((e.to(tl.int64) + 1023) << 52).to(tl.float64, bitcast=True)


@triton.jit
def exact_sum(v, AXIS: tl.constexpr, LOG2N: tl.constexpr):
    """Sum of ``v`` (float32 or float64) along ``AXIS`` that does not depend on the order in
    which the hardware adds: a float64 rounding of the exact sum of ``v`` rounded to a
    fixed-point grid.

    Every element is scaled by the same power of two, chosen from the largest magnitude
    (``max`` is exact in any order), so that it converts to int64 with ``62 - LOG2N - 1``
    bits of headroom-free precision below that magnitude (``2**LOG2N`` >= the count of
    summed elements); int64 addition is associative, so ``tl.sum``'s tree shape, the number
    of warps or the layout cannot change a bit of the result. NaN or infinities fall back
    to the float sum, which is NaN / infinite in any order.
    """
    a = tl.abs(v).to(tl.float64)
    mx = tl.max(a, axis=AXIS, keep_dims=True)
    nan = tl.max((v != v).to(tl.int32), axis=AXIS, keep_dims=True)
    finite = (mx < float("inf")) & (nan == 0)
    bits = mx.to(tl.int64, bitcast=True)
    e = tl.maximum(((bits >> 52) & 2047) - 1023, -1022)
    shift = (62 - LOG2N - 1) - e  # in [-1024 + 62 - LOG2N, 1022 + 62]
    half = shift // 2
    rest = shift - half
    scaled = (v.to(tl.float64) * _pow2(half)) * _pow2(rest)
    fixed = tl.where(finite, scaled, 0.0).to(tl.int64)
    total = tl.sum(fixed, axis=AXIS, keep_dims=True).to(tl.float64)
    exact = (total * _pow2(-half)) * _pow2(-rest)
    loose = tl.sum(v.to(tl.float64), axis=AXIS, keep_dims=True)
    return tl.where(finite, exact, loose)


# --- bit sets of small candidate boxes ----------------------------------------------------

@triton.jit
def _or(a, b):
    return a | b


@triton.jit
def or_reduce(x, AXIS: tl.constexpr):
    return tl.reduce(x, AXIS, _or)


@triton.jit
def popcount(x):
    """Number of set bits of a non-negative int64 scalar (SWAR)."""
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return (x * 0x0101010101010101) >> 56


@triton.jit
def lowest_bit(x):
    """Index of the lowest set bit of a positive int64 below ``2**62``."""
    low = x & (-x)
    return ((low.to(tl.float64).to(tl.int64, bitcast=True) >> 52) - 1023).to(tl.int32)
