"""``emulate_dw``: shift layers with the output shape of a depthwise convolution."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import torchshift2 as ts
from torchshift2.nn import depthwise_plan, extend_input, pool_output

LAYERS = {1: ts.Shift1d, 2: ts.Shift2d, 3: ts.Shift3d}
CONVS = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}
NP_MODES = {"zeros": "constant", "border": "edge", "periodic": "wrap", "reflect": "reflect",
            "symmetric": "symmetric"}


@st.composite
def conv_cases(draw):
    """A depthwise conv configuration and an input size it accepts."""
    ndim = draw(st.integers(1, 3))

    def per_dim(lo, hi):
        return draw(st.lists(st.integers(lo, hi), min_size=ndim, max_size=ndim))

    kernel, stride, dilation = per_dim(1, 5), per_dim(1, 3), per_dim(1, 3)
    padding = draw(st.sampled_from(["ints", "ints", "ints", "int", "same", "valid"]))
    if padding == "same" and any(s != 1 for s in stride):
        padding = "valid"
    if padding == "ints":
        padding = per_dim(0, 5)
    elif padding == "int":
        padding = draw(st.integers(0, 5))
    pads = ([0] * ndim if padding in ("valid", "same") else
            [padding] * ndim if isinstance(padding, int) else padding)
    sizes = []
    for d in range(ndim):
        extent = dilation[d] * (kernel[d] - 1) + 1
        low = 1 if padding == "same" else max(1, extent - 2 * pads[d])
        sizes.append(draw(st.integers(low, low + 5)))
    # A scalar stands for all dims, as nn.Conv accepts it.
    kernel = kernel[0] if draw(st.booleans()) and len(set(kernel)) == 1 else kernel
    return ndim, dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation), sizes


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@given(case=conv_cases(), mode=st.sampled_from(["zeros", "reflect", "replicate", "circular",
                                                "border", "periodic", "symmetric"]),
       active=st.booleans(), seed=st.integers(0, 2**16))
def test_output_shape_equals_the_depthwise_conv_shape(case, mode, active, seed):
    ndim, conv_args, sizes = case
    channels = 2
    torch.manual_seed(seed)
    x = torch.randn(2, channels, *sizes, dtype=torch.float64)
    conv = CONVS[ndim](channels, channels, groups=channels, **conv_args).double()
    layer = LAYERS[ndim](channels, active_flag=active, init_shift=0,
                         emulate_dw=dict(conv_args, padding_mode=mode)).double()
    expected = conv(x).shape
    out, loss = layer(x)
    assert out.shape == expected, (conv_args, sizes)
    assert out.dtype == x.dtype and torch.isfinite(out).all()
    assert layer.padding == ts._spec.canonical_padding(mode)
    (out.sum() + loss).backward()
    assert layer.weight.grad.shape == (channels, ndim)


@settings(max_examples=15)
@given(case=conv_cases(), mode=st.sampled_from(["zeros", "border", "periodic", "reflect",
                                                "symmetric"]), seed=st.integers(0, 2**16))
def test_emulated_layer_passes_gradcheck(case, mode, seed):
    # extension + shift + crop + block means, all differentiated through: the active layer
    # is smooth in the weight away from integers.
    ndim, conv_args, sizes = case
    torch.manual_seed(seed)
    layer = LAYERS[ndim](2, padding=mode, active_flag=True, emulate_dw=conv_args).double()
    x = torch.randn(1, 2, *sizes, dtype=torch.float64, requires_grad=True)
    weight = (torch.randint(-3, 4, (2, ndim)) + torch.rand(2, ndim) * 0.6 + 0.2).double()
    weight.requires_grad_()

    def run(x, weight):
        return torch.func.functional_call(layer, {"weight": weight}, (x,))[0]

    assert torch.autograd.gradcheck(run, (x, weight))


def test_plan_examples():
    plan = depthwise_plan(dict(kernel_size=3), 2)
    assert plan["crop"] == [1, 1, 1, 1] and plan["extend"] == [0] * 4 and plan["pool"] == []
    plan = depthwise_plan(dict(kernel_size=(2, 5), padding=(0, 1)), 2)
    assert plan["crop"] == [0, 1, 1, 1]  # t = -1 (before 0, after 1) and t = 2 - 4 = -2
    plan = depthwise_plan(dict(kernel_size=1, padding=(1, 2)), 2)
    assert plan["extend"] == [1, 1, 2, 2] and plan["crop"] == [0] * 4
    plan = depthwise_plan(dict(kernel_size=3, padding=2, stride=(1, 2)), 2)
    assert plan["extend"] == [1, 1, 1, 1] and plan["pool"] == [1, 2]
    plan = depthwise_plan(dict(kernel_size=3, dilation=2, padding="same"), 1)
    assert plan["crop"] == [0, 0] and plan["extend"] == [0, 0] and plan["init_shift"] == (2.0,)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_zero_shift_crops_the_centre(ndim):
    x = torch.randn(2, 3, *[7] * ndim)
    layer = LAYERS[ndim](3, emulate_dw=dict(kernel_size=3))
    with torch.no_grad():
        layer.weight.zero_()
    centre = x[(..., *[slice(1, -1)] * ndim)]
    torch.testing.assert_close(layer(x)[0], centre, rtol=0, atol=0)
    layer = LAYERS[ndim](3, emulate_dw=dict(kernel_size=2))  # even kernel: drop the last
    with torch.no_grad():
        layer.weight.zero_()
    torch.testing.assert_close(layer(x)[0], x[(..., *[slice(0, -1)] * ndim)], rtol=0, atol=0)


def test_shifted_values_with_crop():
    # Shift by +1 then keep positions 1..L-2: out[o] = x[o + 1 - 1] = x[o].
    x = torch.arange(6.0).reshape(1, 1, 6)
    layer = ts.Shift1d(1, emulate_dw=dict(kernel_size=3))
    with torch.no_grad():
        layer.weight.fill_(1.0)
    torch.testing.assert_close(layer(x)[0], torch.tensor([[[0.0, 1.0, 2.0, 3.0]]]))
    with torch.no_grad():
        layer.weight.fill_(-1.0)
    torch.testing.assert_close(layer(x)[0], torch.tensor([[[2.0, 3.0, 4.0, 5.0]]]))


@pytest.mark.parametrize("mode", ["zeros", "border", "periodic", "reflect", "symmetric"])
def test_wide_padding_extends_the_input_like_np_pad(mode):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    layer = ts.Shift2d(3, padding=mode, emulate_dw=dict(kernel_size=(1, 3), padding=(2, 3)))
    with torch.no_grad():
        layer.weight.zero_()
    # growth: 2*2 - 0 = 4 -> (2, 2); 2*3 - 2 = 4 -> (2, 2)
    expected = np.pad(x.numpy(), [(0, 0), (0, 0), (2, 2), (2, 2)], mode=NP_MODES[mode])
    np.testing.assert_array_equal(layer(x)[0].detach().numpy(), expected)


@given(length=st.integers(1, 6), before=st.integers(0, 15), after=st.integers(0, 15),
       mode=st.sampled_from(sorted(NP_MODES)))
def test_extend_input_is_np_pad_for_any_width(length, before, after, mode):
    if mode == "reflect" and length == 1:  # SPEC §2: every position reads index 0
        expected = np.full(before + 1 + after, 1.0)
    else:
        expected = np.pad(np.arange(1.0, length + 1), (before, after), mode=NP_MODES[mode])
    x = torch.arange(1.0, length + 1).reshape(1, 1, length)
    np.testing.assert_array_equal(extend_input(x, [before, after], mode)[0, 0].numpy(), expected)


def test_extend_input_of_quantized_tensors():
    x = torch.quantize_per_tensor(torch.randn(1, 2, 4, 3), 0.1, 7, torch.quint8)
    for mode in NP_MODES:
        out = extend_input(x, [1, 2, 3, 0], mode)
        assert out.dtype == torch.quint8 and out.q_zero_point() == 7 and out.q_scale() == 0.1
        kwargs = dict(constant_values=7) if mode == "zeros" else {}  # the zero point
        expected = np.pad(x.int_repr().numpy(), [(0, 0), (0, 0), (1, 2), (3, 0)],
                          mode=NP_MODES[mode], **kwargs)
        np.testing.assert_array_equal(out.int_repr().numpy(), expected)


def block_means(x: np.ndarray, pool) -> np.ndarray:
    """Oracle of pool_output: means of consecutive blocks, a short last block included."""
    for d, size in enumerate(pool):
        axis = 2 + d
        starts = np.arange(0, x.shape[axis], size)
        counts = np.minimum(size, x.shape[axis] - starts).reshape(
            [-1 if i == axis else 1 for i in range(x.ndim)])
        x = np.add.reduceat(x, starts, axis=axis) / counts
    return x


@given(sizes=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       strides=st.lists(st.integers(1, 4), min_size=3, max_size=3), seed=st.integers(0, 99))
def test_pool_output_is_ceil_mode_average_pooling(sizes, strides, seed):
    ndim = len(sizes)
    pool = strides[:ndim]
    x = torch.randn(2, 3, *sizes, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64, requires_grad=True)
    actual = pool_output(x, pool)
    np.testing.assert_allclose(actual.detach().numpy(), block_means(x.detach().numpy(), pool),
                               rtol=1e-12, atol=1e-12)
    if all(size >= s for size, s in zip(sizes, pool)):  # avg_pool refuses some smaller ones
        avg_pool = [F.avg_pool1d, F.avg_pool2d, F.avg_pool3d][ndim - 1]
        expected = avg_pool(x, pool, pool, 0, True)
        torch.testing.assert_close(actual, expected)
        grad = torch.randn_like(expected)
        torch.testing.assert_close(torch.autograd.grad(actual, x, grad)[0],
                                   torch.autograd.grad(expected, x, grad)[0])
    # quantized: the rounded block means of the integer representation
    q = torch.quantize_per_tensor(x.detach().float(), 0.05, 100, torch.quint8)
    qout = pool_output(q, pool)
    assert qout.dtype == torch.quint8 and qout.q_scale() == 0.05 and qout.q_zero_point() == 100
    expected_q = np.round(block_means(q.int_repr().numpy().astype(np.float64), pool))
    np.testing.assert_array_equal(qout.int_repr().numpy(), expected_q)


def test_quantized_pooling_agrees_with_torch_quantized_avg_pool():
    q = torch.quantize_per_tensor(torch.randn(2, 3, 7, 9), 0.02, 120, torch.quint8)
    ours, torchs = pool_output(q, [2, 3]), F.avg_pool2d(q, [2, 3], [2, 3], 0, True)
    assert torch.equal(ours.int_repr(), torchs.int_repr())


def test_stride_averages():
    x = torch.randn(2, 3, 5, 7)
    layer = ts.Shift2d(3, emulate_dw=dict(kernel_size=1, stride=2))
    with torch.no_grad():
        layer.weight.zero_()
    torch.testing.assert_close(layer(x)[0], F.avg_pool2d(x, 2, 2, ceil_mode=True))


def test_padding_mode_takes_precedence_and_aliases():
    assert ts.Shift2d(2, padding="reflect", emulate_dw=dict(kernel_size=3)).padding == "reflect"
    layer = ts.Shift2d(2, padding="reflect",
                       emulate_dw=dict(kernel_size=3, padding_mode="circular"))
    assert layer.padding == "periodic"
    layer = ts.Shift1d(2, emulate_dw=dict(kernel_size=3, padding_mode="replicate"))
    assert layer.padding == "border"


def test_init_shift_follows_the_effective_kernel_size():
    torch.manual_seed(0)
    layer = ts.Shift2d(5000, init_shift=9, emulate_dw=dict(kernel_size=(5, 3), dilation=(1, 2)))
    assert layer.init_shift == (2.0, 2.0)
    bound = float(layer.weight.detach().abs().max())
    assert 1.9 < bound <= 2.0
    assert ts.Shift3d(2, emulate_dw=dict(kernel_size=(1, 2, 4))).init_shift == (0.0, 0.5, 1.5)
    assert not ts.Shift1d(4, emulate_dw=dict(kernel_size=1)).weight.detach().any()


def test_conv_constructor_arguments_are_accepted():
    conv_args = dict(in_channels=4, out_channels=4, kernel_size=3, stride=2, padding=1,
                     dilation=1, groups=4, bias=False, padding_mode="zeros")
    layer = ts.Shift2d(4, emulate_dw=conv_args)
    assert conv_args["kernel_size"] == 3 and len(conv_args) == 9  # the caller's dict is intact
    x = torch.randn(1, 4, 9, 8)
    assert layer(x)[0].shape == torch.nn.Conv2d(**conv_args)(x).shape
    assert "emulate_dw" in repr(layer)


@pytest.mark.parametrize("emulate_dw,error,match", [
    ([3], TypeError, "emulate_dw"),
    (dict(stride=2), ValueError, "kernel_size"),
    (dict(kernel_size=3, strides=2), ValueError, "unknown keys"),
    (dict(kernel_size=0), ValueError, "kernel_size"),
    (dict(kernel_size=(3, 3, 3)), ValueError, "kernel_size"),
    (dict(kernel_size=3, stride=0), ValueError, "stride"),
    (dict(kernel_size=3, padding=-1), ValueError, "padding"),
    (dict(kernel_size=3, padding="full"), ValueError, "padding"),
    (dict(kernel_size=3, dilation=0), ValueError, "dilation"),
    (dict(kernel_size=3, padding_mode="mirror"), ValueError, "padding"),
    (dict(kernel_size=2.5), TypeError, "kernel_size"),
])
def test_bad_emulate_dw(emulate_dw, error, match):
    with pytest.raises(error, match=match):
        ts.Shift2d(2, emulate_dw=emulate_dw)


def test_input_smaller_than_the_kernel_is_refused():
    # Named in the emulated conv's terms, not the crop the caller never passed (issue 18).
    layer = ts.Shift2d(2, emulate_dw=dict(kernel_size=5))
    with pytest.raises(ValueError, match=r"input: spatial dim 0 has size 3, smaller than the "
                                         r"emulated depthwise conv needs \(4: kernel_size"):
        layer(torch.randn(1, 2, 3, 8))


def test_integer_inputs():
    x = torch.randint(-100, 100, (2, 3, 6, 6), dtype=torch.int8)
    layer = ts.Shift2d(3, init_shift=2, emulate_dw=dict(kernel_size=3, padding=2))
    with torch.no_grad():
        out = layer(x)[0]
        expected = layer(x.double())[0]
    assert out.dtype == torch.int8 and torch.equal(out, expected.to(torch.int8))
    strided = ts.Shift2d(3, emulate_dw=dict(kernel_size=3, stride=2))
    with torch.no_grad(), pytest.raises(TypeError, match="stride"):
        strided(x)
