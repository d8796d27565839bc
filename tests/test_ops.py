"""torch.library.opcheck of both custom ops on contiguous, channels-last and permuted inputs."""

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
                    weight = torch.randn(shape[1], ndim, dtype=torch.float64) * 3
                    crop = [1, 0] * ndim
                    yield pytest.param(x, weight, padding, active, crop,
                                       id=f"{ndim}d-{padding}-{'active' if active else 'ssl'}-{memory_format}")


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("x,weight,padding,active,crop", list(_samples()))
def test_opcheck(backend, x, weight, padding, active, crop):
    with ts.use_backend(backend):
        x = x.requires_grad_()
        weight = weight.requires_grad_()
        torch.library.opcheck(torch.ops.torchshift2.shift.default, (x, weight, padding, active, crop))
        out_shape = ts._spec.output_shape(x.shape, ts._spec.pair_crop(crop))
        grad_output = torch.randn(out_shape, dtype=x.dtype)
        torch.library.opcheck(torch.ops.torchshift2.shift_backward.default,
                              (grad_output, x.detach(), weight.detach(), padding, active, crop))


def test_opcheck_integer_input():
    x = torch.randint(-50, 50, (2, 3, 6), dtype=torch.int16)
    torch.library.opcheck(torch.ops.torchshift2.shift.default,
                          (x, torch.randn(3, 1), "symmetric", False, [0, 0]))
