"""shift_: the in-place sparse SSL forward for inference: the C++ kernel's own paths, the
op, and the layers' ``inplace`` option. (Its values against the reference on every backend:
the kernel suite, tests/test_backends.py.)"""

import pytest
import torch

import torchshift2 as ts
from helpers import layout


@pytest.mark.parametrize("threads", [1, 4])  # one pass per sample (batch >= threads), two passes
@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("padding", ts.PADDINGS)
@pytest.mark.parametrize("spatial_reversed", [False, True])
def test_channels_innermost_inplace_matches_reference(threads, ndim, padding, spatial_reversed):
    # Channels innermost: rows are overwritten in order, so a source row is read either
    # before (later rows) or after (earlier rows, from a saved copy) its own shift. Shifts
    # beyond the sizes make circular / reflect reads land anywhere, both ways.
    gen = torch.Generator().manual_seed(ndim)
    sizes = (5, 4, 6)[:ndim]
    x = torch.randn(2, 20, *sizes, generator=gen)
    spatial = list(range(2, ndim + 2))
    order = [0] + (spatial[::-1] if spatial_reversed else spatial) + [1]
    inverse = [order.index(d) for d in range(ndim + 2)]
    x = x.permute(order).contiguous().permute(inverse)
    assert x.stride(1) == 1
    weight = torch.randint(-7, 8, (20, ndim), generator=gen).float()
    weight[::3] = 0
    expected = ts.reference.shift(x, weight, padding)
    y = x.clone()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad(), ts.use_backend("cpp"):
            ts.shift_(y, weight, padding)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(y, expected)


def test_refuses_autograd():
    x = torch.randn(1, 2, 5, requires_grad=True)
    with pytest.raises(RuntimeError, match="shift_"):
        ts.shift_(x, torch.zeros(2, 1))
    with pytest.raises(RuntimeError, match="shift_"):
        ts.shift_(x.detach(), torch.zeros(2, 1, requires_grad=True))


def test_opcheck_and_compile():
    x = layout(torch.randn(2, 3, 5, 4), "channels_last")
    weight = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-2.0, 1.0]])
    torch.library.opcheck(torch.ops.torchshift2.shift_.default, (x.clone(), weight, "reflect"))

    def infer(x, w):
        y = x * 2
        ts.shift_(y, w, "reflect")
        return y + 1

    with torch.no_grad():
        compiled = torch.compile(infer, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x, weight), ts.shift(x * 2, weight, "reflect") + 1)


def test_overlapping_input_is_refused():
    x = torch.randn(1, 1, 5).expand(2, 3, 5)
    with torch.no_grad(), pytest.raises(RuntimeError, match="input"):
        ts.shift_(x, torch.ones(3, 1))


# The layers' inplace=True option (inference with a trained, sparse layer).
LAYERS = {1: ts.Shift1d, 2: ts.Shift2d, 3: ts.Shift3d}


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("padding", ts.PADDINGS)
def test_layer_inplace_matches_out_of_place(ndim, padding):
    torch.manual_seed(ndim)
    layer = LAYERS[ndim](6, padding=padding, init_shift=2.0, inplace=True)
    with torch.no_grad():
        layer.weight[::2] = 0.3  # rounds to 0: these channels are not touched
    x = torch.randn(2, 6, *[5, 4, 3][:ndim])
    expected = ts.shift(x, layer.weight.detach(), padding)
    with torch.no_grad():
        out, loss = layer(x)
    assert out is x and torch.equal(x, expected)
    assert loss is not None and loss.item() == pytest.approx(
        layer.sparsity_term * layer.weight.abs().sum().item())


def test_layer_inplace_under_inference_mode_scripting_and_compile():
    layer = ts.Shift2d(4, padding="periodic", inplace=True)
    compiled = torch.compile(layer, fullgraph=True)
    scripted = torch.jit.script(layer)
    for run in (layer, compiled, scripted):
        x = torch.randn(2, 4, 5, 5)
        expected = ts.shift(x, layer.weight.detach(), "periodic")
        with torch.inference_mode():
            out, _ = run(x)
        assert torch.equal(x, expected) and torch.equal(out, expected)


def test_layer_inplace_refuses_autograd_and_can_be_switched_off():
    layer = ts.Shift2d(3, inplace=True)
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(RuntimeError, match="inplace: True is for inference"):
        layer(x)
    layer.inplace = False  # train again
    out, _ = layer(x)
    out.sum().backward()
    assert layer.weight.grad is not None
    assert "inplace=True" in repr(ts.Shift2d(3, inplace=True))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(active_flag=True), ValueError, "inplace: True needs SSL"),
    (dict(emulate_dw=dict(kernel_size=3, stride=2)), ValueError, "inplace: True needs an output"),
    (dict(emulate_dw=dict(kernel_size=3)), ValueError, "inplace: True needs an output"),
])
def test_layer_inplace_bad_combinations(kwargs, error, match):
    with pytest.raises(error, match=match):
        ts.Shift2d(4, inplace=True, **kwargs)


def test_layer_inplace_must_be_a_bool():
    with pytest.raises(TypeError, match="inplace: expected a bool, got int"):
        ts.Shift2d(4, inplace=1)
