"""replace_depthwise / DepthwiseShift / sparsity_loss on MobileNet-style models."""

import pytest
import torch
from torch import nn

import torchshift2 as ts

pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")


def conv_bn(cin, cout, kernel=1, stride=1, groups=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand 1x1, depthwise 3x3 (stride), project 1x1."""

    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        layers = [conv_bn(cin, hidden)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class TinyMobileNetV2(nn.Module):
    """A width-reduced MobileNetV2 (same block structure and strides as the paper's)."""

    # (expansion t, channels c, repeats n, first stride s)
    CONFIG = [(1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 2, 2), (6, 24, 1, 1), (6, 32, 2, 2)]

    def __init__(self, classes=10):
        super().__init__()
        layers = [conv_bn(3, 8, 3, 2)]
        cin = 8
        for t, c, n, s in self.CONFIG:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn(cin, 64))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(64, classes)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


def depthwise_convs(model):
    return [m for m in model.modules() if type(m) is nn.Conv2d
            and m.groups == m.in_channels == m.out_channels]


def output_shapes(model, kinds, x):
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
             for m in model.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return shapes


def test_mobilenet_block_is_converted():
    torch.manual_seed(0)
    block = InvertedResidual(8, 8, 1, 4).eval()
    convs_before = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    x = torch.randn(2, 8, 9, 10)
    shape = block(x).shape
    converted = ts.replace_depthwise(block, sparsity_term=1e-3)
    assert converted is block
    shifts = [m for m in block.modules() if isinstance(m, ts.DepthwiseShift)]
    assert len(shifts) == 1 and isinstance(shifts[0].shift, ts.Shift2d)
    assert shifts[0].shift.in_channels == 32 and shifts[0].shift.sparsity_term == 1e-3
    assert not depthwise_convs(block)
    # the pointwise convs are the same objects
    assert [m for m in block.modules() if isinstance(m, nn.Conv2d)] == [
        m for m in convs_before if m.groups == 1]
    assert block(x).shape == shape


@pytest.mark.parametrize("size", [(32, 32), (29, 35), (8, 13)])
def test_tiny_mobilenet_v2_keeps_every_feature_map_shape(size):
    torch.manual_seed(0)
    model = TinyMobileNetV2().eval()
    x = torch.randn(2, 3, *size)
    n_depthwise = len(depthwise_convs(model))
    assert n_depthwise == 8
    before = output_shapes(model, nn.BatchNorm2d, x)
    logits = model(x)
    ts.replace_depthwise(model)
    assert len([m for m in model.modules() if isinstance(m, ts.DepthwiseShift)]) == n_depthwise
    assert not depthwise_convs(model)
    assert output_shapes(model, nn.BatchNorm2d, x) == before
    assert model(x).shape == logits.shape


def test_converted_mobilenet_trains_with_the_sparsity_loss():
    torch.manual_seed(0)
    model = ts.replace_depthwise(TinyMobileNetV2(), sparsity_term=1e-2, active_flag=True)
    shifts = [m.shift for m in model.modules() if isinstance(m, ts.DepthwiseShift)]
    expected = sum(layer.sparsity_term * layer.weight.abs().sum() for layer in shifts)
    torch.testing.assert_close(ts.sparsity_loss(model), expected)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, target = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    before = [layer.weight.detach().clone() for layer in shifts]
    for _ in range(2):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), target) + ts.sparsity_loss(model)
        loss.backward()
        assert all(layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
                   for layer in shifts)
        optimizer.step()
    assert all(not torch.equal(b, layer.weight) for b, layer in zip(before, shifts))


def test_sparsity_loss_without_terms_is_zero():
    model = ts.replace_depthwise(TinyMobileNetV2(), sparsity_term=0)
    loss = ts.sparsity_loss(model)
    assert loss.dim() == 0 and float(loss) == 0.0
    assert float(ts.sparsity_loss(nn.Linear(2, 2))) == 0.0
    # bare layers count too, not only the wrapped ones
    layer = ts.Shift1d(3, sparsity_term=0.5)
    torch.testing.assert_close(ts.sparsity_loss(nn.Sequential(layer)),
                               layer(torch.randn(1, 3, 4))[1])


def test_padding_modes_and_kwargs():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="reflect"),
                          nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="circular"))
    converted = ts.replace_depthwise(model)
    assert [m.shift.padding for m in converted] == ["reflect", "periodic"]
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="reflect"))
    assert ts.replace_depthwise(model, padding="symmetric")[0].shift.padding == "symmetric"
    with pytest.raises(TypeError, match="emulate_dw"):
        ts.replace_depthwise(nn.Sequential(), emulate_dw=dict(kernel_size=3))


def test_only_depthwise_convs_are_replaced_in_every_dimension():
    model = nn.Sequential(
        nn.Conv1d(4, 4, 3, groups=4),                  # depthwise 1D
        nn.Conv1d(4, 8, 3, groups=4),                  # depth multiplier 2: converted too
        nn.Conv1d(8, 8, 1),                            # pointwise
        nn.Conv1d(8, 8, 3, groups=2),                  # grouped, not depthwise
    )
    converted = ts.replace_depthwise(model)
    assert isinstance(converted[0], ts.DepthwiseShift)
    assert isinstance(converted[0].shift, ts.Shift1d)
    assert converted[1].shift.weight.shape == (8, 1) and converted[1].shift.in_channels == 4
    assert type(converted[2]) is nn.Conv1d and type(converted[3]) is nn.Conv1d
    conv3d = nn.Conv3d(3, 3, (3, 1, 3), stride=(1, 2, 2), padding=(0, 1, 2), dilation=(1, 1, 2),
                       groups=3)
    x = torch.randn(1, 3, 5, 6, 7)
    expected = conv3d(x).shape
    replaced = ts.replace_depthwise(conv3d)  # a lone conv comes back replaced
    assert isinstance(replaced.shift, ts.Shift3d) and replaced(x).shape == expected


def test_same_padding_dilation_dtype():
    model = nn.Sequential(nn.Conv2d(6, 6, 4, padding="same", dilation=2, groups=6)).double()
    x = torch.randn(1, 6, 7, 9, dtype=torch.float64)
    expected = model(x).shape
    ts.replace_depthwise(model)
    assert model[0].shift.weight.dtype == torch.float64
    assert model[0].shift.init_shift == (3.0, 3.0)
    assert model(x).shape == expected


def test_replaced_model_compiles_scripts_and_exports():
    torch.manual_seed(0)
    model = ts.replace_depthwise(nn.Sequential(
        nn.Conv2d(3, 6, 1), nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6), nn.ReLU(),
        nn.Conv2d(6, 6, 5, padding=3, groups=6, padding_mode="reflect")))
    x = torch.randn(2, 3, 9, 11)
    expected = model(x)
    torch.testing.assert_close(torch.jit.script(model)(x), expected)
    torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), expected)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), expected)
    torch._dynamo.reset()


class Conv2dSame(nn.Conv2d):
    """timm's Conv2dSame: TensorFlow's SAME padding, computed for each input size."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, padding=0, **kwargs)

    def forward(self, x):
        pads = []
        for size, k, s, d in zip(x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1],
                                 self.dilation[::-1]):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return nn.functional.conv2d(nn.functional.pad(x, pads), self.weight, self.bias,
                                    self.stride, 0, self.dilation, self.groups)


class Cropping(nn.Conv2d):
    """A subclass whose forward is not a plain conv's."""

    def forward(self, x):
        return super().forward(x)[..., 1:, :]


def test_summary_names_what_was_replaced_and_what_was_kept_and_why():
    # Issue 18 item 9: dynamic-"same" subclasses and channel-multiplier convs were skipped
    # silently.
    qat = torch.ao.nn.qat.Conv2d(4, 4, 3, groups=4,
                                 qconfig=torch.ao.quantization.get_default_qat_qconfig())
    model = nn.Sequential(Conv2dSame(4, 4, 3, stride=2, groups=4),
                          nn.Conv2d(4, 12, 3, padding=1, groups=4),
                          Cropping(12, 12, 3, groups=12), qat, nn.Conv2d(12, 4, 1))
    model[3] = nn.Identity()  # the QAT conv is checked on its own below
    shapes = {size: model(torch.randn(1, 4, *size)).shape for size in [(9, 9), (10, 13), (17, 8)]}
    with pytest.warns(UserWarning, match=r"kept depthwise-shaped convs.*2 \(Cropping"):
        model, summary = ts.replace_depthwise(model, return_summary=True)
    assert sorted(summary.replaced) == ["0", "1"] and list(summary.skipped) == ["2"]
    assert "neither nn.Conv's nor TensorFlow's SAME" in summary.skipped["2"]
    assert "kept 2: Cropping" in str(summary)
    assert model[0].shift.emulate_dw["padding"] == "same"
    assert model[1].shift.weight.shape == (12, 2)
    for size, shape in shapes.items():  # every input size, as the dynamic padding gives
        assert model(torch.randn(1, 4, *size)).shape == shape
    with pytest.warns(UserWarning, match="QAT"):
        _, summary = ts.replace_depthwise(nn.Sequential(qat), return_summary=True)
    assert list(summary.skipped) == ["0"] and not summary.replaced


def test_nothing_skipped_warns_nothing():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, summary = ts.replace_depthwise(TinyMobileNetV2(), return_summary=True)
    assert len(summary.replaced) == 8 and not summary.skipped


def test_channel_multiplier_conv_becomes_a_multiplier_shift():
    # Output channel o of a conv with groups == in_channels reads input channel o // k.
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, padding=1, groups=3, bias=False)
    with torch.no_grad():  # a conv that is a pure (whole) shift per output channel
        conv.weight.zero_()
        for o, (dy, dx) in enumerate([(0, 0), (1, 0), (0, 1), (2, 2), (1, 1), (2, 0)]):
            conv.weight[o, 0, dy, dx] = 1.0
    x = torch.randn(2, 3, 7, 8)
    expected = conv(x)
    shift = ts.replace_depthwise(conv, sparsity_term=0).shift
    with torch.no_grad():  # tap (dy, dx) of a 3x3 conv is the shift (1 - dy, 1 - dx)
        shift.weight.copy_(torch.tensor([[1.0 - dy, 1.0 - dx] for dy, dx in
                                         [(0, 0), (1, 0), (0, 1), (2, 2), (1, 1), (2, 0)]]))
    torch.testing.assert_close(shift(x)[0], expected)


def test_a_single_input_channel_stem_is_a_dense_conv():
    # groups == in_channels == 1 with 16 outputs: the shape of a depthwise conv with a
    # multiplier, but a grayscale stem; a 1 -> 1 conv is depthwise.
    model = nn.Sequential(nn.Conv2d(1, 16, 3), nn.Conv2d(1, 1, 3))
    _, summary = ts.replace_depthwise(model, return_summary=True)
    assert type(model[0]) is nn.Conv2d and isinstance(model[1], ts.DepthwiseShift)
    assert list(summary.replaced) == ["1"] and not summary.skipped
