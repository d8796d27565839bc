"""The channels-last forward's cost model (torchshift2/backends/cpp/csrc/cost_model.h): every
kernel it may choose matches the reference on the same call (forced through
``kernel_override``, the calibration script's switch), its choice follows the shift spread,
and the override refuses what a kernel cannot run."""

from __future__ import annotations

import pytest
import torch

from torchshift2 import reference
from torchshift2.backends import cpp

pytestmark = pytest.mark.skipif(cpp.isa() != "avx512" and cpp.isa() != "portable",
                                reason="the cost model decides on AVX-512 / portable builds")


def _channels_last(x):
    return x.contiguous(memory_format=torch.channels_last if x.dim() == 4
                        else torch.channels_last_3d)


def _weights(channels, ndim, gen):
    yield "equal", torch.full((channels, ndim), 1.25)
    yield "sparse", torch.where(torch.rand(channels, 1, generator=gen) < 0.9, 0.0,
                                torch.randint(-3, 4, (channels, ndim), generator=gen).float())
    yield "wide", torch.rand(channels, ndim, generator=gen) * 8 - 4


@pytest.mark.parametrize("shape", [(2, 40, 7, 9), (1, 16, 3, 5, 6)])
@pytest.mark.parametrize("active", [False, True], ids=["ssl", "active"])
@pytest.mark.parametrize("padding", ["zeros", "reflect"])
@pytest.mark.parametrize("kernel", ["taps", "gather", "planes", "planar"])
def test_every_kernel_of_the_model_matches_the_reference(shape, active, padding, kernel):
    gen = torch.Generator().manual_seed(0)
    x = _channels_last(torch.randn(shape, generator=gen))
    for name, w in _weights(shape[1], len(shape) - 2, gen):
        expected = reference.shift(x, w, padding=padding, active=active)
        with cpp.kernel_override(kernel):
            got = cpp.forward(x, w, padding, active, [0] * (2 * (len(shape) - 2)), 0.0)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6, msg=name)


def test_the_choice_follows_the_spread():
    x = _channels_last(torch.empty(4, 64, 28, 28, device="meta"))
    equal = torch.full((64, 2), 1.0)
    c = torch.arange(64.0)
    spread = torch.stack([c % 4 - 1.5, (c // 4) % 4 - 1.5], dim=1)
    assert cpp.kernel_name("forward", x, weight=equal) == "ssl_forward_cl_taps"
    assert cpp.kernel_name("forward", x, weight=spread) == "ssl_forward_cl_planes"
    assert cpp.kernel_name("forward", x, weight=equal + 0.5, active=True) == (
        "active_forward_cl_taps")
    assert cpp.kernel_name("forward", x, weight=spread, active=True) == (
        "active_forward_cl_planes")


def test_beyond_the_cache_the_model_changes():
    # cost_model.h, kCostModelBeyondCache: there the taps prefetch and stream (cache.h), so
    # the 7-8 taps per block of uniform shifts in +-1.5 cost less than the planes, and the
    # gathers are never chosen.
    x = _channels_last(torch.empty(8, 64, 40, 40, device="meta"))
    gen = torch.Generator().manual_seed(0)
    uniform = torch.rand(64, 2, generator=gen) * 3 - 1.5
    wide = torch.rand(64, 2, generator=gen) * 8 - 4
    large = _channels_last(torch.empty(2, 32, 96, 96, device="meta"))
    with cpp.assumed_cache(1 << 40):
        assert cpp.kernel_name("forward", x, weight=uniform) == "ssl_forward_cl_planes"
        assert cpp.kernel_name("forward", large) == "ssl_forward_cl_gather"
    with cpp.assumed_cache(0):
        assert cpp.kernel_name("forward", x, weight=uniform) == "ssl_forward_cl_taps"
        assert cpp.kernel_name("forward", x, weight=wide) == "ssl_forward_cl_planes"
        assert cpp.kernel_name("forward", large) != "ssl_forward_cl_gather"


def test_override_refuses_what_a_kernel_cannot_run():
    x = torch.randn(2, 9, 16).transpose(1, 2)  # 1D, channels innermost: no planes
    w = torch.zeros(16, 1)
    with cpp.kernel_override("planes"), pytest.raises(RuntimeError, match="'planes' cannot"):
        cpp.forward(x, w, "zeros", False, [0, 0], 0.0)
    with cpp.kernel_override("planar"), pytest.raises(RuntimeError, match="'planar' cannot"):
        cpp.forward(x, w, "zeros", False, [0, 0], 0.0)
    with pytest.raises(RuntimeError, match="kernel: expected 'none'"):
        with cpp.kernel_override("fastest"):
            pass
    assert cpp.kernel_name("forward", x, weight=w) == "ssl_forward_cl_taps"

