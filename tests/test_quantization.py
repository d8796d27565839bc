"""Eager-mode quantization: ts.quant_mapping, QuantizedShift1d/2d/3d, integer tensors."""

import io
import itertools
import warnings

import pytest
import torch
import torch.ao.quantization as tq
from hypothesis import given
from hypothesis import strategies as st

import torchshift2 as ts

# torch 2.13 deprecates eager-mode quantization and quantized tensors; both still work and
# are what this test file is about.
pytestmark = [
    pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions.*:UserWarning"),
    pytest.mark.filterwarnings("ignore:Please use quant_min and quant_max:UserWarning"),
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"),
]

FLOAT = {1: ts.Shift1d, 2: ts.Shift2d, 3: ts.Shift3d}
QUANT = {1: ts.QuantizedShift1d, 2: ts.QuantizedShift2d, 3: ts.QuantizedShift3d}


def quantize_like(x, q):
    return torch.quantize_per_tensor(x, q.q_scale(), q.q_zero_point(), q.dtype)


def test_quant_mapping_is_the_default_mapping_plus_the_shift_layers():
    from torch.ao.quantization.quantization_mappings import (
        get_default_static_quant_module_mappings,
    )

    default = get_default_static_quant_module_mappings()
    assert {k: v for k, v in ts.quant_mapping.items() if k in default} == dict(default)
    assert set(ts.quant_mapping) - set(default) == {ts.Shift1d, ts.Shift2d, ts.Shift3d}
    for ndim in (1, 2, 3):
        assert ts.quant_mapping[FLOAT[ndim]] is QUANT[ndim]
    assert ts.quant_mapping is not default  # a copy: PyTorch's own mapping is untouched
    assert ts.Shift2d not in get_default_static_quant_module_mappings()


@given(ndim=st.sampled_from([1, 2, 3]), padding=st.sampled_from(ts.PADDINGS),
       dtype=st.sampled_from([torch.quint8, torch.qint8]), active=st.booleans(),
       emulate=st.sampled_from([None, dict(kernel_size=3), dict(kernel_size=1, padding=2),
                                dict(kernel_size=(2, 3, 1), padding=(0, 2, 1))]),
       seed=st.integers(0, 2**16))
def test_quantized_shift_is_exact(ndim, padding, dtype, active, emulate, seed):
    torch.manual_seed(seed)
    if emulate is not None:
        emulate = {k: (v[:ndim] if isinstance(v, tuple) else v) for k, v in emulate.items()}
    layer = FLOAT[ndim](3, padding=padding, active_flag=active, init_shift=3, emulate_dw=emulate)
    with torch.no_grad():  # half-integers and integers: the rounding edge cases
        layer.weight[0] = torch.round(layer.weight[0] * 2) / 2
        layer.weight[1] = torch.round(layer.weight[1])
    qlayer = QUANT[ndim].from_float(layer)
    zero_point = 128 if dtype == torch.quint8 else 3
    x = torch.quantize_per_tensor(torch.randn(2, 3, *[5] * ndim), 0.05, zero_point, dtype)
    out, none = qlayer(x)
    assert none is None
    assert out.dtype == dtype and out.q_scale() == 0.05 and out.q_zero_point() == zero_point
    rounded = torch.round(layer.weight.detach())
    assert torch.equal(qlayer.weight, rounded)
    # quantize(shift(dequantize(x))), with the rounded shifts, bit for bit
    reference = FLOAT[ndim](3, padding=padding, emulate_dw=emulate)
    with torch.no_grad():
        reference.weight.copy_(rounded)
        expected = quantize_like(reference(x.dequantize())[0], x)
    assert torch.equal(out.int_repr(), expected.int_repr())
    # and the functional op on the integer representation gives the same integers
    with torch.no_grad():
        crop = ts._spec.pair_crop(layer._crop)
        values = ts.nn.extend_input(x, layer._extend, layer.padding)
        direct = ts.shift(values, rounded, layer.padding, False, crop)
    assert torch.equal(out.int_repr(), direct.int_repr())


@pytest.mark.parametrize("dtype,zero_point", [(torch.quint8, 77), (torch.qint8, -5)])
def test_zeros_padding_fills_the_zero_point(dtype, zero_point):
    layer = ts.QuantizedShift2d(2)
    layer.weight.copy_(torch.tensor([[9.0, 0.0], [1.0, -1.0]]))  # channel 0 leaves entirely
    x = torch.quantize_per_tensor(torch.rand(1, 2, 4, 4) + 1, 0.1, zero_point, dtype)
    out = layer(x)[0]
    assert (out.int_repr()[0, 0] == zero_point).all()
    assert (out.dequantize()[0, 0] == 0).all()
    assert (out.int_repr()[0, 1, 0, :] == zero_point).all()  # shifted down: row 0 is padding
    assert (out.int_repr()[0, 1, :, -1] == zero_point).all()  # shifted left: last column
    assert torch.equal(out.int_repr()[0, 1, 1:, :-1], x.int_repr()[0, 1, :-1, 1:])


def test_active_layers_quantize_to_the_rounded_shift():
    layer = ts.Shift1d(1, active_flag=True, padding="periodic")
    with torch.no_grad():
        layer.weight.fill_(1.4)
    qlayer = ts.QuantizedShift1d.from_float(layer)
    x = torch.arange(6.0).reshape(1, 1, 6)
    q = torch.quantize_per_tensor(x, 1.0, 0, torch.quint8)
    assert qlayer(q)[0].int_repr().flatten().tolist() == [5, 0, 1, 2, 3, 4]  # roll by 1
    float_out = layer(x)[0].detach().flatten()  # interpolates: 0.6 * roll 1 + 0.4 * roll 2
    assert not torch.equal(quantize_like(float_out.reshape(1, 1, 6), q).int_repr(),
                           qlayer(q)[0].int_repr())


def test_from_float_checks_the_type_and_keeps_the_configuration():
    with pytest.raises(TypeError, match="Shift2d"):
        ts.QuantizedShift2d.from_float(ts.Shift1d(2))
    layer = ts.Shift3d(2, padding="symmetric", emulate_dw=dict(kernel_size=3, stride=2))
    qlayer = ts.QuantizedShift3d.from_float(layer, use_precomputed_fake_quant=True)
    assert qlayer.padding == "symmetric" and qlayer.emulate_dw == layer.emulate_dw
    assert qlayer._crop == layer._crop and qlayer._extend == layer._extend
    assert qlayer._pool == layer._pool == [2, 2, 2]
    assert "QuantizedShift3d(2" in repr(qlayer) and "emulate_dw" in repr(qlayer)
    state = qlayer.state_dict()
    assert list(state) == ["weight"]
    fresh = ts.QuantizedShift3d(2, padding="symmetric", emulate_dw=dict(kernel_size=3, stride=2))
    fresh.load_state_dict(state)
    x = torch.quantize_per_tensor(torch.randn(1, 2, 5, 6, 7), 0.1, 10, torch.quint8)
    assert torch.equal(fresh(x)[0].int_repr(), qlayer(x)[0].int_repr())


class ConvShiftNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.quant = tq.QuantStub()
        self.conv1 = torch.nn.Conv2d(3, 8, 1)
        self.relu = torch.nn.ReLU()
        self.shift = ts.Shift2d(8, init_shift=2)
        self.down = ts.Shift2d(8, padding="reflect", emulate_dw=dict(kernel_size=3, stride=2,
                                                                     padding=1))
        self.dw = ts.DepthwiseShift(ts.Shift2d(8, emulate_dw=dict(kernel_size=3)))
        self.conv2 = torch.nn.Conv2d(8, 4, 1)
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        x = self.relu(self.conv1(self.quant(x)))
        x, _ = self.shift(x)
        x, _ = self.down(x)
        x = self.dw(x)
        return self.dequant(self.conv2(x))


def test_end_to_end_eager_mode_quantization():
    model = ConvShiftNet().eval()
    model.qconfig = tq.get_default_qconfig("fbgemm")
    prepared = tq.prepare(model)
    # The shift layers get no observer: they keep their input's quantization parameters.
    assert not hasattr(prepared.shift, "activation_post_process")
    torch.manual_seed(1)
    with torch.no_grad():
        for _ in range(4):
            prepared(torch.randn(8, 3, 11, 11))
    quantized = tq.convert(prepared, mapping=ts.quant_mapping)
    assert type(quantized.conv1) is torch.ao.nn.quantized.Conv2d
    assert type(quantized.shift) is ts.QuantizedShift2d
    assert type(quantized.down) is ts.QuantizedShift2d
    assert type(quantized.dw.shift) is ts.QuantizedShift2d
    x = torch.randn(4, 3, 11, 11)
    with torch.no_grad():
        expected = model(x)
        actual = quantized(x)
    assert actual.shape == expected.shape == (4, 4, 4, 4)
    # Quantization error: a few steps of the last layer's output scale.
    step = quantized.conv2.scale
    assert float((actual - expected).abs().max()) < 6 * step
    assert float((actual - expected).abs().mean()) < step
    # The converted model is scriptable and gives the same integers.
    scripted = torch.jit.script(quantized)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    assert torch.equal(torch.jit.load(buffer)(x), actual)


def test_shift_after_quantized_conv_keeps_its_quantization():
    model = ConvShiftNet().eval()
    model.qconfig = tq.get_default_qconfig("fbgemm")
    prepared = tq.prepare(model)
    with torch.no_grad():
        prepared(torch.randn(8, 3, 11, 11))
    quantized = tq.convert(prepared, mapping=ts.quant_mapping)
    q = quantized.relu(quantized.conv1(quantized.quant(torch.randn(2, 3, 11, 11))))
    out, _ = quantized.shift(q)
    assert (out.q_scale(), out.q_zero_point()) == (q.q_scale(), q.q_zero_point())
    expected = quantize_like(ts.shift(q.dequantize(), quantized.shift.weight), q)
    assert torch.equal(out.int_repr(), expected.int_repr())


def test_convert_without_the_mapping_leaves_shift_layers_float():
    model = ConvShiftNet().eval()
    model.qconfig = tq.get_default_qconfig("fbgemm")
    prepared = tq.prepare(model)
    with torch.no_grad():
        prepared(torch.randn(2, 3, 11, 11))
    converted = tq.convert(prepared)
    assert type(converted.shift) is ts.Shift2d


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8])
@pytest.mark.parametrize("padding", ts.PADDINGS)
def test_integer_tensors_are_shifted_exactly(dtype, padding):
    info = torch.iinfo(dtype)
    x = torch.randint(info.min, info.max + 1, (2, 3, 5, 6), dtype=dtype)
    weights = torch.tensor([[2.0, -1.0], [0.5, 1.5], [-7.0, 3.0]])
    expected = ts.reference.shift(x.double(), weights, padding).to(dtype)
    # the functional op, the quantized layer (no sparsity loss) and the float layer under no_grad
    assert torch.equal(ts.shift(x, weights, padding), expected)
    qlayer = ts.QuantizedShift2d(3, padding=padding)
    qlayer.weight.copy_(torch.round(weights))
    out, none = qlayer(x)
    assert out.dtype == dtype and none is None and torch.equal(out, expected)
    layer = ts.Shift2d(3, padding=padding)
    with torch.no_grad():
        layer.weight.copy_(weights)
        out, loss = layer(x)
    assert torch.equal(out, expected) and loss is not None
    # every element of the output is an element of the input (or 0 for zeros padding)
    allowed = set(x.flatten().tolist()) | ({0} if padding == "zeros" else set())
    assert set(out.flatten().tolist()) <= allowed


def test_integer_tensor_with_a_weight_that_requires_grad_is_refused():
    with pytest.raises(RuntimeError, match="requires_grad"):
        ts.Shift1d(2)(torch.zeros(1, 2, 5, dtype=torch.uint8))


def test_quantized_layers_are_exact_for_every_padding_and_dimension():
    # A deterministic sweep (the hypothesis test samples the same space).
    for ndim, padding in itertools.product((1, 2, 3), ts.PADDINGS):
        qlayer = QUANT[ndim](2, padding=padding)
        qlayer.weight.copy_(torch.tensor([[2.0, -3.0, 1.0][:ndim], [-1.0, 0.0, 4.0][:ndim]]))
        x = torch.quantize_per_tensor(torch.randn(1, 2, *[4] * ndim), 0.03, 100, torch.quint8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = quantize_like(ts.shift(x.dequantize(), qlayer.weight, padding), x)
        assert torch.equal(qlayer(x)[0].int_repr(), expected.int_repr()), (ndim, padding)
