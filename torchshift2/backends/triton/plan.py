"""Launch planning for the Triton kernels: which kernel runs, its tile, grid and arguments.

Pure functions of shapes, strides and dtypes (no tensor data, no device query), so that a
plan can be made for FakeTensors inside a ``torch.library.triton_op`` and so that the
grad_weight reduction layout is the same on every GPU. Two kinds of numbers live here:

* **knobs** (``CONFIG``): the forward tile size, warps, tiles per program and the
  candidate / padding thresholds. They change speed, never a bit of any result (the two
  channels-last paths and the two column paths compute the same values, and forward
  outputs are independent per element); ``benchmarks/gpu_tune.py`` may sweep them.
* **the canonical backward layout** (``BWD_TILE_BYTES``, ``BWD_CHUNK_TILES``): the tile and
  chunk of positions whose lane terms one grad_weight partial sums. It is fixed, not a
  knob, so grad_weight is bitwise reproducible across GPUs and tunings (within a chunk
  the sum is order-independent, see :func:`.common.exact_sum`; across chunks the
  reduction walks rows in order). Only the warps of the backward follow ``CONFIG``.
"""

from __future__ import annotations

import struct
from typing import NamedTuple, Optional

import torch

from ... import _spec
from . import channels_last, inplace, planar, reduce
from .planar import SIZES  # noqa: F401  (re-exported for the tools)

#: Tunable launch configuration: results do not depend on it.
CONFIG = dict(
    TILE_BYTES=4096,      # bytes of one dtype per forward tile
    WARPS=8,              # most warps of a forward tile (8 elements per thread, fewer warps
                          # for smaller tiles)
    BWD_WARPS=8,          # the same for the backward
    CHUNK_TILES=8,        # forward tiles per program
    CL_BYTES=128,         # channels-last: bytes of the channel block of one position
    CMAX_FWD=16,          # channels-last forward: most candidates before the gather path
    CMAX_BWD=(6, 12, 24),  # the same for the backward, by number of spatial dims
    CPAD=8,               # planar: most padded columns fixed up after a funnelled read
    MAXNREG=128,          # register cap given to ptxas (without one it may spill to raise
                          # occupancy); a launch option, dropped under wrap_triton
)

#: The canonical grad_weight layout (not a knob: it defines how partial sums group lanes):
#: tiles of 1024 positions x channels (512 for float64), whatever the dtype's size, since
#: the backward accumulates in float32 / float64 registers.
BWD_TILE_BYTES = 4096
BWD_CHUNK_TILES = 8
REDUCE_BLOCK_R = 64
REDUCE_BLOCK_K = 32

_INT32_LIMIT = 2**31 - 1
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_NAN_BITS = {torch.float16: 0x7E00, torch.bfloat16: 0x7FC0, torch.float32: 0x7FC00000,
             torch.float64: 0x7FF8000000000000}


class Launch(NamedTuple):
    """One kernel launch: ``kernel[grid](*tensors, *scalars, **meta)``."""

    kernel: object
    grid: tuple
    scalars: tuple
    meta: dict


def pow2(n) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def log2(n: int) -> int:
    return max(0, int(n) - 1).bit_length()


def cdiv(a, b):
    return -(-a // b)


def opmath(dtype: torch.dtype):
    return planar.tl.float64 if dtype == torch.float64 else planar.tl.float32


def vec(t: torch.Tensor) -> int:
    """Elements of ``t``'s dtype in one 16-byte access (at most 8)."""
    return max(1, min(8, 16 // t.element_size()))


def spatial(t: torch.Tensor):
    """Sizes and strides of ``t``'s spatial dims padded in front to 3 (size 1, stride 0);
    strides of size-1 dims are 0 (they are never multiplied by anything else)."""
    pad = 5 - t.dim()
    sizes = [1] * pad + list(t.shape[2:])
    strides = [0] * pad + [s if n != 1 else 0 for n, s in zip(t.shape[2:], t.stride()[2:])]
    return sizes, strides


def lead_strides(t: torch.Tensor):
    """``(stride(0), stride(1))`` with size-1 dims' strides as 0."""
    return tuple(s if n != 1 else 0 for n, s in zip(t.shape[:2], t.stride()[:2]))


def needs_int64(*tensors: torch.Tensor) -> bool:
    """Whether offsets within a sample (or position counts) may overflow int32."""
    worst = 0
    for t in tensors:
        sizes = t.shape[1:]
        count = 1
        for size in sizes:
            count *= size
        span = sum((size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:]))
        worst = max(worst, span, count, 4 * max(sizes) + 16)
    return worst >= _INT32_LIMIT // 2


def planar_vec(t: torch.Tensor, row_length: int) -> int:
    """Vector width for rows of ``t`` (planar kernels): the innermost dim contiguous, every
    plane and row start and the row length multiples of the vector, else 1."""
    v = vec(t)
    sizes, strides = spatial(t)
    if v == 1 or sizes[2] == 1 or strides[2] != 1 or row_length % v:
        return 1
    if any(s % v for s in (*lead_strides(t), strides[0], strides[1])):
        return 1
    return v


def cl_vec(t: torch.Tensor, channels: int, cap: int = 8) -> int:
    """Vector width along the channels of a channels-last ``t`` (at most ``cap``), else 1."""
    v = min(vec(t), cap)
    sizes, strides = spatial(t)
    sn, sc = lead_strides(t)
    if v == 1 or channels % v or (sc != 1 and t.shape[1] != 1):
        return 1
    if any(s % v for s in (sn, *strides)):
        return 1
    return v


def options(warps: int) -> dict:
    """Launch options of a main kernel."""
    return dict(num_warps=warps, maxnreg=CONFIG["MAXNREG"])


def warps_for(elements: int, knob: str = "WARPS", per_thread: int = 8) -> int:
    """Warps for a tile of ``elements``: ``per_thread`` elements per thread, at most
    ``CONFIG[knob]``."""
    return max(1, min(CONFIG[knob], elements // (32 * per_thread)))


def planar_tile(rows, cols, itemsize, v, tile_bytes):
    """``(BR, BW)``: whole rows of up to a tile, at least one vector wide."""
    elements = max(64, tile_bytes // itemsize)
    bw = min(max(pow2(cols), v), elements)
    br = max(1, min(elements // bw, pow2(rows)))
    return br, bw


def cl_tile(sizes, channels, ndim, itemsize, v, tile_bytes):
    """``(BC, T0, T1, T2)``: a channel block of ``CL_BYTES`` and a box of positions."""
    elements = max(64, tile_bytes // itemsize)
    bc = max(v, min(pow2(channels), max(1, CONFIG["CL_BYTES"] // itemsize), 64))
    tp = max(1, elements // bc)
    t2 = min(pow2(sizes[2]), 8 if ndim >= 2 else tp)
    t1 = min(pow2(sizes[1]), max(1, tp // t2))
    t0 = min(pow2(sizes[0]), max(1, tp // (t1 * t2)))
    return bc, t0, t1, t2


def _bwd_tile_bytes(itemsize: int) -> int:
    """Bytes of the canonical backward tile: ``BWD_TILE_BYTES`` of 4-byte elements (so 1024
    elements for float32, bfloat16 and half alike; 512 for float64)."""
    return BWD_TILE_BYTES // 4 * itemsize if itemsize < 4 else BWD_TILE_BYTES


def check(input: torch.Tensor, weight: torch.Tensor, padding: str, interpreted: bool):
    """``(ndim, padding code, k)``; raises for anything a kernel could not index safely."""
    ndim = input.dim() - 2
    if ndim not in (1, 2, 3):
        raise ValueError(f"input: expected (N, C, *L) with 1-3 spatial dims, got shape "
                         f"{tuple(input.shape)}")
    channels = input.shape[1]
    rows = weight.shape[0] if weight.dim() == 2 else -1
    if (weight.dim() != 2 or weight.shape[1] != ndim or rows < channels
            or (channels and rows % channels) or (not channels and rows)):
        raise ValueError(f"weight: expected (k*C, D) = (k*{channels}, {ndim}) for an integer "
                         f"k >= 1, got {tuple(weight.shape)}")
    if not weight.dtype.is_floating_point:
        raise TypeError(f"weight: expected a floating dtype, got {weight.dtype}")
    if input.device != weight.device:
        raise RuntimeError(f"weight: expected the device of input ({input.device}), got "
                           f"{weight.device}")
    if input.device.type != "cuda" and not interpreted:
        raise RuntimeError(
            f"backend 'triton': expected CUDA tensors, got device {input.device} (CPU tensors "
            "run only under the Triton interpreter, TRITON_INTERPRET=1 set before triton is "
            "imported)")
    return ndim, _spec.padding_code(padding), _spec.multiplier(channels, rows)


def fill_bits(dtype: torch.dtype, fill) -> int:
    """The bit pattern of ``fill`` in ``dtype`` as an int of the same width (SSL copies
    bits through integer views). Host arithmetic only: no tensor is created."""
    if dtype == torch.float64:
        return struct.unpack("<q", struct.pack("<d", float(fill)))[0]
    if dtype == torch.float32:
        return struct.unpack("<i", struct.pack("<f", float(fill)))[0]
    if dtype == torch.float16:
        return struct.unpack("<h", struct.pack("<e", float(fill)))[0]
    if dtype == torch.bfloat16:
        bits = struct.unpack("<I", struct.pack("<f", float(fill)))[0]
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return bits - 0x10000 if bits >= 0x8000 else bits
    if dtype == torch.bool:
        return int(bool(fill))
    return int(fill)


def forward(out, x, weight, padding, active, crop, fill, dtype, interpreted
            ) -> Optional[Launch]:
    """The forward launch into ``out`` (``x`` / ``out`` already integer views for SSL, whose
    real dtype is ``dtype``); ``None`` when ``out`` is empty."""
    ndim, code, k = check(x, weight, padding, interpreted)
    if out.numel() == 0:
        return None
    n, c = x.shape[:2]
    kc = weight.shape[0]
    lengths, sx = spatial(x)
    outs, so = spatial(out)
    sxn, sxc = lead_strides(x)
    son, soc = lead_strides(out)
    before = [0] * (3 - ndim) + [int(crop[2 * d]) for d in range(ndim)]
    itemsize = x.element_size()
    if active:
        fill_value, nan_fill = 0.0, float("nan")
    else:
        fill_value = fill_bits(dtype, fill)
        nan_fill = _NAN_BITS.get(dtype, fill_value)
    common = dict(PAD=code, NDIM=ndim, ACTIVE=bool(active), BIG=needs_int64(x, out),
                  OPDT=opmath(dtype))
    if _spec.is_channels_last(out):
        vx = cl_vec(x, c) if k == 1 else 1
        vo = cl_vec(out, kc)
        bc, t0, t1, t2 = cl_tile(outs, kc, ndim, itemsize, max(vx, vo), CONFIG["TILE_BYTES"])
        tg = [cdiv(outs[d], t) for d, t in enumerate((t0, t1, t2))]
        tiles = tg[0] * tg[1] * tg[2]
        blocks = cdiv(kc, bc)
        m = min(tiles, CONFIG["CHUNK_TILES"])
        chunks = cdiv(tiles, m)
        programs = n * blocks * chunks
        scalars = (c, kc, k, *lengths, *outs, *before, sxn, sxc, *sx, son, soc, *so,
                   weight.stride(0), weight.stride(1), tg[1], tg[2], tiles, blocks, chunks, m,
                   fill_value, nan_fill, CONFIG["CMAX_FWD"])
        meta = dict(common, MULTI=k != 1, VX=vx, VO=vo, BC=bc, T0=t0, T1=t1, T2=t2,
                    **options(warps_for(bc * t0 * t1 * t2)))
        kernel = channels_last.cl_forward
    else:
        vx = planar_vec(x, lengths[2])
        vo = planar_vec(out, outs[2])
        rows = outs[0] * outs[1]
        br, bw = planar_tile(rows, outs[2], itemsize, max(vx, vo), CONFIG["TILE_BYTES"])
        tiles_q = cdiv(outs[2], bw)
        tiles = cdiv(rows, br) * tiles_q
        m = min(tiles, CONFIG["CHUNK_TILES"])
        chunks = cdiv(tiles, m)
        programs = n * kc * chunks
        scalars = (kc, k, *lengths, outs[1], outs[2], *before, rows, sxn, sxc, *sx, son, soc,
                   *so, weight.stride(0), weight.stride(1), tiles_q, tiles, chunks, m,
                   fill_value, nan_fill, CONFIG["CPAD"])
        meta = dict(common, VX=vx, VO=vo, BR=br, BW=bw, **options(warps_for(br * bw)))
        kernel = planar.planar_forward
    _check_programs(programs)
    return Launch(kernel, (programs,), scalars, meta)


def backward(grad_input, grad_output, x, weight, padding, active, crop, need_gi, need_gw,
             interpreted):
    """``(main launch, partial rows, reduce launch or None)`` of the backward, or ``None``
    when there is nothing to compute (empty tensors)."""
    ndim, code, k = check(x, weight, padding, interpreted)
    if not x.dtype.is_floating_point:
        raise TypeError(f"input: gradients need a floating dtype, got {x.dtype}")
    if x.numel() == 0 or grad_output.numel() == 0:
        return None
    n, c = x.shape[:2]
    kc = weight.shape[0]
    lengths, sx = spatial(x)
    outs, sg = spatial(grad_output)
    _, si = spatial(grad_input)
    sxn, sxc = lead_strides(x)
    sgn, sgc = lead_strides(grad_output)
    sin, sic = lead_strides(grad_input)
    before = [0] * (3 - ndim) + [int(crop[2 * d]) for d in range(ndim)]
    itemsize = x.element_size()
    multi = k != 1
    common = dict(PAD=code, NDIM=ndim, ACTIVE=bool(active), NEED_GI=bool(need_gi),
                  NEED_GW=bool(need_gw), MULTI=multi,
                  BIG=needs_int64(x, grad_output, grad_input), OPDT=opmath(x.dtype))
    cl = _spec.is_channels_last(grad_input)
    if cl:
        # At most 4 channels per thread: the backward keeps ~10 per-channel values and 4
        # accumulators per element in registers (16-bit dtypes: 8-byte accesses).
        vg = cl_vec(grad_output, kc, 4) if not multi else 1
        vx = cl_vec(x, c, 4)
        vi = cl_vec(grad_input, c, 4)
        bc, t0, t1, t2 = cl_tile(lengths, c, ndim, itemsize, max(vg, vx, vi),
                                 _bwd_tile_bytes(itemsize))
        tg = [cdiv(lengths[d], t) for d, t in enumerate((t0, t1, t2))]
        tiles = tg[0] * tg[1] * tg[2]
        blocks = cdiv(c, bc)
        m = 1 if multi else min(tiles, BWD_CHUNK_TILES)
        chunks = cdiv(tiles, m)
        programs = n * blocks * chunks
        scalars = (c, k, *lengths, *outs, *before, sgn, sgc, *sg, sxn, sxc, *sx, sin, sic,
                   *si, weight.stride(0), weight.stride(1), tg[1], tg[2], tiles, blocks, chunks,
                   m, CONFIG["CMAX_BWD"][ndim - 1])
        meta = dict(common, VG=vg, VX=vx, VI=vi, BC=bc, T0=t0, T1=t1, T2=t2,
                    LOG2N=log2(t0 * t1 * t2),
                    **options(warps_for(bc * t0 * t1 * t2, "BWD_WARPS", max(2, vg, vx, vi))))
        kernel = channels_last.cl_backward
    else:
        vg = planar_vec(grad_output, outs[2])
        vx = planar_vec(x, lengths[2])
        vi = planar_vec(grad_input, lengths[2])
        rows = lengths[0] * lengths[1]
        br, bw = planar_tile(rows, lengths[2], itemsize, max(vg, vx, vi),
                             _bwd_tile_bytes(itemsize))
        tiles_q = cdiv(lengths[2], bw)
        tiles = cdiv(rows, br) * tiles_q
        m = 1 if multi else min(tiles, BWD_CHUNK_TILES)
        chunks = cdiv(tiles, m)
        programs = n * c * chunks
        scalars = (c, k, *lengths, *outs, *before, rows, sgn, sgc, *sg, sxn, sxc, *sx, sin,
                   sic, *si, weight.stride(0), weight.stride(1), tiles_q, tiles, chunks, m,
                   CONFIG["CPAD"])
        meta = dict(common, VG=vg, VX=vx, VI=vi, BR=br, BW=bw, LOG2N=log2(br * bw),
                    **options(warps_for(br * bw, "BWD_WARPS", max(2, vg, vx, vi))))
        kernel = planar.planar_backward
    _check_programs(programs)
    main = Launch(kernel, (programs,), scalars, meta)
    if not need_gw:
        return main, 0, None
    rows = n * (tiles if multi else chunks)
    reduce_launch = Launch(reduce.reduce_partials, (cdiv(kc * ndim, REDUCE_BLOCK_K),),
                           (rows, kc), dict(NDIM=ndim, BLOCK_R=REDUCE_BLOCK_R,
                                            BLOCK_K=REDUCE_BLOCK_K,
                                            LOG2R=log2(REDUCE_BLOCK_R), num_warps=4))
    return main, rows, reduce_launch


def shift_inplace(x, weight, padding, dtype, interpreted):
    """``(launch, scratch elements)`` of the in-place SSL (``x`` an integer view of a
    ``dtype`` tensor)."""
    ndim, code, k = check(x, weight, padding, interpreted)
    if k != 1:
        raise ValueError(f"weight: shift_ needs one shift per channel, (C, D) = "
                         f"({x.shape[1]}, {ndim}), got {tuple(weight.shape)}")
    n, c = x.shape[:2]
    lengths, sx = spatial(x)
    sxn, sxc = lead_strides(x)
    nan_fill = _NAN_BITS.get(dtype, 0)
    itemsize = x.element_size()
    big = needs_int64(x)
    budget = max(1, (32 << 20) // itemsize)
    if _spec.is_channels_last(x):
        v = cl_vec(x, c, 4)
        bc, t0, t1, t2 = cl_tile(lengths, c, ndim, itemsize, v, _bwd_tile_bytes(itemsize))
        tg = [cdiv(lengths[d], t) for d, t in enumerate((t0, t1, t2))]
        tiles = tg[0] * tg[1] * tg[2]
        blocks = cdiv(c, bc)
        planes = n * blocks
        slot = tiles * t0 * t1 * t2 * bc
        slots = max(1, min(planes, 1024, budget // slot))
        launch = Launch(inplace.cl_inplace, (slots,), (
            c, *lengths, sxn, sxc, *sx, weight.stride(0), weight.stride(1), tg[1], tg[2],
            tiles, blocks, planes, slots, nan_fill, CONFIG["CMAX_FWD"]),
            dict(PAD=code, NDIM=ndim, BIG=big, V=v, BC=bc, T0=t0, T1=t1, T2=t2,
                 **options(warps_for(bc * t0 * t1 * t2, "WARPS", 4))))
    else:
        v = planar_vec(x, lengths[2])
        rows = lengths[0] * lengths[1]
        br, bw = planar_tile(rows, lengths[2], itemsize, v, CONFIG["TILE_BYTES"])
        tiles_q = cdiv(lengths[2], bw)
        tiles = cdiv(rows, br) * tiles_q
        planes = n * c
        slot = rows * lengths[2]
        slots = max(1, min(planes, 1024, budget // slot))
        launch = Launch(inplace.planar_inplace, (slots,), (
            c, *lengths, rows, sxn, sxc, *sx, weight.stride(0), weight.stride(1), tiles_q,
            tiles, planes, slots, nan_fill, CONFIG["CPAD"]),
            dict(PAD=code, NDIM=ndim, BIG=big, V=v, BR=br, BW=bw, **options(warps_for(br * bw))))
    _check_programs(slots)
    return launch, slots * slot


def _check_programs(programs):
    if programs > _INT32_LIMIT:
        raise RuntimeError(f"torchshift2 triton: tensor too large ({programs} programs)")
