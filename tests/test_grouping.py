"""group_channels: channels of shift layers reordered for in-place inference, model unchanged.

Exactness: the producers, per-channel ops and shifts are bitwise the same up to the channel
order (checked on each layer's output, permuted back); the consumer convs sum their input
channels in the new order, so the model outputs are compared with torch's float32
tolerances, and in float64 with a tolerance that only rounding can meet.
"""

import pytest
import torch
from torch import nn

import torchshift2 as ts
from torchshift2.grouping import grouping_permutation

FORMATS = {2: torch.channels_last, 3: torch.channels_last_3d}


def sparse_shifts(channels, ndim, gen, zero_fraction=0.9):
    """90% of the channels do not move, the rest move by ±1..±3 along each dim."""
    weight = torch.zeros(channels, ndim)
    count = max(1, round(channels * (1 - zero_fraction)))
    moving = torch.randperm(channels, generator=gen)[:count]
    magnitude = torch.randint(1, 4, (count, ndim), generator=gen).float()
    sign = torch.randint(0, 2, (count, ndim), generator=gen).float() * 2 - 1
    weight[moving] = magnitude * sign
    return weight


def randomize(model, gen):
    """Non-trivial BatchNorm statistics and sparse shifts in every shift layer."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.5, generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
                module.weight.normal_(1, 0.3, generator=gen)
                module.bias.normal_(0, 0.3, generator=gen)
            if isinstance(module, (ts.Shift1d, ts.Shift2d, ts.Shift3d)):
                module.weight.copy_(sparse_shifts(*module.weight.shape, gen))
    return model.eval()


def conv_bn(inp, out, kernel=1, stride=1, groups=1, act=True):
    layers = [nn.Conv2d(inp, out, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out)]
    return layers + [nn.ReLU6(inplace=True)] if act else layers


class InvertedResidual(nn.Module):
    def __init__(self, inp, out, stride, expand):
        super().__init__()
        hidden = inp * expand
        layers = conv_bn(inp, hidden) if expand != 1 else []
        layers += conv_bn(hidden, hidden, 3, stride, groups=hidden)
        layers += conv_bn(hidden, out, act=False)
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and inp == out

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2Like(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(*conv_bn(3, 16, 3, 2)),
            InvertedResidual(16, 8, 1, 1),
            InvertedResidual(8, 12, 2, 6),
            InvertedResidual(12, 12, 1, 6),
            InvertedResidual(12, 16, 2, 6),
            nn.Sequential(*conv_bn(16, 32)),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenet(seed=0, inplace=False, dtype=torch.float32, channels_last=False):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = randomize(ts.replace_depthwise(MobileNetV2Like()), gen)
    for module in model.modules():
        if isinstance(module, ts.Shift2d):
            module.inplace = inplace
    model = model.to(dtype)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def shift_modules(model):
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (ts.Shift1d, ts.Shift2d, ts.Shift3d))}


def run(model, x):
    with torch.inference_mode():
        return model(x.clone())


def assert_grouped_layout(grouped, report, order="moving"):
    """In every grouped layer the moving channels come first (order "moving": in their old
    order; "shift": equal shifts adjacent)."""
    for layer in report.layers:
        if not layer.grouped:
            continue
        module = grouped.get_submodule(layer.name)
        weight = getattr(module, "shift", module).weight.detach()
        rounded = torch.round(weight)
        moving = (rounded != 0).any(1)
        assert moving.sum().item() == layer.moving
        assert moving[:layer.moving].all() and not moving[layer.moving:].any(), layer.name
        if order == "moving":
            kept = layer.permutation[:layer.moving]
            assert torch.equal(kept, kept.sort().values)
            continue
        runs = [tuple(row) for row in rounded.tolist()]
        starts = [tuple(r) for i, r in enumerate(runs) if i == 0 or runs[i - 1] != r]
        assert len(starts) == len(set(runs)), f"{layer.name}: equal shifts are not adjacent"


@pytest.mark.parametrize("order", ts.grouping.ORDERS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "inplace"])
def test_mobilenet_like_is_grouped_and_unchanged(channels_last, inplace, order):
    model = mobilenet(inplace=inplace, channels_last=channels_last)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = run(model, x)
    grouped, report = ts.group_channels(model, x, order=order)
    assert len(report.layers) == 4 and report.skipped == {}, str(report)
    first = report.layers[0]  # stem conv -> BN -> ReLU6 -> shift -> BN -> ReLU6 -> project
    assert first.producers == ("features.0.0",) and first.consumers == ("features.1.conv.3",)
    assert set(first.per_channel) == {"features.0.1", "features.1.conv.0.shift",
                                      "features.1.conv.1"}
    expanded = report.layers[1]
    assert expanded.producers == ("features.2.conv.0",)
    assert expanded.consumers == ("features.2.conv.6",)
    assert_grouped_layout(grouped, report, order)
    assert any(not torch.equal(layer.permutation, torch.arange(layer.channels))
               for layer in report.layers)
    result = run(grouped, x)
    torch.testing.assert_close(result, expected)
    assert report.max_abs_diff == pytest.approx((result - expected).abs().max().item(), abs=1e-6)
    assert report.max_abs_diff < 1e-4


def test_mobilenet_like_float64_differs_by_rounding_only():
    model = mobilenet(seed=3, dtype=torch.float64)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    grouped, report = ts.group_channels(model, x)
    assert len(report.grouped) == 4
    torch.testing.assert_close(run(grouped, x), run(model, x), rtol=1e-12, atol=1e-12)


def captured_outputs(model, x):
    outputs = {}

    def hook(name):
        def save(module, args, output):
            outputs[name] = (output[0] if isinstance(output, tuple) else output).clone()
        return save

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, ts.DepthwiseShift)]
    run(model, x)
    for handle in handles:
        handle.remove()
    return outputs


@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "inplace"])
def test_first_layer_output_is_bitwise_permuted(inplace):
    # Nothing upstream of the first shift reads permuted channels, so its output is the
    # original's, bit for bit, in the new channel order.
    model = mobilenet(seed=5, inplace=inplace, channels_last=True)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    grouped, report = ts.group_channels(model, x)
    name = report.layers[0].name
    original = captured_outputs(model, x)[name]
    permuted = captured_outputs(grouped, x)[name]
    assert torch.equal(permuted, original[:, report.layers[0].permutation])


class DirectShift(nn.Module):
    """Conv -> BN -> ReLU -> Shift -> Conv, the shift layer used directly."""

    def __init__(self, ndim, channels=20, inplace=False, active=False):
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[ndim - 1]
        bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[ndim - 1]
        shift = (ts.Shift1d, ts.Shift2d, ts.Shift3d)[ndim - 1]
        self.conv1 = conv(5, channels, 3, padding=1)
        self.bn = bn(channels)
        self.shift = shift(channels, padding="reflect", inplace=inplace, active_flag=active)
        self.conv2 = conv(channels, 7, 1)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x, loss = self.shift(x)
        return self.conv2(x * 0.5)


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "inplace"])
def test_shift_layers_used_directly(ndim, inplace):
    gen = torch.Generator().manual_seed(ndim)
    torch.manual_seed(ndim)
    model = randomize(DirectShift(ndim, inplace=inplace), gen)
    x = torch.randn(2, 5, *(7, 6, 5)[:ndim], generator=gen)
    if ndim > 1:
        model = model.to(memory_format=FORMATS[ndim])
        x = x.contiguous(memory_format=FORMATS[ndim])
    grouped, report = ts.group_channels(model, x)
    (layer,) = report.layers
    assert layer.grouped and layer.name == "shift"
    assert (layer.producers, layer.consumers) == (("conv1",), ("conv2",))
    assert_grouped_layout(grouped, report)
    torch.testing.assert_close(run(grouped, x), run(model, x))
    # The shift's own output: bitwise, permuted.
    trunk = lambda m, x: m.shift(torch.relu(m.bn(m.conv1(x))))[0]  # noqa: E731
    with torch.inference_mode():
        assert torch.equal(trunk(grouped, x.clone()), trunk(model, x.clone())[:, layer.permutation])


def test_active_shift_layer_is_grouped_too():
    gen = torch.Generator().manual_seed(7)
    model = randomize(DirectShift(2, active=True), gen)
    with torch.no_grad():
        model.shift.weight[::3] += 0.25  # interpolating shifts on some channels
    x = torch.randn(2, 5, 8, 8, generator=gen)
    grouped, report = ts.group_channels(model, x)
    layer = report.layers[0]
    assert layer.grouped and layer.moving == int((model.shift.weight != 0).any(1).sum())
    torch.testing.assert_close(run(grouped, x), run(model, x))


def test_permutation_order():
    w = torch.tensor([[0.0, 0.4], [2.0, -1.0], [0.6, 0.0], [0.0, 0.0], [2.2, -0.9], [-0.5, 0.0]])
    # SSL: 0.6 rounds to 1 and -0.5 to 0 (half to even); stable among equal shifts.
    assert grouping_permutation(w).tolist() == [1, 2, 4, 0, 3, 5]
    assert grouping_permutation(w, order="shift").tolist() == [2, 1, 4, 0, 3, 5]
    # Active: every non-zero shift moves; "shift" still sorts by the rounded shift.
    assert grouping_permutation(w, active=True).tolist() == [0, 1, 2, 4, 5, 3]
    assert grouping_permutation(w, active=True, order="shift").tolist() == [0, 5, 2, 1, 4, 3]
    with pytest.raises(ValueError, match="weight"):
        grouping_permutation(torch.zeros(3))
    with pytest.raises(ValueError, match="order"):
        grouping_permutation(w, order="size")


def test_the_caller_model_is_not_modified():
    model = mobilenet(seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grouped, report = ts.group_channels(model, torch.randn(1, 3, 32, 32))
    assert report.grouped
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(grouped, torch.fx.GraphModule) and not grouped.training


class ResidualShift(nn.Module):
    """The shift's input also feeds a residual add."""

    def __init__(self, head):
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)
        self.shift = ts.DepthwiseShift(ts.Shift2d(8))
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.head = head

    def forward(self, x):
        y = torch.relu(self.bn(self.conv1(x)))
        return self.head(self.conv2(self.shift(y)) + y)


@pytest.mark.parametrize("head, reason", [
    (nn.Identity(), "model output"),
    (nn.Conv2d(8, 4, 2, groups=2), "grouped conv (groups=2)"),
    (nn.Flatten(), "'head' (Flatten)"),
])
def test_residual_branch_that_cannot_be_permuted_is_skipped(head, reason):
    model = randomize(ResidualShift(head), torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, 6, 6)
    with pytest.warns(UserWarning, match="1 of 1 shift layers were not grouped"):
        grouped, report = ts.group_channels(model, x)
    assert list(report.skipped) == ["shift"] and reason in report.skipped["shift"]
    assert "skipped" in str(report) and report.max_abs_diff == 0.0
    assert torch.equal(run(grouped, x), run(model, x))


def test_residual_add_of_permuted_channels_is_grouped():
    # conv2's output rows are permuted too, so both operands of the add carry the same
    # channel order, and the head conv reads them: exact up to the head's and conv2's sums.
    model = randomize(ResidualShift(nn.Conv2d(8, 4, 1)), torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, 6, 6)
    grouped, report = ts.group_channels(model, x)
    layer = report.layers[0]
    assert layer.grouped, str(report)
    assert set(layer.producers) == {"conv1", "conv2"}
    assert set(layer.consumers) == {"conv2", "head"}
    torch.testing.assert_close(run(grouped, x), run(model, x))


class Chain(nn.Module):
    def __init__(self, *modules, before=None):
        super().__init__()
        self.body = nn.Sequential(*modules)
        self.before = before

    def forward(self, x):
        if self.before is not None:
            x = self.before(x)
        return self.body(x)


def shift_block(channels=8):
    return ts.DepthwiseShift(ts.Shift2d(channels))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.shift, self.out = nn.Conv2d(3, 4, 1), shift_block(4), nn.Conv2d(7, 2, 1)

    def forward(self, x):
        return self.out(torch.cat([self.shift(self.conv(x)), x], 1))


class SharedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.shift, self.out = nn.Conv2d(8, 8, 1), shift_block(), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.out(self.shift(self.conv(self.conv(x))))


def training(module):
    module.keep_training = True  # set back to training mode after randomize()'s eval()
    return module


@pytest.mark.parametrize("build, channels, reason", [
    (lambda: Chain(shift_block(3), nn.Conv2d(3, 2, 1)), 3, "model input 'x'"),
    (lambda: Chain(shift_block(), nn.Conv2d(8, 2, 1), before=nn.Linear(6, 6)), 8,
     "'before' (Linear)"),
    (lambda: Chain(nn.Conv2d(4, 8, 1, groups=2), shift_block(), nn.Conv2d(8, 2, 1)), 4,
     "grouped conv (groups=2)"),
    (lambda: Chain(nn.Conv2d(3, 8, 1), shift_block(), shift_block(), nn.Conv2d(8, 2, 1)), 3,
     "shift layer 'body.2'"),
    (lambda: Chain(nn.Conv2d(3, 8, 1), training(nn.BatchNorm2d(8)), shift_block(),
                   nn.Conv2d(8, 2, 1)), 3, "'body.1' (BatchNorm2d) is in training mode"),
    (lambda: Chain(nn.Conv2d(3, 8, 1), shift_block(), training(nn.Dropout()),
                   nn.Conv2d(8, 2, 1)), 3, "'body.2' (Dropout) is in training mode"),
    (Concat, 3, "concatenation"),
    (SharedConv, 8, "called 2 times"),
])
def test_layers_that_cannot_be_proven_per_channel_are_skipped(build, channels, reason):
    torch.manual_seed(0)
    model = randomize(build(), torch.Generator().manual_seed(0))
    for module in model.modules():
        if getattr(module, "keep_training", False):
            module.train()
    x = torch.randn(2, channels, 6, 6)
    with pytest.warns(UserWarning, match="not grouped"):
        _, report = ts.group_channels(model, x)
    assert report.skipped and reason in next(iter(report.skipped.values())), str(report)


def test_two_layers_in_sequence_and_shared_parameters():
    # conv2 consumes the first layer's channels and produces the second's: both grouped.
    model = randomize(Chain(nn.Conv2d(3, 8, 1), shift_block(), nn.ReLU(), nn.Conv2d(8, 8, 1),
                            nn.Hardswish(), shift_block(), nn.Conv2d(8, 2, 1)),
                      torch.Generator().manual_seed(4))
    x = torch.randn(2, 3, 6, 6)
    grouped, report = ts.group_channels(model, x)
    assert report.grouped == ["body.1", "body.5"]
    assert report.layers[0].consumers == report.layers[1].producers == ("body.3",)
    torch.testing.assert_close(run(grouped, x), run(model, x))
    model.body[0].bias = model.body[3].bias  # tied: one permutation cannot serve both
    with pytest.warns(UserWarning):
        _, report = ts.group_channels(model, x)
    assert "is shared with" in report.skipped["body.1"]


def test_conv_transpose_producer_and_consumer():
    model = randomize(Chain(nn.ConvTranspose2d(3, 8, 2, stride=2), nn.BatchNorm2d(8), nn.SiLU(),
                            shift_block(), nn.ConvTranspose2d(8, 2, 3)),
                      torch.Generator().manual_seed(6))
    x = torch.randn(2, 3, 5, 5)
    grouped, report = ts.group_channels(model, x)
    assert report.grouped == ["body.3"]
    torch.testing.assert_close(run(grouped, x), run(model, x))


def test_bad_arguments():
    with pytest.raises(TypeError, match="model"):
        ts.group_channels(lambda x: x, torch.randn(1))

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(RuntimeError, match="model: torch.fx could not trace"):
        ts.group_channels(Branchy(), torch.randn(1))
    with pytest.raises(ValueError, match="order: expected one of"):
        ts.group_channels(nn.Conv2d(3, 2, 1), torch.randn(1, 3, 5, 5), order="sorted")
    with pytest.raises(RuntimeError, match="example_input"):
        ts.group_channels(nn.Conv2d(3, 2, 1), torch.randn(1, 4, 5, 5))


def test_no_warning_when_everything_is_grouped(recwarn):
    model = randomize(DirectShift(2), torch.Generator().manual_seed(8))
    ts.group_channels(model, torch.randn(1, 5, 6, 6))
    ts.group_channels(Chain(shift_block(), nn.Conv2d(8, 2, 1)), torch.randn(1, 8, 4, 4),
                      warn=False)
    assert not [w for w in recwarn if "group_channels" in str(w.message)]



# TorchScript works but is deprecated in torch 2.13.
@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The TorchScript type system:UserWarning")
def test_grouped_model_scripts():
    # The GraphModule is a deployable model: TorchScript compiles it like the original.
    model = mobilenet(seed=9, inplace=True)
    x = torch.randn(1, 3, 32, 32)
    grouped, _ = ts.group_channels(model, x)
    scripted = torch.jit.script(grouped)
    assert torch.equal(run(scripted, x), run(grouped, x))
