"""torch.library.opcheck of the custom ops on contiguous, channels-last and permuted inputs."""

import pytest
import torch

import torchshift2 as ts
from helpers import FORMATS, layout


def _samples():
    torch.manual_seed(0)
    for ndim, shape in ((1, (2, 3, 7)), (2, (2, 3, 5, 6)), (3, (1, 2, 3, 4, 5))):
        for padding in ts.PADDINGS:
            for active in (False, True):
                for memory_format in FORMATS:
                    x = layout(torch.randn(shape, dtype=torch.float64), memory_format)
                    k = 2 if memory_format == "permuted" else 1  # a channel multiplier
                    weight = torch.randn(k * shape[1], ndim, dtype=torch.float64) * 3
                    crop = [1, 0] * ndim
                    mode = "active" if active else "ssl"
                    yield pytest.param(x, weight, padding, active, crop,
                                       id=f"{ndim}d-{padding}-{mode}-{memory_format}")


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("x,weight,padding,active,crop", list(_samples()))
def test_opcheck(backend, x, weight, padding, active, crop):
    with ts.use_backend(backend):
        x = x.requires_grad_()
        weight = weight.requires_grad_()
        torch.library.opcheck(torch.ops.torchshift2.shift.default,
                              (x, weight, padding, active, crop))
        out_shape = ts._spec.output_shape(x.shape, ts._spec.pair_crop(crop), weight.shape[0])
        grad_output = torch.randn(out_shape, dtype=x.dtype)
        for mask in ([True, True], [True, False], [False, True]):
            torch.library.opcheck(torch.ops.torchshift2.shift_backward.default,
                                  (grad_output, x.detach(), weight.detach(), padding, active,
                                   crop, mask))


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_opcheck_kernel_ops(backend, memory_format):
    """The private opaque ops that the public (triton_op) ones call on every backend but
    Triton on CUDA, which is what a compiled graph runs there."""
    torch.manual_seed(1)
    x = layout(torch.randn(2, 3, 5, 6, dtype=torch.float64), memory_format)
    weight = torch.randn(6, 2, dtype=torch.float64) * 3
    grad_output = layout(torch.randn(2, 6, 4, 6, dtype=torch.float64), memory_format)
    ops = torch.ops.torchshift2
    with ts.use_backend(backend):
        for padding in ("zeros", "reflect"):
            torch.library.opcheck(ops._shift_kernel.default,
                                  (x, weight, padding, True, [1, 0, 0, 0]))
            for mask in ([True, True], [False, True]):
                torch.library.opcheck(ops._shift_backward_kernel.default,
                                      (grad_output, x, weight, padding, False, [1, 0, 0, 0],
                                       mask))
            torch.library.opcheck(ops._shift_kernel_.default, (x.clone(), weight[:3], padding))


def test_opcheck_integer_input():
    x = torch.randint(-50, 50, (2, 3, 6), dtype=torch.int16)
    torch.library.opcheck(torch.ops.torchshift2.shift.default,
                          (x, torch.randn(3, 1), "symmetric", False, [0, 0]))


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("active", [False, True])
@pytest.mark.parametrize("padding", ["zeros", "reflect", "periodic"])
@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
@pytest.mark.parametrize("multiplier, crop", [(1, [0, 0, 0, 0]), (2, [1, 0, 0, 2])])
def test_backward_computes_only_the_gradients_in_output_mask(backend, active, padding,
                                                             memory_format, multiplier, crop):
    """Issue 23: each masked backward equals its part of the full one and the reference's;
    the other output is the empty placeholder. (Channels-last float64 with zeros padding runs
    the fused gathers; without crop, grad_input alone is the inverse shift.)"""
    torch.manual_seed(3)
    x = layout(torch.randn(2, 20, 9, 8, dtype=torch.float64), memory_format)
    weight = torch.randn(20 * multiplier, 2, dtype=torch.float64) * 2
    out_shape = ts._spec.output_shape(x.shape, ts._spec.pair_crop(crop), weight.shape[0])
    grad_output = layout(torch.randn(out_shape, dtype=torch.float64), memory_format)
    op = torch.ops.torchshift2.shift_backward.default
    with ts.use_backend(backend):
        full = op(grad_output, x, weight, padding, active, crop, [True, True])
        only_input = op(grad_output, x, weight, padding, active, crop, [True, False])
        only_weight = op(grad_output, x, weight, padding, active, crop, [False, True])
    torch.testing.assert_close(only_input[0], full[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(only_weight[1], full[1], rtol=0, atol=1e-12)
    assert only_input[1].shape == (0,) and only_weight[0].shape == (0,)
    x_ref, w_ref = x.clone().requires_grad_(), weight.clone().requires_grad_()
    ref = ts.reference.shift(x_ref.repeat_interleave(multiplier, 1), w_ref, padding, active,
                             ts._spec.pair_crop(crop))
    expected = torch.autograd.grad(ref, (x_ref, w_ref), grad_output)
    torch.testing.assert_close(full[0], expected[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(full[1], expected[1], rtol=1e-10, atol=1e-10)
