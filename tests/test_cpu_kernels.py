"""The C++ backend's own machinery: channels-last kernels over many channel blocks, the
in-place kernel, the output cache and the eager fast path (all against the reference)."""

import contextlib
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import torchshift2 as ts
from helpers import assert_close

CHANNELS = [1, 15, 16, 17, 40]


def channels_inner(x, gapped=False):
    """x with channels innermost; gapped: rows are not W x C blocks (a channel stride of 1 in
    a wider buffer), which the kernels first copy."""
    order = [0] + list(range(2, x.dim())) + [1]
    inverse = [order.index(i) for i in range(x.dim())]
    dense = x.permute(order).contiguous()
    if gapped:
        wide = torch.zeros(*dense.shape[:-1], dense.shape[-1] + 3, dtype=x.dtype)
        wide[..., : dense.shape[-1]] = dense
        dense = wide[..., : dense.shape[-1]]
    return dense.permute(inverse)


def grads(backend, x, weight, padding, active, crop, grad_output):
    x = x.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    with ts.use_backend(backend):
        out = ts.shift(x, weight, padding, active, crop)
        return (out, *torch.autograd.grad(out, (x, weight), grad_output))


@given(
    ndim=st.integers(1, 3),
    channels=st.sampled_from(CHANNELS),
    dtype=st.sampled_from([torch.float64, torch.float32, torch.bfloat16]),
    padding=st.sampled_from(ts.PADDINGS),
    active=st.booleans(),
    gapped=st.booleans(),
    scale=st.sampled_from([0.7, 2.5, 9.0]),
    no_cache=st.booleans(),
    data=st.data(),
)
def test_channels_last_kernels_match_oracle(ndim, channels, dtype, padding, active, gapped,
                                            scale, no_cache, data):
    # Channel blocks (16 float32 / 8 float64 lanes per vector), partial blocks, many distinct
    # shifts per block, reads through every padding, crops; no_cache: every call taken as
    # beyond the cache (csrc/cache.h: the taps prefetch their sources).
    from torchshift2.backends import cpp

    sizes = [data.draw(st.integers(1, 6)) for _ in range(ndim)]
    seed = data.draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, channels, *sizes, generator=generator, dtype=torch.float64)
    x = channels_inner(x.to(dtype), gapped)
    weight = torch.randn(channels, ndim, generator=generator, dtype=torch.float64) * scale
    crop = None
    if data.draw(st.booleans()):
        crop = [(data.draw(st.integers(0, s // 2)), data.draw(st.integers(0, s // 2)))
                for s in sizes]
    out_shape = ts._spec.output_shape(x.shape, ts._spec.normalize_crop(crop, sizes))
    grad_output = torch.randn(out_shape, generator=generator, dtype=torch.float64).to(dtype)
    with cpp.assumed_cache(0) if no_cache else contextlib.nullcontext():
        out, grad_input, grad_weight = grads("cpp", x, weight, padding, active, crop,
                                             grad_output)
    ref, ref_input, ref_weight = grads("reference", x, weight, padding, active, crop,
                                       grad_output)
    if not active:
        assert torch.equal(out, ref)
    assert_close(out, ref, dtype)
    assert_close(grad_input, ref_input, dtype)
    scale_w = max(1.0, float(ref_weight.abs().max()))
    assert_close(grad_weight / scale_w, ref_weight / scale_w,
                 torch.float64 if dtype == torch.float64 else dtype)
    assert out.stride() == ref.stride() and grad_input.stride() == ref_input.stride()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("padding", ts.PADDINGS)
@pytest.mark.parametrize("active", [False, True])
def test_channels_last_3d_through_planes_matches_oracle(dtype, padding, active):
    # 3 spatial dims go through transposed planes: 16-position tiles and a remainder
    # (5 x 6 x 7 = 210 positions), two whole channel blocks and a partial one (40 channels),
    # a crop, shifts beyond the size.
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 40, 5, 6, 7, generator=generator, dtype=torch.float64)
    x = x.to(dtype).contiguous(memory_format=torch.channels_last_3d)
    weight = torch.randn(40, 3, generator=generator, dtype=torch.float64) * 4
    crop = [(1, 0), (0, 2), (1, 1)]
    out_shape = ts._spec.output_shape(x.shape, ts._spec.normalize_crop(crop, [5, 6, 7]))
    grad_output = torch.randn(out_shape, generator=generator, dtype=torch.float64).to(dtype)
    grad_output = grad_output.contiguous(memory_format=torch.channels_last_3d)
    got = grads("cpp", x, weight, padding, active, crop, grad_output)
    want = grads("reference", x, weight, padding, active, crop, grad_output)
    for a, b in zip(got, want):
        assert_close(a, b, dtype)
    assert got[0].is_contiguous(memory_format=torch.channels_last_3d)
    assert got[1].is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("active", [False, True])
def test_channels_last_gathers_match_oracle(ndim, dtype, padding, active):
    # Channels-last samples that are not dense (a slice of the last spatial dim: rows are
    # still W x C blocks, so nothing is copied) take the gather kernels in 2D and 3D, whose
    # backward has one pass for zeros padding (grad_input and grad_weight from the same
    # gathers) and another for the other paddings. 40 channels: two whole blocks and a
    # partial one; shifts beyond the size, a crop.
    generator = torch.Generator().manual_seed(5)
    sizes = [5, 6, 9][3 - ndim:]
    memory_format = torch.channels_last if ndim == 2 else torch.channels_last_3d
    wide = torch.randn(2, 40, *sizes, generator=generator, dtype=torch.float64)
    x = wide.to(dtype).contiguous(memory_format=memory_format)[..., :7]
    weight = torch.randn(40, ndim, generator=generator, dtype=torch.float64) * 3
    crop = [(1, 0), (0, 2), (2, 1)][3 - ndim:]
    out_shape = ts._spec.output_shape(x.shape, ts._spec.normalize_crop(crop, list(x.shape[2:])))
    grad_output = torch.randn(out_shape, generator=generator, dtype=torch.float64).to(dtype)
    grad_output = grad_output.contiguous(memory_format=memory_format)
    assert not x.is_contiguous(memory_format=memory_format)
    got = []
    for backend in ("cpp", "reference"):
        # Not grads(): its clone() would make x dense.
        x.requires_grad_()
        weight.requires_grad_()
        with ts.use_backend(backend):
            out = ts.shift(x, weight, padding, active, crop)
            got.append((out, *torch.autograd.grad(out, (x, weight), grad_output)))
    for a, b in zip(*got):
        assert_close(a, b, dtype)


def check_float32_grads(x, weight, padding, active, crop, grad_output, memory_format):
    """The C++ kernels' output and gradients of a float32 ``x`` against the reference run in
    float64 (grad_weight sums hundreds of products per channel), and their memory format."""
    out, grad_input, grad_weight = grads("cpp", x, weight, padding, active, crop, grad_output)
    ref, ref_input, ref_weight = grads("reference", x.double(), weight, padding, active, crop,
                                       grad_output.double())
    assert_close(out, ref.float(), torch.float32)
    assert_close(grad_input, ref_input.float(), torch.float32)
    scale_w = float(ref_weight.abs().max())
    assert_close(grad_weight / scale_w, ref_weight / scale_w, torch.float32)
    assert out.is_contiguous(memory_format=memory_format)
    assert grad_input.is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("padding", ts.PADDINGS)
@pytest.mark.parametrize("active", [False, True])
def test_channels_last_2d_plane_groups_match_oracle(padding, active):
    # float32 2D channels-last goes through planes when a task's group of 16-channel blocks
    # fits half the L2: 197 channels of 24 x 23 positions are 13 blocks (the last one of 5
    # channels), several blocks per group and several groups per sample for an L2 of up to
    # 2 MiB (1 MiB budget: 9 + 4 blocks); 16-position tiles and a remainder (552 = 34 x 16 + 8).
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 197, 24, 23, generator=generator).contiguous(
        memory_format=torch.channels_last)
    weight = torch.randn(197, 2, generator=generator, dtype=torch.float64) * 3
    for crop in (None, [(2, 1), (0, 3)]):
        out_shape = ts._spec.output_shape(x.shape, ts._spec.normalize_crop(crop, [24, 23]))
        grad_output = torch.randn(out_shape, generator=generator).contiguous(
            memory_format=torch.channels_last)
        check_float32_grads(x, weight, padding, active, crop, grad_output,
                            torch.channels_last)


@pytest.mark.parametrize("padding", ["zeros", "reflect"])
@pytest.mark.parametrize("active", [False, True])
def test_channels_last_3d_spilled_plane_groups_match_oracle(padding, active):
    # Planes too large for half the L2 even for one block (24 x 24 x 12 positions: a
    # backward's three planes of 16 channels are 1.3 MiB): with a 1 MiB L2 they exceed all of
    # it and are grouped up to 8 budgets, 120 channels (8 blocks, the last one of 8 channels)
    # in three groups; with a 2 MiB L2 they fit it, one block per task.
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(1, 120, 24, 24, 12, generator=generator).contiguous(
        memory_format=torch.channels_last_3d)
    weight = torch.randn(120, 3, generator=generator, dtype=torch.float64) * 2
    grad_output = torch.randn(x.shape, generator=generator).contiguous(
        memory_format=torch.channels_last_3d)
    check_float32_grads(x, weight, padding, active, None, grad_output,
                        torch.channels_last_3d)


@pytest.mark.parametrize("active", [False, True])
def test_channels_last_2d_one_block_plane_groups_match_oracle(active):
    # A backward whose planes of one 16-channel block exceed half the L2 but fit all of it
    # (56 x 56 positions: 0.6 MiB with a 1 MiB L2) runs one block per task: 40 channels are
    # three tasks per sample, the last one of 8 channels.
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(1, 40, 56, 56, generator=generator).contiguous(
        memory_format=torch.channels_last)
    weight = torch.randn(40, 2, generator=generator, dtype=torch.float64) * 3
    grad_output = torch.randn(x.shape, generator=generator).contiguous(
        memory_format=torch.channels_last)
    check_float32_grads(x, weight, "zeros", active, None, grad_output, torch.channels_last)


@pytest.mark.parametrize("padding", ts.PADDINGS)
def test_bfloat16_active_forward_rounds_like_torch(padding):
    # The bfloat16 Active Shift forward computes in float32 and rounds each output (nearest
    # even, written branch-free in the C++ kernel): the same values as the float32 kernel's
    # output rounded by torch, special values included (NaN positions, infinities, float32
    # subnormals, values that round up to the largest bfloat16).
    generator = torch.Generator().manual_seed(7)
    for shape in [(2, 5, 37), (3, 7, 9, 13), (2, 3, 5, 6, 7)]:
        x = torch.randn(shape, generator=generator) * 3
        flat = x.view(-1)
        flat[::97], flat[5::89], flat[7::83] = float("nan"), float("inf"), -float("inf")
        flat[11::79], flat[13::71], flat[17::67] = 1e-39, -3e-40, 3.3895e38
        x = x.bfloat16()
        weight = torch.randn(shape[1], len(shape) - 2, generator=generator) * 2
        with ts.use_backend("cpp"):
            got = ts.shift(x, weight, padding, active=True)
            want = ts.shift(x.float(), weight, padding, active=True).bfloat16()
        assert torch.equal(got.isnan(), want.isnan())
        assert torch.equal(got.nan_to_num(0.0), want.nan_to_num(0.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.uint8, torch.int16,
                                   torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("padding", ts.PADDINGS)
def test_inplace_matches_oracle(dtype, layout, padding):
    torch.manual_seed(0)
    for shape in [(2, 20, 9), (2, 33, 5, 7), (1, 17, 3, 4, 5)]:
        ndim = len(shape) - 2
        x = (torch.randn(shape) * 9).to(dtype)
        if layout == "channels_last":
            x = channels_inner(x)
        elif layout == "strided":
            x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
        weight = torch.zeros(shape[1], ndim)
        moving = torch.rand(shape[1]) < 0.3
        weight[moving] = torch.randn(int(moving.sum()), ndim) * 4
        expected = ts.reference.shift(x, weight, padding)
        y = x.clone(memory_format=torch.preserve_format)
        assert ts.shift_(y, weight, padding) is y
        assert torch.equal(y, expected)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize("padding", ts.PADDINGS)
def test_long_runs_forward_and_inplace(dtype, padding):
    # csrc/copy.h: runs of several unrolled vector groups, a single vector and a partial
    # tail, misaligned by every shift; in place, slabs that overlap their source both ways
    # (shift 0 along the slab dim, +-rows along the next) and slabs moved between planes.
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 18, 3, 41, 45, generator=gen) * 9).to(dtype)
    shifts = [(a, b, c) for a in (-1, 0, 2) for b in (-3, 0, 1) for c in (-5, 0, 1)]
    weight = torch.tensor(shifts[:18], dtype=torch.float32)
    expected = ts.reference.shift(x, weight, padding)
    with ts.use_backend("cpp"):
        assert torch.equal(ts.shift(x, weight, padding), expected)
        y = x.clone()
        ts.shift_(y, weight, padding)
    assert torch.equal(y, expected)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("padding", ts.PADDINGS)
@pytest.mark.parametrize(
    "shape, crop",
    [
        ((2, 5, 1000), None),  # long rows: whole lines streamed from the source
        ((2, 6, 37, 41), None),  # rows and planes never line-aligned
        ((2, 6, 37, 41), [(3, 1), (0, 0)]),  # slot 1 cropped
        ((3, 7, 3, 5), None),  # planes smaller than a line
        ((4, 9, 6, 7), None),  # short rows: slabs made in a buffer
        ((2, 6, 60, 20), None),  # short rows, slabs larger than the buffer
        ((2, 4, 3, 19, 23), [(1, 0), (2, 3), (0, 0)]),  # 3D, slots 0, 1 cropped
    ],
)
@pytest.mark.parametrize("columns", ["most move", "few move"])
def test_streamed_forward_matches_oracle(dtype, padding, shape, crop, columns):
    # csrc/copy.h, LineStreamer: the SSL planar forward writes its output with streaming
    # stores when the call is large (here forced for every size), in runs: rows, edge
    # columns, whole slabs of unshifted columns, short-row slabs made in a buffer; and with
    # short rows only when few channels shift their columns ("few move"; planar_forward.cpp,
    # kShortRowBytes). grad_input alone (zeros or periodic padding, no crop) is the same
    # kernel with the negated shift.
    from torchshift2.backends import cpp
    from torchshift2.backends import reference as reference_backend

    gen = torch.Generator().manual_seed(2)
    ndim = len(shape) - 2
    x = (torch.randn(shape, generator=gen) * 9).to(dtype)
    weight = (torch.rand(shape[1], ndim, generator=gen) - 0.5) * 2.5 * max(shape[2:])
    weight[0] = 0
    if columns == "few move":
        weight[torch.arange(shape[1]) % 3 != 1, -1] = 0
    expected = ts.reference.shift(x, weight, padding, crop=crop)
    flat_crop = None if crop is None else [v for pair in crop for v in pair]
    with ts.use_backend("cpp"), cpp.assumed_cache(0):
        assert cpp.kernel_name("forward", x, padding, crop=flat_crop) == "ssl_forward_planar"
        assert torch.equal(ts.shift(x, weight, padding, crop=crop), expected)
        if dtype in (torch.float32, torch.float64) and crop is None and padding in (
            "zeros", "periodic"
        ):
            no_crop = [0] * 2 * ndim
            grad = torch.randn(shape, generator=gen).to(dtype)
            mask = (True, False)
            assert cpp.kernel_name("backward", x, padding, needs_grad_weight=False) == (
                "ssl_forward_planar [inverse shift]")
            grad_input, _ = cpp.backward(grad, x, weight, padding, False, no_crop, mask)
            expected_input, _ = reference_backend.backward(grad, x, weight, padding, False,
                                                           no_crop, mask)
            assert torch.equal(grad_input, expected_input)


@pytest.mark.parametrize("kernel", ["planes", "taps"])
@pytest.mark.parametrize("active", [False, True])
@pytest.mark.parametrize("shape", [(2, 32, 9, 11), (2, 16, 3, 5, 9)])
def test_streamed_channels_last_kernels_match_oracle(kernel, active, shape):
    # Beyond the cache (forced here) the planes kernels stream their rows, 16 positions x 16
    # channels at a time (cl_planes.cpp, from_planes; the backward's grad_input too), and
    # the taps their full blocks, four columns at a time (cl_forward.cpp).
    from torchshift2.backends import cpp

    gen = torch.Generator().manual_seed(3)
    x = channels_inner(torch.randn(shape, generator=gen))
    # Shifts within +-1.5: the taps' four-column steps need a common interior of 4 columns.
    weight = torch.rand(shape[1], len(shape) - 2, generator=gen) * 3 - 1.5
    grad_output = channels_inner(torch.randn(shape, generator=gen))
    with cpp.assumed_cache(0), cpp.kernel_override(kernel):
        out = cpp.forward(x, weight, "zeros", active, [0] * (2 * (len(shape) - 2)), 0.0)
    with cpp.assumed_cache(0):
        assert cpp.kernel_name("backward", x, active=active) == "backward_cl_planes"
        grad_input, grad_weight = grads("cpp", x, weight, "zeros", active, None, grad_output)[1:]
    ref, ref_input, ref_weight = grads("reference", x, weight, "zeros", active, None,
                                       grad_output)
    assert_close(out, ref, torch.float32)
    assert_close(grad_input, ref_input, torch.float32)
    assert_close(grad_weight, ref_weight, torch.float32)


# --- output cache ----------------------------------------------------------------------

def test_output_cache_reuses_freed_blocks_and_empties():
    from torchshift2.backends import cpp

    x = torch.randn(4, 16, 64, 64)  # 1 MiB: above the cache's threshold
    weight = torch.randn(16, 2)
    expected = ts.reference.shift(x, weight, "border")
    ts.shift(x, weight, "border")
    before = cpp.cache_info()
    for _ in range(3):
        out = ts.shift(x, weight, "border")
        assert torch.equal(out, expected)  # a reused block never leaks old values
        del out
    after = cpp.cache_info()
    assert after["hits"] >= before["hits"] + 3
    assert after["free_bytes"] >= x.numel() * 4
    ts.backends.empty_cpu_cache()
    assert cpp.cache_info()["free_bytes"] == 0
    assert ts.backends.cpu_cache_info()["free_blocks"] == 0


CACHE_RUN = """
import torch, torchshift2 as ts
x = torch.randn(4, 16, 64, 64); w = torch.randn(16, 2)
outs = [ts.shift(x, w) for _ in range(4)]  # four 1 MiB blocks live at once
expected = ts.reference.shift(x, w)
assert all(torch.equal(o, expected) for o in outs)
del outs
info = ts.backends.cpu_cache_info()
print("FREE", info["free_bytes"], "LIMIT", info["limit_bytes"])
"""


@pytest.mark.parametrize("megabytes", [0, 2])
def test_output_cache_limit(megabytes):
    env = dict(os.environ, TORCHSHIFT2_CPU_CACHE_MB=str(megabytes))
    result = subprocess.run([sys.executable, "-c", CACHE_RUN], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    free, limit = (int(v) for v in result.stdout.split()[1::2])
    assert limit == megabytes << 20
    assert free <= limit  # the oldest free blocks were released (all of them when disabled)


# --- eager fast path -------------------------------------------------------------------

class OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
@pytest.mark.parametrize("active", [False, True])
def test_fast_path_equals_custom_op(memory_format, active):
    torch.manual_seed(1)
    x = torch.randn(2, 20, 6, 7)
    if memory_format == "channels_last":
        x = channels_inner(x)
    weight = torch.randn(20, 2) * 2
    grad_output = torch.randn(2, 20, 5, 7)
    crop = [(1, 0), (0, 0)]
    results = []
    for fast in (True, False):
        xr = x.clone().requires_grad_()
        wr = weight.clone().requires_grad_()
        if fast:
            out = ts.shift(xr, wr, "reflect", active, crop)
            assert "ShiftFunction" in out.grad_fn.name()
        else:
            out = ts.ops.shift(xr, wr, "reflect", active, [1, 0, 0, 0])
        results.append((out, *torch.autograd.grad(out, (xr, wr), grad_output)))
    for a, b in zip(*results):
        assert torch.equal(a, b) and a.stride() == b.stride()


@pytest.mark.parametrize("shape, layout", [((2, 20, 9), "contiguous"),
                                           ((2, 20, 6, 7), "contiguous"),
                                           ((2, 20, 6, 7), "channels_last"),
                                           ((2, 20, 6, 7), "gapped"),
                                           ((1, 17, 3, 4, 5), "channels_last")])
@pytest.mark.parametrize("active", [False, True])
def test_eager_entry_equals_custom_op(shape, layout, active):
    """ts.shift without crop runs in one C++ call (torchshift2_cpu::eager_shift), with the
    same values, gradients, strides and memory format as the custom op's."""
    torch.manual_seed(2)
    x = torch.randn(shape)
    if layout != "contiguous":
        x = channels_inner(x, gapped=layout == "gapped")
    weight = torch.randn(shape[1], len(shape) - 2) * 2
    grad_output = torch.randn(shape)
    ts.backends.cpp.build.load()  # the eager entry points exist once the library is loaded
    assert ts._eager.try_shift(x, weight, "circular", active) is not None
    results = []
    for fast in (True, False):
        xr = x.detach().requires_grad_()  # (a clone would not keep the gapped layout)
        wr = weight.clone().requires_grad_()
        out = ts.shift(xr, wr, "circular", active) if fast else ts.ops.shift(
            xr, wr, "periodic", active, [0, 0] * (len(shape) - 2))
        assert ("ShiftFunction" in out.grad_fn.name()) == fast
        results.append((out, *torch.autograd.grad(out, (xr, wr), grad_output)))
    for a, b in zip(*results):
        assert torch.equal(a, b) and a.stride() == b.stride()
    assert results[0][0].stride() == ts._spec.empty_output(x, [0, 0] * (len(shape) - 2)).stride()
    with torch.no_grad():
        assert ts.shift(x, weight, "circular", active).grad_fn is None


def test_eager_entry_declines_what_the_full_path_handles(monkeypatch):
    x = torch.randn(2, 3, 5, 6)
    weight = torch.randn(3, 2)
    ts.backends.cpp.build.load()
    eager = ts._eager.try_shift
    declined = [
        eager(x.long(), weight, "zeros", False),  # exact dtypes: the Python rules
        eager(x, weight[:, :1], "zeros", False),  # wrong weight shape
        eager(x, weight.long(), "zeros", False),
        eager(x, weight, "wrap", False),  # unknown padding
        eager(x, weight, ["zeros"], False),
        eager(x, weight, "zeros", 1),  # active not a bool
        eager(x[0], weight, "zeros", False),  # wrong dims
        eager(x, weight, "zeros", False, ndim=1),  # shift1d of a 4D input
        eager(torch.nn.Parameter(x), weight, "zeros", False),
        eager(torch.quantize_per_tensor(x, 0.1, 0, torch.quint8), weight, "zeros", False),
    ]
    assert all(result is None for result in declined)
    with ts.use_backend("reference"):
        assert eager(x, weight, "zeros", False) is None
        assert not ts._eager.try_shift_(x, weight, "zeros")
    monkeypatch.setenv("TORCHSHIFT2_BACKEND", "reference")
    assert eager(x, weight, "zeros", False) is None
    assert not ts._eager.try_shift_(x, weight, "zeros")
    monkeypatch.setenv("TORCHSHIFT2_BACKEND", " cpp ")
    assert eager(x, weight, "zeros", False) is not None
    monkeypatch.setenv("TORCHSHIFT2_BACKEND", "fastest")
    assert eager(x, weight, "zeros", False) is None
    with pytest.raises(ValueError, match="TORCHSHIFT2_BACKEND"):
        ts.shift(x, weight)  # the full path reports the unknown name


def test_eager_inplace_entry():
    x = torch.randn(2, 4, 5, 6)
    weight = torch.tensor([[0.0, 0.0], [1.0, -2.0], [0.2, 0.0], [3.0, 1.0]])
    expected = ts.shift(x, weight, "reflect")  # (loads the library)
    y = x.clone()
    version = y._version
    assert ts._eager.try_shift_(y, weight, "reflect")
    assert torch.equal(y, expected) and y._version > version
    assert not ts._eager.try_shift_(y.requires_grad_(), weight, "reflect")
    with pytest.raises(RuntimeError, match="in-place shifting has no gradient"):
        ts.shift_(y, weight)
    with torch.no_grad():
        assert ts._eager.try_shift_(y, weight, "reflect")
    assert not ts._eager.try_shift_(torch.empty(0, 4, 5, 6), weight, "reflect")


def test_fast_path_is_skipped_when_ops_are_intercepted():
    x = torch.randn(1, 3, 5)
    weight = torch.randn(3, 1)
    with OpLog() as log:
        ts.shift(x, weight, "zeros", True)
        ts.shift_(x.clone(), weight)
    assert "torchshift2.shift.default" in log.ops and "torchshift2.shift_.default" in log.ops
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fake = ts.shift(torch.empty(2, 3, 5, 6), torch.empty(3, 2), "periodic", True)
    assert fake.shape == (2, 3, 5, 6)
    with ts.use_backend("reference"):
        out = ts.shift(x.requires_grad_(), weight, "zeros", True)
    assert "ShiftFunction" not in out.grad_fn.name()


def test_fast_path_gradients_only_where_asked():
    x = torch.randn(1, 3, 5, requires_grad=True)
    weight = torch.randn(3, 1)
    out = ts.shift(x, weight, "border", True)
    (grad_x,) = torch.autograd.grad(out.sum(), x)
    assert grad_x.shape == x.shape and weight.grad is None
    weight.requires_grad_()
    out = ts.shift(x.detach(), weight, "border", True)
    (grad_w,) = torch.autograd.grad(out.sum(), weight)
    assert grad_w.shape == weight.shape
    with torch.inference_mode():
        assert ts.shift(x, weight).grad_fn is None


def test_fast_path_under_checkpoint_and_first_order_create_graph():
    x = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 1, dtype=torch.float64, requires_grad=True)

    def f(x, w):
        return ts.shift(x, w, "symmetric", True).sin()

    direct = torch.autograd.grad(f(x, weight).sum(), (x, weight))
    checkpointed = torch.utils.checkpoint.checkpoint(f, x, weight, use_reentrant=False)
    again = torch.autograd.grad(checkpointed.sum(), (x, weight))
    for a, b in zip(direct, again):
        assert_close(a, b)
    # create_graph=True for an unrelated reason: first-order gradients are still right.
    graph = torch.autograd.grad(f(x, weight).sum(), (x, weight), create_graph=True)
    for a, b in zip(direct, graph):
        assert_close(a.detach(), b.detach())


def test_nonfinite_weight_is_a_value_error_from_the_kernel():
    x = torch.randn(1, 2, 5)
    with pytest.raises(ValueError, match="weight"):
        torch.ops.torchshift2.shift(x, torch.tensor([[0.0], [float("nan")]]), "zeros", False,
                                    [0, 0])
    with pytest.raises(ValueError, match="weight"):
        ts.shift_(x, torch.tensor([[0.0], [float("inf")]]))


def test_more_than_two_to_the_31_elements():
    # int64 index arithmetic: a uint8 tensor of 2^31 + 6 elements, shifted along its last dim.
    length = 2**30 + 3
    x = torch.empty(1, 2, length, dtype=torch.uint8)
    x[:, :, :8] = torch.arange(1, 9, dtype=torch.uint8)
    x[:, :, -8:] = torch.arange(11, 19, dtype=torch.uint8)
    with torch.no_grad(), ts.use_backend("cpp"):
        out = ts.shift(x, torch.tensor([[2.0], [-3.0]]), "periodic")
    assert out[0, 0, :4].tolist() == [17, 18, 1, 2]
    assert out[0, 1, -4:].tolist() == [18, 1, 2, 3]
