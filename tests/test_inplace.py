"""shift_: the in-place sparse SSL forward for inference: the C++ kernel's own paths, the
op, and the layers' ``inplace`` option. (Its values against the reference on every backend:
the kernel suite, tests/test_backends.py.)"""

import pytest
import torch

import torchshift2 as ts
from helpers import layout

#: The C++ build gathers a narrow block of moving channels (not on AVX2: slow gathers).
GATHERS = ts.backends.cpp.isa() != "avx2"


def _cpp_shift_(x, weight, padding, threads):
    """A copy of ``x`` shifted in place by the C++ kernel with ``threads`` threads (four on
    two cores still split the work: fewer samples than threads takes the two-pass path)."""
    y = x.clone()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad(), ts.use_backend("cpp"):
            ts.shift_(y, weight, padding)
    finally:
        torch.set_num_threads(old)
    return y


@pytest.mark.parametrize("threads", [1, 4])  # one pass per sample (batch >= threads), two passes
@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("padding", ts.PADDINGS)
@pytest.mark.parametrize("spatial_reversed", [False, True])
@pytest.mark.parametrize("grouped", [False, True])
def test_channels_innermost_inplace_matches_reference(threads, ndim, padding, spatial_reversed,
                                                      grouped):
    # Channels innermost: rows are overwritten in order, so a source row is read either
    # before (later rows) or after (earlier rows, from a saved copy) its own shift. Shifts
    # beyond the sizes make circular / reflect reads land anywhere, both ways. `grouped`:
    # adjacent channels share shifts (runs of 1-4, as group_channels leaves them), which the
    # kernel moves together.
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
    if grouped:
        lengths = torch.tensor([1, 3, 2, 4, 1, 3, 2, 4])  # 20 channels, in runs
        weight = weight[:8].repeat_interleave(lengths, 0)
    expected = ts.reference.shift(x, weight, padding)
    assert torch.equal(_cpp_shift_(x, weight, padding, threads), expected)


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


@pytest.mark.parametrize("threads", [1, 4])  # per sample, and two passes over all rows
@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("padding", ts.PADDINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.int32])
@pytest.mark.parametrize("first", [0, 21, 36])  # the block at the start, inside, at the end
def test_narrow_moving_block_inplace_matches_reference(threads, ndim, padding, dtype, first):
    """Channels innermost with the moving channels among few adjacent ones (as
    group_channels leaves them): the 4-byte kernel gathers their 16-channel block back from
    a saved copy; channels of the block that do not move come back unchanged."""
    gen = torch.Generator().manual_seed(first + ndim)
    sizes = (5, 4, 6)[:ndim]
    x = torch.randint(-1000, 1000, (3, 48, *sizes), generator=gen).to(dtype)
    x = layout(x, "channels_last") if ndim > 1 else x.transpose(1, 2).contiguous().transpose(1, 2)
    weight = torch.zeros(48, ndim)
    moving = torch.cat([torch.arange(first, first + 5), torch.arange(first + 6, first + 12)])
    sign = torch.randint(0, 2, (len(moving), ndim), generator=gen) * 2 - 1
    weight[moving] = (torch.randint(1, 4, (len(moving), ndim), generator=gen) * sign).float()
    weight[moving[-1], 0] = 9.0  # beyond every size: all fill (zeros), or wrapped far
    kernel = ts.backends.cpp.kernel_name("inplace", x, padding, False, weight=weight)
    assert ("block_gather" in kernel) == GATHERS, kernel
    expected = ts.reference.shift(x, weight, padding)
    assert torch.equal(_cpp_shift_(x, weight, padding, threads), expected)


@pytest.mark.parametrize("padding", ts.PADDINGS)
@pytest.mark.parametrize("arrangement", ["few", "few_pairs", "spread", "pairs", "block"])
def test_channels_innermost_inplace_of_wide_rows_matches_reference(padding, arrangement):
    """Rows wider than the row kernel's L1 chunk (300 float32 channels: 6 positions per 8 KB
    chunk, 13 per row), in one and two passes; moving channels: 5 spread, or 3 pairs of equal
    shifts (a run at a time, chunk by chunk), ~90 spread one by one or in pairs (a position
    at a time), or all at the end (the block gather)."""
    gen = torch.Generator().manual_seed(7)
    x = layout(torch.randn(2, 300, 3, 13, generator=gen), "channels_last")
    weight = torch.randint(-4, 5, (300, 2), generator=gen).float()
    weight[torch.rand(300, generator=gen) < 0.7] = 0
    if arrangement == "few":
        weight = torch.zeros(300, 2)
        weight[::60] = torch.tensor([[2.0, -1.0], [-3.0, 0.0], [1.0, 4.0], [0.0, -2.0], [5.0, 1.0]])
    if arrangement == "few_pairs":
        weight = torch.zeros(300, 2)
        weight[10:12], weight[150:152], weight[298:] = 2.0, torch.tensor([-1.0, 3.0]), -4.0
    if arrangement == "pairs":
        weight = weight[:150].repeat_interleave(2, 0)
    if arrangement == "block":
        weight = weight[torch.argsort((weight != 0).any(1).int(), stable=True)]
    kernel = ts.backends.cpp.kernel_name("inplace", x, padding, False, weight=weight)
    assert ("block_gather" in kernel) == (arrangement == "block" and GATHERS), kernel
    expected = ts.reference.shift(x, weight, padding)
    for threads in (1, 4):
        assert torch.equal(_cpp_shift_(x, weight, padding, threads), expected), threads
