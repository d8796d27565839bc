"""Shift1d/2d/3d: constructor, initialisation, forward contract and training."""

import pytest
import torch

import torchshift2 as ts

LAYERS = [(ts.Shift1d, 1), (ts.Shift2d, 2), (ts.Shift3d, 3)]


@pytest.mark.parametrize("layer_cls,ndim", LAYERS)
def test_forward_returns_output_and_sparsity_loss(layer_cls, ndim):
    layer = layer_cls(4, padding="circular", init_shift=2, sparsity_term=0.1)
    x = torch.randn(2, 4, *[5] * ndim)
    out, loss = layer(x)
    assert layer.weight.shape == (4, ndim) and layer.padding == "periodic"
    torch.testing.assert_close(out, ts.shift(x, layer.weight.detach(), "periodic"))
    torch.testing.assert_close(loss, 0.1 * layer.weight.abs().sum())
    assert layer_cls(4, sparsity_term=0)(x)[1] is None


@pytest.mark.parametrize("layer_cls,ndim", LAYERS)
def test_wrong_input_dim_names_input(layer_cls, ndim):
    with pytest.raises(ValueError, match="input"):
        layer_cls(3)(torch.randn(1, 3, *[4] * (ndim % 3 + 1)))


def test_init_rule_1_is_uniform_symmetric():
    torch.manual_seed(0)
    w = ts.Shift2d(20000, init_shift=(1.0, 3.0), init_thumb_rule=1).weight.detach()
    assert w[:, 0].abs().max() <= 1.0 and w[:, 1].abs().max() <= 3.0
    assert abs(float(w[:, 1].mean())) < 0.1
    assert float(w[:, 1].abs().mean()) == pytest.approx(1.5, abs=0.05)


def test_init_rule_2_has_magnitude_uniform_and_random_sign():
    torch.manual_seed(0)
    w = ts.Shift1d(20000, init_shift=2.0, init_thumb_rule=2).weight.detach().flatten()
    assert w.abs().max() <= 2.0 and float(w.abs().mean()) == pytest.approx(1.0, abs=0.05)
    assert 0.45 < float((w > 0).float().mean()) < 0.55


def test_reset_parameters_redraws():
    layer = ts.Shift2d(8)
    before = layer.weight.detach().clone()
    layer.reset_parameters()
    assert not torch.equal(before, layer.weight)


@pytest.mark.parametrize("kwargs,argument", [
    (dict(in_channels=-1), "in_channels"),
    (dict(in_channels=2, padding="nope"), "padding"),
    (dict(in_channels=2, init_thumb_rule=3), "init_thumb_rule"),
    (dict(in_channels=2, init_shift=(1, 2, 3)), "init_shift"),
    (dict(in_channels=2, sparsity_term=-1), "sparsity_term"),
])
def test_constructor_checks(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        ts.Shift2d(**kwargs)


def test_extra_repr_names_the_configuration():
    text = repr(ts.Shift3d(5, padding="reflect", active_flag=True))
    assert "Shift3d(5" in text and "reflect" in text and "active_flag=True" in text


@pytest.mark.parametrize("active", [False, True])
def test_training_lowers_the_loss(active):
    # Learn to undo a known shift: the target is the input rolled by (1, -2) per channel.
    torch.manual_seed(0)
    layer = ts.Shift2d(6, padding="periodic", active_flag=active, sparsity_term=0, init_shift=0.5)
    # A smooth periodic signal: the interpolation gradient points to the shift from afar.
    grid = torch.arange(12.0) * (2 * torch.pi / 12)
    phase = torch.rand(8, 6, 1, 1) * 2 * torch.pi
    x = torch.sin(grid[:, None] + phase) + torch.cos(grid[None, :] - phase)
    target = torch.roll(x, (1, -2), dims=(2, 3))
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        out, _ = layer(x)
        loss = torch.nn.functional.mse_loss(out, target)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    assert torch.allclose(layer.weight.detach().round(), torch.tensor([[1.0, -2.0]] * 6))


def test_sparsity_loss_shrinks_weights():
    torch.manual_seed(0)
    layer = ts.Shift2d(16, sparsity_term=1.0, init_shift=3)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.05)
    start = float(layer.weight.abs().sum())
    for _ in range(80):  # the L1 step is lr per iteration: 80 * 0.05 > init_shift
        optimizer.zero_grad()
        _, loss = layer(torch.randn(2, 16, 6, 6))
        loss.backward()
        optimizer.step()
    assert float(layer.weight.abs().sum()) < 0.3 * start
    assert float((layer.weight.detach().round() == 0).float().mean()) > 0.9


@pytest.mark.parametrize("layer_cls,ndim", LAYERS)
def test_factory_arguments_and_channel_multiplier(layer_cls, ndim):
    # Issue 18 items 8-9: the nn.Module factory arguments, and out_channels = k·C.
    layer = layer_cls(3, out_channels=6, dtype=torch.float64, device="cpu", active_flag=True,
                      init_thumb_rule=2)
    assert layer.weight.dtype == torch.float64 and layer.weight.shape == (6, ndim)
    x = torch.randn(2, 3, *[5] * ndim, dtype=torch.float64)
    out, _ = layer(x)
    torch.testing.assert_close(out, ts.reference.shift(x.repeat_interleave(2, 1),
                                                       layer.weight.detach(), active=True))
    assert "out_channels=6" in repr(layer)
    meta = layer_cls(3, device="meta")
    assert meta.weight.device.type == "meta"
    reloaded = layer_cls(3, out_channels=6, dtype=torch.float64)
    reloaded.load_state_dict(layer.state_dict())
    assert torch.equal(reloaded.weight, layer.weight)
    with pytest.raises(ValueError, match="out_channels"):
        layer_cls(3, out_channels=6, inplace=True)


GROUPED = [(ts.GroupedShift1d, 1), (ts.GroupedShift2d, 2), (ts.GroupedShift3d, 3)]


@pytest.mark.parametrize("layer_cls,ndim", GROUPED)
def test_grouped_shift_pattern_is_the_papers(layer_cls, ndim):
    # Issue 23: k^D groups of C // k^D channels in raster order of the taps, the remainder
    # with the centre tap (no shift); a tap moves as a one-hot depthwise kernel does.
    import itertools

    channels = 2 * 3 ** ndim + 2
    layer = layer_cls(channels, kernel_size=3, dilation=2)
    taps = list(itertools.product(range(3), repeat=ndim))
    expected = []
    for tap in taps:
        count = 2 + (2 if tap == (1,) * ndim else 0)
        expected += [[2.0 * (1 - i) for i in tap]] * count
    assert layer.weight.tolist() == expected
    assert not list(layer.parameters()) and "weight" in layer.state_dict()
    x = torch.randn(2, channels, *[6] * ndim, requires_grad=True)
    out, loss = layer(x)
    assert loss is None
    torch.testing.assert_close(out, ts.reference.shift(x, layer.weight))
    out.sum().backward()
    assert x.grad is not None and layer.weight.grad is None


def test_grouped_shift_equals_a_one_hot_depthwise_conv():
    torch.manual_seed(0)
    layer = ts.GroupedShift2d(9, kernel_size=3, emulate_dw=dict(kernel_size=3, padding=1))
    conv = torch.nn.Conv2d(9, 9, 3, padding=1, groups=9, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(9):
            conv.weight[c, 0, c // 3, c % 3] = 1.0
    x = torch.randn(2, 9, 7, 6)
    torch.testing.assert_close(layer(x)[0], conv(x))
    valid = ts.GroupedShift2d(9, kernel_size=3, emulate_dw=dict(kernel_size=3))
    conv.padding = (0, 0)
    torch.testing.assert_close(valid(x)[0], conv(x))


def test_replace_depthwise_grouped():
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1, groups=8),
                                torch.nn.Conv2d(8, 16, 5, stride=2, padding=2, dilation=1,
                                                groups=8))
    x = torch.randn(1, 8, 9, 10)
    shape = model(x).shape
    model = ts.replace_depthwise(model, grouped=True, padding="reflect")
    assert [type(m.shift) for m in model] == [ts.GroupedShift2d] * 2
    assert model[1].shift.kernel_size == (5, 5) and model[1].shift.weight.shape == (16, 2)
    assert model[0].shift.padding == "reflect" and model(x).shape == shape
    with pytest.raises(TypeError, match="grouped=True takes only padding"):
        ts.replace_depthwise(torch.nn.Sequential(), grouped=True, sparsity_term=0)


def test_float32_weight_with_bfloat16_input_under_autocast():
    x = torch.randn(2, 4, 6, 6)
    layer = ts.Shift2d(4, active_flag=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer(x.bfloat16())
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and layer.weight.grad.dtype == torch.float32
