"""``shift_`` on the GPU: SSL in place, touching only channels that move.

A shifted plane reads from anywhere in itself (periodic / reflect wrap around), so it
cannot be overwritten tile by tile. Each program owns a scratch *slot* and walks planes
``pid, pid + slots, ...``: a plane (planar) or a channel block of one sample
(channels-last) whose canonical rounded shift is 0 in every dim is skipped without a read
or a write; otherwise the program writes the shifted plane into its slot with the forward
tile code, waits at a CTA barrier, and copies the slot back (channels-last: only the
channels that move). No other program touches the plane, so the barrier is the only
synchronisation needed; the scratch is ``slots`` planes, not a copy of the tensor.
"""

from __future__ import annotations

import triton.language as tl

from . import channels_last as cl
from .planar import aligned, forward_tile, kernel, plane_shifts, tile_coords


@kernel
def planar_inplace(
    x_ptr, w_ptr, scratch_ptr,
    C, L0, L1, L2, R, sxn, sxc, sx0, sx1, sx2, swc, swd,
    tiles_q, tiles, planes, slots, nan_fill, CPAD,
    PAD: tl.constexpr, NDIM: tl.constexpr, BIG: tl.constexpr, V: tl.constexpr,
    BR: tl.constexpr, BW: tl.constexpr,
):
    """SSL in place over planes ``(n, c)`` (``x`` an integer view, any strides)."""
    if NDIM < 3:  # dims the input does not have: constants, so their arithmetic folds
        L0 = 1
    if NDIM < 2:
        L1 = 1
    pid = tl.program_id(0)
    sb = scratch_ptr + pid.to(tl.int64) * R * L2
    sx0 = aligned(sx0, V)
    sx1 = aligned(sx1, V)
    L2 = aligned(L2, V)
    for plane in range(pid, planes, slots):
        n = plane // C
        c = plane - n * C
        s0, s1, s2, r0, r1, r2, f0, f1, f2, bad = plane_shifts(w_ptr, c, swc, swd, L0, L1, L2,
                                                               PAD, NDIM, BIG, tl.float32)
        s0 = s0 + r0
        s1 = s1 + r1
        s2 = s2 + r2
        if (s0 != 0) | (s1 != 0) | (s2 != 0) | bad:
            xb = x_ptr + (n.to(tl.int64) * sxn + c.to(tl.int64) * sxc)
            for t in range(tiles):
                p0, p1, rmask, q, qmask, q0 = tile_coords(t, tiles_q, R, L1, L2, NDIM, BR, BW)
                if BIG:
                    p0 = p0.to(tl.int64)
                    p1 = p1.to(tl.int64)
                value = forward_tile(xb, s0, s1, s2, f0, f1, f2, p0, p1, rmask, q, q0, L0, L1,
                                     L2, L2, 0, 0, 0, sx0, sx1, sx2, 0, CPAD, PAD, NDIM, False,
                                     tl.float32, V, BR, BW)
                value = tl.where(bad, nan_fill, value).to(x_ptr.dtype.element_ty)
                tl.store(sb + (p0 * L1 + p1) * L2 + q, value, mask=rmask & qmask)
            tl.debug_barrier()
            for t in range(tiles):
                p0, p1, rmask, q, qmask, q0 = tile_coords(t, tiles_q, R, L1, L2, NDIM, BR, BW)
                if BIG:
                    p0 = p0.to(tl.int64)
                    p1 = p1.to(tl.int64)
                value = tl.load(sb + (p0 * L1 + p1) * L2 + q, mask=rmask & qmask)
                row = p0 * sx0 + p1 * sx1
                tl.store(xb + row + q * sx2, value, mask=rmask & qmask)
            tl.debug_barrier()


@kernel
def cl_inplace(
    x_ptr, w_ptr, scratch_ptr,
    C, L0, L1, L2, sxn, sxc, sx0, sx1, sx2, swc, swd,
    tg1, tg2, tiles, C_blocks, planes, slots, nan_fill, CMAX,
    PAD: tl.constexpr, NDIM: tl.constexpr, BIG: tl.constexpr, V: tl.constexpr,
    BC: tl.constexpr, T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr,
):
    """SSL in place over blocks ``(n, channel block)`` of a channels-last tensor; the copy
    back writes only the channels that move."""
    if NDIM < 3:  # dims the input does not have: constants, so their arithmetic folds
        L0 = 1
    if NDIM < 2:
        L1 = 1
    pid = tl.program_id(0)
    TP: tl.constexpr = T0 * T1 * T2
    sb = scratch_ptr + pid.to(tl.int64) * tiles * TP * BC
    C = aligned(C, V)
    sx0 = aligned(sx0, V)
    sx1 = aligned(sx1, V)
    sx2 = aligned(sx2, V)
    cols = tl.arange(0, BC)[None, :]
    slot = tl.arange(0, TP)[:, None] * BC + cols
    for plane in range(pid, planes, slots):
        n = plane // C_blocks
        cb = plane - n * C_blocks
        c = cb * BC + cols
        cmask = c < C
        s0, s1, s2, r0, r1, r2, f0, f1, f2, bad = cl.block_shifts(
            w_ptr, c, cmask, swc, swd, L0, L1, L2, PAD, NDIM, BIG, tl.float32)
        s0 = s0 + r0
        s1 = s1 + r1
        s2 = s2 + r2
        moving = cmask & ((s0 != 0) | (s1 != 0) | (s2 != 0) | bad)
        if tl.max(moving.to(tl.int32)) > 0:
            use_candidates = False
            lo0 = 0
            lo1 = 0
            lo2 = 0
            n1 = 1
            n2 = 1
            bits = 0
            if V > 1:
                lo0, lo1, lo2, n1, n2, bits, count, fits = cl.candidates(s0, s1, s2, cmask, 1, 1,
                                                                         1)
                use_candidates = fits & (count <= CMAX)
            xb = x_ptr + n.to(tl.int64) * sxn
            xc = c * sxc
            for t in range(tiles):
                p0, p1, p2, pmask = cl.box_positions(t, tg1, tg2, L0, L1, L2, NDIM, T0, T1, T2)
                if BIG:
                    p0 = p0.to(tl.int64)
                    p1 = p1.to(tl.int64)
                    p2 = p2.to(tl.int64)
                lane = pmask & cmask
                value = cl.forward_tile(xb, xc, p0, p1, p2, lane, use_candidates, bits, lo0,
                                        lo1, lo2, n1, n2, s0, s1, s2, f0, f1, f2, L0, L1, L2,
                                        0, 0, 0, sx0, sx1, sx2, 0, PAD, False, tl.float32, V,
                                        1, 1, 1, TP, BC)
                value = tl.where(bad, nan_fill, value).to(x_ptr.dtype.element_ty)
                tl.store(sb + t * (TP * BC) + slot, value, mask=lane)
            tl.debug_barrier()
            for t in range(tiles):
                p0, p1, p2, pmask = cl.box_positions(t, tg1, tg2, L0, L1, L2, NDIM, T0, T1, T2)
                if BIG:
                    p0 = p0.to(tl.int64)
                    p1 = p1.to(tl.int64)
                    p2 = p2.to(tl.int64)
                value = tl.load(sb + t * (TP * BC) + slot, mask=pmask & moving)
                pos = p0 * sx0 + p1 * sx1 + p2 * sx2
                tl.store(xb + pos + xc, value, mask=pmask & moving)
            tl.debug_barrier()
