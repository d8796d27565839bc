"""Strategies and comparison helpers shared by the test modules."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os

import torch
from hypothesis import strategies as st

import torchshift2 as ts

#: Device of the tensors drawn by :func:`shift_cases` (``TORCHSHIFT2_TEST_DEVICE``, default
#: ``cpu``): tests/triton runs on ``cuda`` when a GPU is there (benchmarks/gpu_run.sh). The
#: kernel suite (tests/test_backends.py) moves them to its ``backend_device``'s device.
TEST_DEVICE = torch.device(os.environ.get("TORCHSHIFT2_TEST_DEVICE", "cpu"))

#: Tolerances (atol, rtol) per dtype for kernels compared with the reference.
TOLERANCE = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-2, 1e-2),
    torch.bfloat16: (1e-1, 2e-2),
}

FORMATS = ("contiguous", "channels_last", "permuted")


def layout(x: torch.Tensor, memory_format: str) -> torch.Tensor:
    """``x`` with the same values in another memory layout."""
    ndim = x.dim() - 2
    if memory_format == "channels_last":
        order = [0] + list(range(2, ndim + 2)) + [1]
        return x.permute(order).contiguous().permute([0, ndim + 1] + list(range(1, ndim + 1)))
    if memory_format == "permuted":  # neither contiguous nor channels-last
        return x.transpose(0, -1).contiguous().transpose(0, -1)
    return x.contiguous()


@st.composite
def shift_cases(draw, dtypes=(torch.float64,), max_size=6, max_shift=8.0, ndims=(1, 2, 3)):
    """A random ``(input, weight, padding, active, crop)`` for :func:`torchshift2.shift`."""
    ndim = draw(st.sampled_from(ndims))
    sizes = draw(st.lists(st.integers(1, max_size), min_size=ndim, max_size=ndim))
    batch = draw(st.integers(1, 3))
    channels = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, *sizes, generator=generator, dtype=torch.float64)
    x = layout(x.to(dtype), draw(st.sampled_from(FORMATS)))
    scale = draw(st.sampled_from([0.5, 2.0, max_shift]))
    weight = torch.randn(channels, ndim, generator=generator, dtype=torch.float64) * scale
    if draw(st.booleans()):  # integers and half-integers: the rounding/floor edge cases
        weight = torch.round(weight * 2) / 2
    weight = weight.to(draw(st.sampled_from([torch.float32, torch.float64])))
    crop = None
    if draw(st.booleans()):
        crop = []
        for size in sizes:
            before = draw(st.integers(0, size))
            crop.append((before, draw(st.integers(0, size - before))))
    padding = draw(st.sampled_from(ts.PADDINGS + tuple(ts.PADDING_ALIASES)))
    return x.to(TEST_DEVICE), weight.to(TEST_DEVICE), padding, draw(st.booleans()), crop


def assert_close(actual, expected, dtype=torch.float64, msg=""):
    atol, rtol = TOLERANCE.get(dtype, (0, 0))
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=msg or None)


def oracle_with_grads(x, weight, padding, active, crop, grad_output, mask=(True, True)):
    """The reference's output and the gradients in ``mask`` (autograd through the gather;
    ``None`` where not asked for)."""
    xr = x.detach().requires_grad_(mask[0])
    wr = weight.detach().requires_grad_(mask[1])
    out = ts.reference.shift(xr, wr, padding, active, crop)
    wanted = [t for t, m in zip((xr, wr), mask) if m]
    grads = iter(torch.autograd.grad(out, wanted, grad_output))
    return out.detach(), tuple(next(grads) if m else None for m in mask)


def shift_with_grads(backend, x, weight, padding, active, crop, grad_output=None):
    """Forward and, for floating inputs, ``(grad_input, grad_weight)`` through ``backend``.

    ``backend="oracle"`` differentiates :func:`torchshift2.reference.shift` directly (no
    custom op): the oracle every backend is compared with. The backward runs inside
    ``use_backend(backend)`` too: the backend is chosen when an op runs, so a backward run
    after the block would take the default backend.
    """
    x = x.detach().requires_grad_(x.dtype.is_floating_point)
    weight = weight.detach().requires_grad_(x.dtype.is_floating_point)
    with contextlib.nullcontext() if backend == "oracle" else ts.use_backend(backend):
        if backend == "oracle":
            out = ts.reference.shift(x, weight, padding, active, crop)
        else:
            out = ts.shift(x, weight, padding, active, crop)
        if not x.requires_grad:
            return out, None
        if grad_output is None:
            grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(1),
                                      dtype=torch.float64).to(device=x.device, dtype=x.dtype)
        grads = torch.autograd.grad(out, (x, weight), grad_output, allow_unused=True)
    return out, grads


INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool,
                  torch.uint16, torch.uint32, torch.uint64)


@dataclasses.dataclass(frozen=True)
class BackendDevice:
    """One case of the kernel suite's ``backend_device`` parameter (tests/conftest.py): a
    backend of :mod:`torchshift2.backends` on a device.

    ``interpreted``: the Triton kernels run by the interpreter (CPU tensors, numpy per
    program), where the suite uses fewer hypothesis examples and smaller fixed shapes, and
    where reduced-precision *arithmetic* is no evidence (the interpreter's bfloat16 is
    unreliable upstream): only float32 / float64 arithmetic is compared there.
    """

    id: str
    backend: str
    device: torch.device
    interpreted: bool = False

    @property
    def module(self):
        """The backend module: ``forward``, ``backward``, ``shift_inplace`` (the ``Backend``
        protocol of :mod:`torchshift2.backends`)."""
        return importlib.import_module(f"torchshift2.backends.{self.backend}")

    @property
    def low_precision(self):
        """Floating dtypes below float64 whose arithmetic is compared here."""
        if self.interpreted:
            return (torch.float32,)
        return (torch.float32, torch.float16, torch.bfloat16)

    def shape(self, shape):
        """``shape`` as this case runs it: unchanged, or under the interpreter at most one
        sample, two channels and 4 positions per spatial dim."""
        if not self.interpreted:
            return tuple(shape)
        return (1, min(shape[1], 2), *(min(s, 4) for s in shape[2:]))

    def __str__(self):
        return self.id


BACKEND_DEVICES = {
    "reference-cpu": BackendDevice("reference-cpu", "reference", torch.device("cpu")),
    "cpp-cpu": BackendDevice("cpp-cpu", "cpp", torch.device("cpu")),
    "triton-interpreter": BackendDevice("triton-interpreter", "triton", torch.device("cpu"),
                                        interpreted=True),
    "triton-cuda": BackendDevice("triton-cuda", "triton", torch.device("cuda")),
}
