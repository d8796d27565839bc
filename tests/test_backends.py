"""Every backend available here against the reference oracle (SPEC §1-§4)."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import torchshift2 as ts
from helpers import FORMATS, assert_close, layout, shift_cases, shift_with_grads

CPU_BACKENDS = ["cpp", "reference"]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(case=shift_cases())
def test_float64_matches_oracle(backend, case):
    x, weight, padding, active, crop = case
    out, (grad_input, grad_weight) = shift_with_grads(backend, x, weight, padding, active, crop)
    ref, (ref_input, ref_weight) = shift_with_grads("oracle", x, weight, padding, active, crop)
    assert out.shape == ref.shape and out.stride() == ref.stride()
    assert_close(out, ref)
    assert_close(grad_input, ref_input)
    assert grad_weight.dtype == weight.dtype
    assert_close(grad_weight, ref_weight, weight.dtype)


@given(case=shift_cases(dtypes=(torch.float32, torch.float16, torch.bfloat16)))
def test_low_precision_matches_oracle(case):
    x, weight, padding, active, crop = case
    out, (grad_input, grad_weight) = shift_with_grads("cpp", x, weight, padding, active, crop)
    ref, (ref_input, ref_weight) = shift_with_grads("oracle", x, weight, padding, active, crop)
    assert out.dtype == x.dtype and grad_input.dtype == x.dtype and out.stride() == ref.stride()
    assert_close(out, ref, x.dtype)
    assert_close(grad_input, ref_input, x.dtype)
    # grad_weight sums many products of low-precision values: compare relative to its scale.
    scale = max(1.0, float(ref_weight.abs().max()))
    assert_close(grad_weight / scale, ref_weight / scale, x.dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(case=shift_cases(), dtype=st.sampled_from(
    [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool, torch.uint16,
     torch.uint32, torch.uint64]))
def test_integer_dtypes_shift_exactly(backend, case, dtype):
    x, weight, padding, _, crop = case
    x = (x.abs() * 100).to(dtype)
    with torch.no_grad(), ts.use_backend(backend):
        out = ts.shift(x, weight, padding, False, crop)
    # The unsigned types the gather lacks (issue 18 item 8) are checked through int64.
    expected = ts.reference.shift(x.to(torch.int64), weight, padding, False, crop).to(dtype)
    assert out.dtype == dtype and torch.equal(out, expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(
    ndim=st.integers(1, 3),
    size=st.sampled_from([1, 2, 3, 7]),
    padding=st.sampled_from(ts.PADDINGS),
    active=st.booleans(),
    magnitude=st.sampled_from([10.0, 1e3, 1e6, 1e30]),
    data=st.data(),
)
def test_extreme_shifts_and_size_one_dims(backend, ndim, size, padding, active, magnitude, data):
    sizes = [data.draw(st.sampled_from([1, size])) for _ in range(ndim)]
    x = torch.randn(2, 3, *sizes, dtype=torch.float64)
    signs = torch.tensor(data.draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=3 * ndim,
                                            max_size=3 * ndim)), dtype=torch.float64)
    fractions = torch.rand(3, ndim, dtype=torch.float64)
    weight = signs.reshape(3, ndim) * (magnitude + fractions)
    out, (grad_input, grad_weight) = shift_with_grads(backend, x, weight, padding, active, None)
    ref, (ref_input, ref_weight) = shift_with_grads("oracle", x, weight, padding, active, None)
    assert torch.isfinite(out).all()
    assert_close(out, ref)
    assert_close(grad_input, ref_input)
    assert_close(grad_weight, ref_weight)


NP_MODES = {"zeros": "constant", "border": "edge", "periodic": "wrap", "reflect": "reflect",
            "symmetric": "symmetric"}


@given(length=st.integers(1, 9), shift=st.integers(-40, 40),
       padding=st.sampled_from(ts.PADDINGS))
def test_oracle_matches_numpy_pad(length, shift, padding):
    # The oracle itself is checked against np.pad, an independent definition of SPEC §2.
    x = np.arange(1, length + 1, dtype=np.float64)
    width = abs(shift) + 1
    if padding == "reflect" and length == 1:
        expected = np.full(length, x[0])
    else:
        expected = np.pad(x, width, mode=NP_MODES[padding])[width - shift: width - shift + length]
    out = ts.reference.shift(torch.from_numpy(x).reshape(1, 1, -1),
                             torch.tensor([[float(shift)]]), padding)
    np.testing.assert_array_equal(out.flatten().numpy(), expected)


def test_oracle_active_matches_loop_definition():
    # SPEC §3 written as a literal loop over corners, on a 2D example with borders.
    torch.manual_seed(3)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64)
    weight = torch.tensor([[0.3, -1.7], [2.5, 0.0]], dtype=torch.float64)
    out = ts.reference.shift(x, weight, "symmetric", True, [(1, 0), (0, 2)])
    expected = torch.zeros_like(out)
    for c, o0, o1 in itertools.product(range(2), range(3), range(3)):
        i0, i1 = o0 + 1, o1
        total = 0.0
        for a0, a1 in itertools.product((0, 1), repeat=2):
            coeff = 1.0
            for w, a in ((weight[c, 0], a0), (weight[c, 1], a1)):
                f = float(w - torch.floor(w))
                coeff *= f if a else 1 - f
            k0 = i0 - int(torch.floor(weight[c, 0])) - a0
            k1 = i1 - int(torch.floor(weight[c, 1])) - a1
            src = np.pad(x[0, c].numpy(), 20, mode="symmetric")[k0 + 20, k1 + 20]
            total += coeff * src
        expected[0, c, o0, o1] = total
    assert_close(out, expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_periodic_ssl_is_torch_roll(backend, ndim):
    torch.manual_seed(ndim)
    x = torch.randn(2, 4, *[5, 6, 3][:ndim])
    weight = torch.randint(-9, 9, (4, ndim)).float() + 0.2
    with ts.use_backend(backend):
        out = ts.shift(x, weight, "periodic")
    for c in range(4):
        shifts = tuple(int(round(float(v))) for v in weight[c])
        expected = torch.roll(x[:, c], shifts, dims=tuple(range(1, ndim + 1)))
        assert torch.equal(out[:, c], expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("memory_format", FORMATS)
def test_output_memory_format(backend, memory_format):
    for ndim in (1, 2, 3):
        x = layout(torch.randn(2, 3, *[4] * ndim), memory_format)
        with ts.use_backend(backend):
            out = ts.shift(x, torch.randn(3, ndim), "reflect", True, [(1, 0)] * ndim)
        expected_channels_last = memory_format == "channels_last"
        assert ts._spec.is_channels_last(out) == expected_channels_last
        if ndim == 2 and expected_channels_last:
            assert out.is_contiguous(memory_format=torch.channels_last)
        if ndim == 3 and expected_channels_last:
            assert out.is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("padding", ts.PADDINGS)
@pytest.mark.parametrize("shape", [(4, 3, 5), (2, 3, 4, 5), (2, 2, 3, 4, 3)])
@pytest.mark.parametrize("crop_kind", ["none", "crop"])
def test_gradcheck(backend, padding, shape, crop_kind):
    torch.manual_seed(0)
    ndim = len(shape) - 2
    crop = None if crop_kind == "none" else [(1, 0)] + [(0, 1)] * (ndim - 1)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    # Fractions away from integers: the active forward is smooth there, so finite
    # differences of the weight are meaningful.
    weight = (torch.randint(-6, 6, (shape[1], ndim)) + torch.rand(shape[1], ndim) * 0.6 + 0.2)
    weight = weight.double().requires_grad_()
    with ts.use_backend(backend):
        # Active: input and weight. SSL: the input (its weight gradient is straight-through
        # by design, checked against the active one in test_ssl_weight_gradient_...).
        assert torch.autograd.gradcheck(
            lambda x, w: ts.shift(x, w, padding, True, crop), (x, weight))
        assert torch.autograd.gradcheck(
            lambda x: ts.shift(x, weight.detach(), padding, False, crop), (x,))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(case=shift_cases())
def test_ssl_weight_gradient_is_the_active_one(backend, case):
    x, weight, padding, _, crop = case
    grad_output = None
    _, (_, ssl) = shift_with_grads(backend, x, weight, padding, False, crop, grad_output)
    _, (_, active) = shift_with_grads(backend, x, weight, padding, True, crop, grad_output)
    assert_close(ssl, active, weight.dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 0, 4, 4), (2, 3, 0, 4), (1, 2, 3, 0, 2)])
def test_empty_tensors(backend, shape):
    ndim = len(shape) - 2
    x = torch.randn(shape, requires_grad=True)
    weight = torch.randn(shape[1], ndim, requires_grad=True)
    with ts.use_backend(backend):
        out = ts.shift(x, weight, "periodic", True)
        out.sum().backward()
    assert out.shape == x.shape
    assert x.grad.shape == x.shape and weight.grad.shape == weight.shape


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_crop_to_nothing(backend):
    x = torch.randn(2, 3, 4, requires_grad=True)
    weight = torch.randn(3, 1, requires_grad=True)
    with ts.use_backend(backend):
        out = ts.shift(x, weight, "zeros", True, [(2, 2)])
        out.sum().backward()
    assert out.shape == (2, 3, 0)
    assert torch.equal(x.grad, torch.zeros_like(x)) and torch.equal(weight.grad, torch.zeros(3, 1))


def test_output_never_aliases_input():
    x = torch.randn(1, 2, 5)
    out = ts.shift(x, torch.zeros(2, 1))
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_double_backward_raises(backend):
    x = torch.randn(1, 2, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 1, dtype=torch.float64, requires_grad=True)
    with ts.use_backend(backend):
        out = ts.shift(x, weight, "zeros", True)
        (grad_x,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match="double backward"):
            grad_x.sum().backward()


def test_float32_weight_with_bfloat16_input_under_autocast():
    x = torch.randn(2, 4, 6, 6)
    layer = ts.Shift2d(4, active_flag=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer(x.bfloat16())
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and layer.weight.grad.dtype == torch.float32


def test_more_than_two_to_the_31_elements():
    # int64 index arithmetic: a uint8 tensor of 2^31 + 6 elements, shifted along its last dim.
    length = 2**30 + 3
    x = torch.empty(1, 2, length, dtype=torch.uint8)
    x[:, :, :8] = torch.arange(1, 9, dtype=torch.uint8)
    x[:, :, -8:] = torch.arange(11, 19, dtype=torch.uint8)
    with torch.no_grad():
        out = ts.shift(x, torch.tensor([[2.0], [-3.0]]), "periodic")
    assert out[0, 0, :4].tolist() == [17, 18, 1, 2]
    assert out[0, 1, -4:].tolist() == [18, 1, 2, 3]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(case=shift_cases(dtypes=(torch.float64, torch.float32)), k=st.integers(2, 3))
def test_channel_multiplier_equals_shifting_the_repeated_input(backend, case, k):
    # SPEC §1: output channel o reads input channel o // k; grad_input sums the k readers.
    x, weight, padding, active, crop = case
    weight = weight.repeat_interleave(k, 0) + torch.linspace(-2, 2, k * weight.shape[0],
                                                             dtype=weight.dtype)[:, None]
    out, (grad_input, grad_weight) = shift_with_grads(backend, x, weight, padding, active, crop)
    repeated = x.detach().requires_grad_()
    w = weight.detach().requires_grad_()
    ref = ts.reference.shift(repeated.repeat_interleave(k, 1), w, padding, active, crop)
    grad_output = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1),
                              dtype=torch.float64).to(x.dtype)
    ref_input, ref_weight = torch.autograd.grad(ref, (repeated, w), grad_output)
    # (repeat_interleave made the oracle's input contiguous: the layout is the input's)
    flat_crop = ts._spec.flat_crop(ts._spec.normalize_crop(crop, x.shape[2:]))
    assert out.shape == ref.shape
    assert out.stride() == ts._spec.empty_output(x, flat_crop, weight).stride()
    assert_close(out, ref.detach(), x.dtype)
    assert_close(grad_input, ref_input, x.dtype)
    scale = max(1.0, float(ref_weight.abs().max()))
    assert_close(grad_weight / scale, ref_weight / scale, x.dtype)


@given(case=shift_cases(), k=st.integers(1, 2), block=st.sampled_from([1, 7, 40]))
def test_reference_backend_in_blocks_matches_the_oracle(case, k, block):
    # The reference backend runs in blocks of samples and channels (bounded temporaries,
    # SPEC §5): tiny blocks must give the oracle's values and gradients.
    from torchshift2.backends import reference as backend

    x, weight, padding, active, crop = case
    weight = weight.repeat_interleave(k, 0)
    saved = backend.BLOCK_ELEMENTS
    backend.BLOCK_ELEMENTS = block
    try:
        out, (grad_input, grad_weight) = shift_with_grads("reference", x, weight, padding,
                                                          active, crop)
    finally:
        backend.BLOCK_ELEMENTS = saved
    oracle = x.repeat_interleave(k, 1) if k > 1 else x
    ref, (ref_input, ref_weight) = shift_with_grads("oracle", oracle, weight, padding, active,
                                                    crop)
    assert_close(out, ref)
    if k > 1:
        ref_input = ref_input.unflatten(1, (-1, k)).sum(2)
    assert_close(grad_input, ref_input)
    assert_close(grad_weight, ref_weight, weight.dtype)
