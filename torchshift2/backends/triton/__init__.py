"""Triton backend (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``).

The :class:`~torchshift2.backends.Backend` functions allocate their outputs
(:mod:`torchshift2._spec`'s layout rule) and call ``forward_into`` / ``backward_into``,
which write into preallocated outputs of any strides. The kernels live in :mod:`.kernels`; this module
chooses the layout (planar for contiguous outputs, channels-last for channels-last ones),
tile sizes and index width, and launches them on the current stream.

Behaviour worth knowing:

* Every tensor is addressed through its own strides; inputs that are neither contiguous nor
  channels-last are copied to contiguous first (cheaper than uncoalesced gathers).
* SSL forward copies bits: every dtype (floats, integers, bool, quantized ``int_repr``) is
  shifted exactly through an integer view of the same element size.
* Weights are reduced in-kernel (see :mod:`.kernels`): any finite magnitude is exact, and
  non-finite weights (NaN, +-inf; only reachable on CUDA, the CPU path rejects them) are
  treated as 0: the output is the unshifted (cropped) input and gradients are evaluated at
  a zero weight. No weight can make a kernel access memory out of bounds.
* Deterministic: no atomics anywhere. grad_input is a gather over the outputs reading each
  input element, grad_weight sums per-chunk partials in a fixed order.
* Launch arguments are computed once per (shapes, strides, dtypes, padding, mode, crop) and
  cached (``_PLANS``): a repeated call costs a dictionary lookup plus the Triton launches.
* One launch configuration (``TILE_BYTES``, ``WARPS``, ``CL_CHANNELS``), chosen by the sweep
  in ``benchmarks/gpu_tune.py`` on an H100 (``benchmarks/NOTES.md``); kernels are compiled
  per power-of-two block shape, not per tensor shape.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from ... import _spec
from . import kernels

__all__ = ["forward", "backward", "forward_into", "backward_into", "shift_inplace"]

name = "triton"

#: Launch configuration (benchmarks/gpu_tune.py sweeps these on a GPU): bytes of one dtype
#: per program tile, the warps of a full tile, and the widest channel block (channels-last).
TILE_BYTES = 4096
WARPS = 4
CL_CHANNELS = 64
_REDUCE_TILE = 1024
_INT32_LIMIT = 2**31 - 1
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _opmath(dtype: torch.dtype):
    return kernels.tl.float64 if dtype == torch.float64 else kernels.tl.float32


def _padded(t: torch.Tensor):
    """Spatial sizes and strides of ``t`` padded in front to 3 dims (size 1, stride 0)."""
    pad = 5 - t.dim()
    return [1] * pad + list(t.shape[2:]), [0] * pad + list(t.stride()[2:])


def _span(t: torch.Tensor) -> int:
    """Largest element offset of ``t`` relative to its sample (dims 1..)."""
    return sum((size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:]))


def _needs_int64(*tensors: torch.Tensor) -> bool:
    """Whether in-sample offsets (or position counts) may overflow int32."""
    worst = 0
    for t in tensors:
        sizes = t.shape[1:]
        count = 1
        for size in sizes:
            count *= size
        worst = max(worst, _span(t), count, 4 * max(sizes) + 16)
    return worst >= _INT32_LIMIT // 2


def _dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` if it is contiguous or channels-last (or has broadcast dims), else a contiguous copy."""
    if t.is_contiguous() or _spec.is_channels_last(t) or 0 in t.stride():
        return t
    return t.contiguous()


def _grid(channels_last: bool, n: int, c: int, spatial, element_size: int):
    """Tile shape and grid for a planar / channels-last walk over ``spatial`` positions.

    A tile holds ``TILE_BYTES`` of the dtype (at least 256 elements). Planar: the columns
    cover the innermost spatial dim (up to a whole tile wide), the rows the flattened
    leading dims. Channels-last: the columns cover up to ``CL_CHANNELS`` channels, the rows
    the flattened positions. Only these power-of-two block shapes are compile-time
    constants, so the kernels are compiled per shape class, not per shape.
    """
    tile = max(256, TILE_BYTES // element_size)
    s0, s1, s2 = spatial
    if channels_last:
        npos = s0 * s1 * s2
        block_b = min(_pow2(c), CL_CHANNELS, tile)
        block_a = max(1, min(tile // block_b, _pow2(npos)))
        tiles_a, tiles_b = _cdiv(npos, block_a), _cdiv(c, block_b)
        programs = n * tiles_a * tiles_b
    else:
        npos = s0 * s1
        block_b = min(_pow2(s2), tile)
        block_a = max(1, min(tile // block_b, _pow2(npos)))
        tiles_a, tiles_b = _cdiv(npos, block_a), _cdiv(s2, block_b)
        programs = n * c * tiles_a * tiles_b
    if programs > _INT32_LIMIT:
        raise RuntimeError(f"torchshift2 triton: tensor too large ({programs} programs)")
    # WARPS on full tiles, fewer for small tiles (at least 8 elements per thread).
    warps = max(1, min(WARPS, block_a * block_b // 256))
    return dict(npos=npos, tiles_a=tiles_a, tiles_b=tiles_b, BLOCK_A=block_a,
                BLOCK_B=block_b, num_warps=warps), programs


@functools.lru_cache(maxsize=None)
def _target_programs(device: torch.device) -> int:
    """Programs that keep the whole GPU busy (8 per multiprocessor). Under the interpreter:
    2, so that the tests walk the multi-tile loops."""
    if device.type != "cuda":
        return 2
    return 8 * torch.cuda.get_device_properties(device).multi_processor_count


def _chunking(device: torch.device, base: int, tiles_a: int):
    """``(chunks, iters)``: split ``tiles_a`` row tiles into chunks of ``iters`` so that
    ``base * chunks`` programs fill the device (grad_weight's partials get one row per
    chunk instead of one per tile)."""
    chunks = min(tiles_a, max(1, _cdiv(_target_programs(device), base)))
    iters = _cdiv(tiles_a, chunks)
    return _cdiv(tiles_a, iters), iters


def _device_guard(t: torch.Tensor):
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def _crop_before(crop, ndim: int):
    before = [int(crop[2 * d]) for d in range(ndim)]
    return [0] * (3 - ndim) + before


def _check(input: torch.Tensor, weight: torch.Tensor, padding: str):
    ndim = input.dim() - 2
    if ndim not in (1, 2, 3) or weight.dim() != 2 or tuple(weight.shape) != (input.shape[1], ndim):
        raise ValueError(
            f"torchshift2 triton: expected input (N, C, *L) with 1-3 spatial dims and weight "
            f"(C, D), got {tuple(input.shape)} and {tuple(weight.shape)}"
        )
    if input.device != weight.device:
        raise RuntimeError(f"weight: expected device {input.device}, got {weight.device}")
    if input.device.type != "cuda" and not _interpreted():
        raise RuntimeError(
            f"backend 'triton': expected CUDA tensors, got device {input.device} (CPU tensors "
            "run only under the Triton interpreter, TRITON_INTERPRET=1 set before triton is "
            "imported)"
        )
    return ndim, _spec.padding_code(padding)


def _interpreted() -> bool:
    return type(kernels._forward_kernel).__name__ == "InterpretedFunction"


#: Launch plans (grid, scalar arguments, compile-time constants) keyed on everything they
#: depend on, so that a repeated call costs a dictionary lookup instead of ~50 us of Python.
_PLANS: dict = {}
_PLAN_LIMIT = 1024
_MISSING = object()


def _signature(t: torch.Tensor):
    return t.device, t.dtype, tuple(t.shape), t.stride()


def _plan(key, build):
    plan = _PLANS.get(key, _MISSING)
    if plan is _MISSING:
        plan = build()  # raises on bad arguments: nothing is cached then
        if len(_PLANS) >= _PLAN_LIMIT:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan


def _forward_plan(out, input, weight, padding, active, crop, fill):
    ndim, code = _check(input, weight, padding)
    if out.numel() == 0:
        return None
    if active:
        if not (input.dtype.is_floating_point and out.dtype == input.dtype):
            raise TypeError(f"input: active=True needs a floating dtype, got {input.dtype}")
        view, x, o, fill_bits = None, input, out, 0
    else:
        # SSL is an exact copy: shift the bits of any dtype through an integer view.
        view = _INT_VIEW[input.element_size()]
        x, o = input.view(view), out.view(view)
        fill_bits = int(torch.tensor(fill, dtype=input.dtype).view(view).item())
    lengths, x_strides = _padded(x)
    out_sizes, o_strides = _padded(o)
    channels_last = _spec.is_channels_last(o)
    n, c = x.shape[:2]
    meta, programs = _grid(channels_last, n, c, out_sizes, input.element_size())
    corners = [2 if active and d >= 3 - ndim else 1 for d in range(3)]
    scalars = (
        c, *lengths, out_sizes[1], out_sizes[2], *_crop_before(crop, ndim),
        x.stride(0), x.stride(1), *x_strides,
        o.stride(0), o.stride(1), *o_strides,
        weight.stride(0), weight.stride(1), meta["npos"], meta["tiles_a"], meta["tiles_b"],
        fill_bits,
    )
    constexprs = dict(
        PAD=code, NDIM=ndim, ACTIVE=bool(active), CL=channels_last,
        BIG=_needs_int64(x, o), OPDT=_opmath(input.dtype),
        A0=corners[0], A1=corners[1], A2=corners[2],
        BLOCK_A=meta["BLOCK_A"], BLOCK_B=meta["BLOCK_B"], num_warps=meta["num_warps"],
    )
    return view, (programs,), scalars, constexprs


def forward(input, weight, padding, active, crop, fill):
    """SPEC §3 into a new tensor."""
    _spec.check_finite(weight)  # CPU tensors under the interpreter; a no-op on CUDA
    out = _spec.empty_output(input, crop)
    forward_into(out, input, weight, padding, active, crop, fill)
    return out


def backward(grad_output, input, weight, padding, active, crop):
    """SPEC §4 into new ``(grad_input, grad_weight)``."""
    _spec.check_finite(weight)
    grad_input, grad_weight = _spec.empty_grads(input, weight)
    backward_into(grad_input, grad_weight, grad_output, input, weight, padding, active, crop)
    return grad_input, grad_weight


def shift_inplace(input, weight, padding):
    """SSL in place: out of place into a new tensor, then copied back."""
    input.copy_(forward(input, weight, padding, False, [0, 0] * (input.dim() - 2), 0))


def forward_into(out, input, weight, padding, active, crop, fill):
    """SPEC §3 into the preallocated ``out`` (any strides; contiguous or channels-last)."""
    input = _dense(input)
    key = ("forward", _signature(out), _signature(input), _signature(weight), padding,
           bool(active), tuple(crop), fill, TILE_BYTES, WARPS, CL_CHANNELS)
    plan = _plan(key, lambda: _forward_plan(out, input, weight, padding, active, crop, fill))
    if plan is None:
        return
    view, grid, scalars, constexprs = plan
    x, o = (input, out) if view is None else (input.view(view), out.view(view))
    with _device_guard(x):
        kernels._forward_kernel[grid](x, o, weight, *scalars, **constexprs)


def _backward_plan(grad_input, grad_weight, grad_output, input, weight, padding, active, crop):
    ndim, code = _check(input, weight, padding)
    if not input.dtype.is_floating_point:
        raise TypeError(f"input: gradients need a floating dtype, got {input.dtype}")
    if input.numel() == 0 or grad_output.numel() == 0:
        return None
    n, c = input.shape[:2]
    lengths, x_strides = _padded(input)
    out_sizes, g_strides = _padded(grad_output)
    _, gi_strides = _padded(grad_input)
    crop_before = _crop_before(crop, ndim)
    opdt = _opmath(input.dtype)
    big = _needs_int64(input, grad_output, grad_input)
    common = dict(PAD=code, NDIM=ndim, BIG=big, OPDT=opdt)

    # grad_input: a gather over input positions, in grad_input's layout.
    channels_last = _spec.is_channels_last(grad_input)
    meta, programs = _grid(channels_last, n, c, lengths, input.element_size())
    corners = [2 if active and d >= 3 - ndim else 1 for d in range(3)]
    grad_input_launch = ((programs,), (
        c, *lengths, *out_sizes, *crop_before,
        grad_output.stride(0), grad_output.stride(1), *g_strides,
        grad_input.stride(0), grad_input.stride(1), *gi_strides,
        weight.stride(0), weight.stride(1), meta["npos"], meta["tiles_a"], meta["tiles_b"],
    ), dict(common, ACTIVE=bool(active), CL=channels_last,
            A0=corners[0], A1=corners[1], A2=corners[2],
            BLOCK_A=meta["BLOCK_A"], BLOCK_B=meta["BLOCK_B"], num_warps=meta["num_warps"]))

    # grad_weight: per-chunk partials over output positions, then a fixed-order sum.
    channels_last = _spec.is_channels_last(input)
    meta, _ = _grid(channels_last, n, c, out_sizes, input.element_size())
    chunks, iters = _chunking(input.device, (n if channels_last else n * c) * meta["tiles_b"],
                              meta["tiles_a"])
    programs = n * chunks * meta["tiles_b"] * (1 if channels_last else c)
    rows = n * chunks * (1 if channels_last else meta["tiles_b"])
    partials = ((rows, c, 3), torch.float64 if input.dtype == torch.float64 else torch.float32)
    corners = [2 if d >= 3 - ndim else 1 for d in range(3)]
    grad_weight_launch = ((programs,), (
        c, *lengths, out_sizes[1], out_sizes[2], *crop_before,
        grad_output.stride(0), grad_output.stride(1), *g_strides,
        input.stride(0), input.stride(1), *x_strides,
        weight.stride(0), weight.stride(1), meta["npos"], meta["tiles_a"], meta["tiles_b"],
        chunks, iters,
    ), dict(common, CL=channels_last, A0=corners[0], A1=corners[1], A2=corners[2],
            BLOCK_A=meta["BLOCK_A"], BLOCK_B=meta["BLOCK_B"], num_warps=meta["num_warps"]))

    block_k = min(_pow2(c * ndim), 32)
    block_r = max(1, min(_REDUCE_TILE // block_k, _pow2(rows)))
    reduce_launch = ((_cdiv(c * ndim, block_k),), (
        rows, c, grad_weight.stride(0), grad_weight.stride(1),
    ), dict(NDIM=ndim, OPDT=opdt, BLOCK_R=block_r, BLOCK_K=block_k,
            num_warps=max(1, min(4, block_r * block_k // 256))))
    return grad_input_launch, partials, grad_weight_launch, reduce_launch


def backward_into(grad_input, grad_weight, grad_output, input, weight, padding, active, crop):
    """SPEC §4 into the preallocated ``grad_input`` (input's shape) and ``grad_weight``."""
    input = _dense(input)
    grad_output = _dense(grad_output)
    key = ("backward", _signature(grad_input), _signature(grad_weight),
           _signature(grad_output), _signature(input), _signature(weight), padding,
           bool(active), tuple(crop), TILE_BYTES, WARPS, CL_CHANNELS)
    plan = _plan(key, lambda: _backward_plan(grad_input, grad_weight, grad_output, input,
                                             weight, padding, active, crop))
    if plan is None:
        grad_input.zero_()
        grad_weight.zero_()
        return
    (gi_grid, gi_scalars, gi_meta), (part_shape, part_dtype), gw, reduce = plan
    with _device_guard(input):
        kernels._grad_input_kernel[gi_grid](grad_output, grad_input, weight, *gi_scalars,
                                            **gi_meta)
        partials = torch.empty(part_shape, dtype=part_dtype, device=input.device)
        kernels._grad_weight_kernel[gw[0]](grad_output, input, weight, partials, *gw[1],
                                           **gw[2])
        kernels._reduce_partials_kernel[reduce[0]](partials, grad_weight, *reduce[1],
                                                   **reduce[2])
