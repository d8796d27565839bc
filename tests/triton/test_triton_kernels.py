"""The Triton backend against the reference oracle (SPEC §2-§5), run by the interpreter.

Small shapes only: the interpreter executes every program of a grid in numpy.
"""

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import torchshift2 as ts
import torchshift2.backends.triton as triton_backend
from torchshift2 import _spec
from helpers import FORMATS, TEST_DEVICE as DEVICE, assert_close, layout, shift_cases, \
    shift_with_grads

# No shrinking: under the interpreter it can take minutes; failures print their example.
# Example counts sized for the whole directory to stay within a few minutes on 2 cores.
FEW = settings(max_examples=8, deadline=None, derandomize=True,
               phases=(Phase.explicit, Phase.generate),
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SOME = settings(FEW, max_examples=16)


def _compare(x, weight, padding, active, crop, grad_dtype_scale=False):
    out, grads = shift_with_grads("triton", x, weight, padding, active, crop)
    ref, ref_grads = shift_with_grads("oracle", x, weight, padding, active, crop)
    assert out.dtype == x.dtype and out.shape == ref.shape and out.stride() == ref.stride()
    assert_close(out, ref, x.dtype)
    if grads is None:
        return
    (grad_input, grad_weight), (ref_input, ref_weight) = grads, ref_grads
    assert grad_input.dtype == x.dtype and grad_input.shape == x.shape
    assert grad_weight.dtype == weight.dtype
    assert_close(grad_input, ref_input, x.dtype)
    if grad_dtype_scale:  # sums of many low-precision products: relative to their scale
        scale = max(1.0, float(ref_weight.abs().max()))
        assert_close(grad_weight / scale, ref_weight / scale, x.dtype)
    else:
        assert_close(grad_weight, ref_weight, torch.promote_types(x.dtype, weight.dtype))


@SOME
@given(case=shift_cases())
def test_float64_forward_and_gradients_match_oracle(case):
    _compare(*case)


@FEW
@given(case=shift_cases(dtypes=(torch.float32,)))
def test_float32_matches_oracle(case):
    _compare(*case, grad_dtype_scale=True)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="the interpreter's bfloat16 / half "
                    "arithmetic is unreliable upstream: evidence only on a GPU")
@FEW
@given(case=shift_cases(dtypes=(torch.float16, torch.bfloat16)))
def test_low_precision_matches_oracle(case):
    _compare(*case, grad_dtype_scale=True)


@FEW
@given(case=shift_cases(max_size=4), dtype=st.sampled_from(
    [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool]))
def test_integer_dtypes_shift_exactly(case, dtype):
    x, weight, padding, _, crop = case
    x = (x * 100).to(dtype)
    with torch.no_grad(), ts.use_backend("triton"):
        out = ts.shift(x, weight, padding, False, crop)
    expected = ts.reference.shift(x, weight, padding, False, crop)
    assert out.dtype == dtype and out.stride() == expected.stride()
    assert torch.equal(out, expected)


def test_ssl_forward_copies_float_bits_exactly():
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, device=DEVICE)
    x[0, 0, 0, 0] = float("nan")
    x[0, 1, 1, 1] = float("-inf")
    x[1, 2, 2, 2] = -0.0
    weight = torch.tensor([[1.0, -1.0], [0.4, 2.6], [-3.5, 0.5]], device=DEVICE)
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        with torch.no_grad(), ts.use_backend("triton"):
            out = ts.shift(x.to(dtype), weight, "periodic")
        expected = ts.reference.shift(x.to(dtype), weight, "periodic")
        bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[out.element_size()]
        assert torch.equal(out.view(bits), expected.view(bits)), dtype


@pytest.mark.skipif(DEVICE.type != "cpu", reason="quantized tensors are CPU-only")
def test_quantized_zeros_padding_fills_with_zero_point():
    x = torch.quantize_per_tensor(torch.randn(2, 3, 6), 0.1, 17, torch.quint8)
    weight = torch.tensor([[2.0], [-3.0], [0.0]])
    with ts.use_backend("triton"):
        out = ts.shift(x, weight)
    expected = ts.reference.shift(x, weight)
    assert torch.equal(out.int_repr(), expected.int_repr())
    assert out.q_zero_point() == 17 and (out.int_repr()[0, 0, :2] == 17).all()


@FEW
@given(
    ndim=st.integers(1, 3),
    size=st.sampled_from([1, 2, 3, 7]),
    padding=st.sampled_from(ts.PADDINGS),
    active=st.booleans(),
    magnitude=st.sampled_from([10.0, 1e3, 1e6, 1e30, 1e300]),
    channels_last=st.booleans(),
    data=st.data(),
)
def test_extreme_shifts_and_size_one_dims(ndim, size, padding, active, magnitude,
                                         channels_last, data):
    sizes = [data.draw(st.sampled_from([1, size])) for _ in range(ndim)]
    x = torch.randn(2, 3, *sizes, dtype=torch.float64, device=DEVICE)
    if channels_last:
        x = layout(x, "channels_last")
    signs = torch.tensor(data.draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=3 * ndim,
                                            max_size=3 * ndim)), dtype=torch.float64)
    weight = signs.reshape(3, ndim) * (magnitude + torch.rand(3, ndim, dtype=torch.float64))
    if magnitude < 1e38:  # float32 would turn 1e300 into inf (rejected on CPU)
        weight = weight.to(data.draw(st.sampled_from([torch.float32, torch.float64])))
    weight = weight.to(DEVICE)
    crop = None
    if data.draw(st.booleans()):
        crop = [(s // 2, 0) for s in sizes]
    out, (grad_input, grad_weight) = shift_with_grads("triton", x, weight, padding, active, crop)
    ref, (ref_input, ref_weight) = shift_with_grads("oracle", x, weight, padding, active, crop)
    assert torch.isfinite(out).all()
    assert_close(out, ref)
    assert_close(grad_input, ref_input)
    assert_close(grad_weight, ref_weight, weight.dtype)


@pytest.mark.parametrize("padding", ts.PADDINGS)
def test_exact_reduction_of_huge_shifts(padding):
    """1e30 and friends are exact integers in float64: the in-kernel reduction must give
    the true residue (torch.remainder of the reference is exact too)."""
    length = 7
    x = torch.arange(float(length), dtype=torch.float64, device=DEVICE)
    x = x.reshape(1, 1, length).repeat(1, 6, 1)
    weight = torch.tensor([[1e30], [-1e30], [3.7e22], [-(2.0**70)], [2.0**62 + 2**12],
                           [1e300]], dtype=torch.float64, device=DEVICE)
    with torch.no_grad(), ts.use_backend("triton"):
        out = ts.shift(x, weight, padding)
    ref = ts.reference.shift(x, weight, padding)
    assert torch.equal(out, ref)


# LESSONS.md #2 and #3: the adjoint with several outputs reading one input.
@pytest.mark.parametrize("padding, expected", [
    ("zeros", [100, 1000, 10000, 0, 0]),
    ("border", [111, 1000, 10000, 0, 0]),
    ("reflect", [100, 1010, 10001, 0, 0]),
    ("symmetric", [110, 1001, 10000, 0, 0]),
    ("periodic", [100, 1000, 10000, 1, 10]),
])
@pytest.mark.parametrize("active", [False, True])
def test_adjoint_examples_from_lessons(padding, expected, active):
    x = torch.zeros(1, 1, 5, dtype=torch.float64, requires_grad=True, device=DEVICE)
    weight = torch.tensor([[2.0]], dtype=torch.float64, requires_grad=True, device=DEVICE)
    g = torch.tensor([[[1.0, 10.0, 100.0, 1000.0, 10000.0]]], dtype=torch.float64, device=DEVICE)
    with ts.use_backend("triton"):
        out = ts.shift(x, weight, padding, active)
    (grad_input,) = torch.autograd.grad(out, x, g)
    assert grad_input.flatten().tolist() == expected


@pytest.mark.parametrize("padding", ["zeros", "reflect"])
def test_in_place_shift_through_the_op(padding):
    x = torch.randn(2, 3, 5, 4, device=DEVICE)
    weight = torch.tensor([[1.0, -2.0], [0.0, 0.0], [3.0, 1.0]], device=DEVICE)
    expected = ts.reference.shift(x, weight, padding)
    with torch.no_grad(), ts.use_backend("triton"):
        assert ts.shift_(x, weight, padding) is x
    assert torch.equal(x, expected)


def test_crop_to_empty_output_gives_zero_gradients():
    x = torch.randn(2, 3, 4, 5, requires_grad=True, device=DEVICE)
    weight = torch.randn(3, 2, requires_grad=True, device=DEVICE)
    with ts.use_backend("triton"):
        out = ts.shift(x, weight, "border", True, [(2, 2), (0, 0)])
    assert out.shape == (2, 3, 0, 5)
    grad_input, grad_weight = torch.autograd.grad(out.sum(), (x, weight))
    assert not grad_input.any() and not grad_weight.any()


def test_zeros_padding_shifts_along_size_one_axis():  # LESSONS.md #6
    x = torch.arange(5.0, device=DEVICE).reshape(1, 1, 1, 5)
    with ts.use_backend("triton"):
        out = ts.shift(x, torch.tensor([[2.0, 1.0]], device=DEVICE))
    assert torch.equal(out, torch.zeros_like(x))


@pytest.mark.parametrize("shape, memory_format, padding", [
    ((1, 2, 700), "contiguous", "border"),           # 1D rows wider than one tile
    ((1, 2, 20, 19), "contiguous", "reflect"),       # several row tiles and chunks per plane
    ((1, 40, 3, 4), "channels_last", "border"),      # several channel blocks
    ((1, 4, 9, 20), "channels_last", "reflect"),     # several position tiles and chunks
    ((1, 2, 3, 4, 30), "contiguous", "reflect"),
    ((1, 3, 5, 4, 6), "channels_last", "symmetric"),
])
def test_multi_tile_shapes(shape, memory_format, padding, config, monkeypatch):
    """Small tiles (64 float64 elements) so that small tensors span many tiles, chunks of
    tiles and channel blocks."""
    config(TILE_BYTES=512, CL_BYTES=32)
    monkeypatch.setattr(triton_backend._plan, "BWD_TILE_BYTES", 512)
    generator = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=generator, dtype=torch.float64)
    x = layout(x, memory_format).to(DEVICE)
    ndim = len(shape) - 2
    # Shifts up to ~5: several terms at the edges, and channel blocks wide enough for the
    # channels-last gather path (border adjoints cost the product of the run lengths).
    weight = torch.randn(shape[1], ndim, generator=generator, dtype=torch.float64) * 2
    weight = weight.to(DEVICE)
    crop = [(1, 2)] * ndim
    triton_backend._PLANS.clear()  # BWD_TILE_BYTES is not part of the cache key
    for active in (False, True):
        _compare(x, weight, padding, active, crop)
    triton_backend._PLANS.clear()


@pytest.mark.parametrize("active", [False, True])
def test_any_strides_for_weight_and_grad_output(active):
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64, device=DEVICE)
    # (C, D), not contiguous
    weight = (torch.randn(2, 4, dtype=torch.float64, device=DEVICE) * 3).t()
    x1 = x.clone().requires_grad_()
    w1 = weight.clone().requires_grad_()
    with ts.use_backend("triton"):
        out = ts.shift(x1, w1, "symmetric", active)
    out.sum().backward()  # grad_output is expanded: stride 0 everywhere
    x2 = x.clone().requires_grad_()
    w2 = weight.clone().requires_grad_()
    ts.reference.shift(x2, w2, "symmetric", active).sum().backward()
    assert_close(x1.grad, x2.grad)
    assert_close(w1.grad, w2.grad)


@pytest.mark.parametrize("memory_format", FORMATS)
def test_backward_is_deterministic(memory_format):
    generator = torch.Generator().manual_seed(3)
    x = layout(torch.randn(2, 3, 5, 6, generator=generator), memory_format).to(DEVICE)
    weight = torch.randn(3, 2, generator=generator) * 3
    weight = weight.to(DEVICE)
    g = torch.randn(2, 3, 5, 6, generator=generator).to(DEVICE)
    results = []
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(2):
            grad_input = _spec.empty_like_layout(x, x.shape)
            grad_weight = torch.empty_like(weight)
            triton_backend.backward_into(grad_input, grad_weight, g, x, weight, "border", True,
                                    [0, 0, 0, 0])
            results.append((grad_input, grad_weight))
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


@FEW
@given(case=shift_cases(max_size=4))
def test_int64_index_path(case):
    """The BIG (int64 offsets) variant of every kernel computes the same values."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(triton_backend._plan, "needs_int64", lambda *tensors: True)
        patch.setattr(triton_backend, "_PLANS", {})  # cached launch plans hold BIG
        _compare(*case)


@pytest.mark.parametrize("padding", ["reflect", "symmetric"])  # the others: test_training's sweep
def test_gradcheck_float64(padding):
    x = torch.randn(1, 1, 5, dtype=torch.float64, requires_grad=True, device=DEVICE)
    weight = torch.tensor([[-2.6]], dtype=torch.float64, requires_grad=True, device=DEVICE)
    with ts.use_backend("triton"):
        for active in (False, True):  # SSL: straight-through, so only grad_input is exact
            assert torch.autograd.gradcheck(
                lambda a, b: ts.shift(a, b, padding, active, [(1, 1)]),
                (x, weight.detach() if not active else weight))
