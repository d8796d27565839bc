"""The Triton backend's tiles and index variants against the reference oracle, run by the
interpreter (or on CUDA with ``TORCHSHIFT2_TEST_DEVICE=cuda``).

The backend's values in general are the kernel suite's (tests/test_backends.py, cases
``triton-interpreter`` and ``triton-cuda``); these tests force the paths small tensors do
not reach by themselves: many tiles per plane with small tile sizes, the int64 offsets.
"""

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings

import torchshift2.backends.triton as triton_backend
from helpers import TEST_DEVICE as DEVICE, assert_close, layout, shift_cases, shift_with_grads

# No shrinking: under the interpreter it can take minutes; failures print their example.
FEW = settings(max_examples=8, deadline=None, derandomize=True,
               phases=(Phase.explicit, Phase.generate),
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _compare(x, weight, padding, active, crop):
    out, (grad_input, grad_weight) = shift_with_grads("triton", x, weight, padding, active,
                                                      crop)
    ref, (ref_input, ref_weight) = shift_with_grads("oracle", x, weight, padding, active, crop)
    assert out.dtype == x.dtype and out.shape == ref.shape and out.stride() == ref.stride()
    assert_close(out, ref, x.dtype)
    assert grad_input.dtype == x.dtype and grad_input.shape == x.shape
    assert grad_weight.dtype == weight.dtype
    assert_close(grad_input, ref_input, x.dtype)
    assert_close(grad_weight, ref_weight, torch.promote_types(x.dtype, weight.dtype))


@pytest.mark.parametrize("shape, memory_format, padding", [
    ((1, 2, 700), "contiguous", "border"),           # 1D rows wider than one tile
    ((1, 2, 20, 19), "contiguous", "reflect"),       # several row tiles and chunks per plane
    ((1, 40, 3, 4), "channels_last", "border"),      # several channel blocks
    ((1, 4, 9, 20), "channels_last", "reflect"),     # several position tiles and chunks
    ((1, 2, 3, 4, 30), "contiguous", "reflect"),
    ((1, 3, 5, 4, 6), "channels_last", "symmetric"),
])
def test_multi_tile_shapes(shape, memory_format, padding, config, monkeypatch):
    """Small tiles (64 float64 elements) so that small tensors span many tiles, chunks of
    tiles and channel blocks."""
    config(TILE_BYTES=512, CL_BYTES=32)
    monkeypatch.setattr(triton_backend._plan, "BWD_TILE_BYTES", 512)
    generator = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=generator, dtype=torch.float64)
    x = layout(x, memory_format).to(DEVICE)
    ndim = len(shape) - 2
    # Shifts up to ~5: several terms at the edges, and channel blocks wide enough for the
    # channels-last gather path (border adjoints cost the product of the run lengths).
    weight = torch.randn(shape[1], ndim, generator=generator, dtype=torch.float64) * 2
    weight = weight.to(DEVICE)
    crop = [(1, 2)] * ndim
    triton_backend._PLANS.clear()  # BWD_TILE_BYTES is not part of the cache key
    for active in (False, True):
        _compare(x, weight, padding, active, crop)
    triton_backend._PLANS.clear()


@FEW
@given(case=shift_cases(max_size=4))
def test_int64_index_path(case):
    """The BIG (int64 offsets) variant of every kernel computes the same values."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(triton_backend._plan, "needs_int64", lambda *tensors: True)
        patch.setattr(triton_backend, "_PLANS", {})  # cached launch plans hold BIG
        _compare(*case)
