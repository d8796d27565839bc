"""Bounded memory (SPEC §5, issue 18 item 7): a forward costs its output plus buffers that do
not grow with the input, a fwd+bwd its output and grad_input plus such buffers.

Peaks are read in fresh processes by benchmarks/peak_memory.py; the calls that copy (layout
copies, widened bfloat16, a channel multiplier) run in blocks, which the second test drives
through several blocks of samples and of channels against the reference.
"""

import sys
from pathlib import Path

import pytest
import torch

import torchshift2 as ts
from helpers import assert_close

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import peak_memory  # noqa: E402

CASES = {case[0]: case for case in peak_memory.CASES}


@pytest.mark.parametrize("backend, name", [
    ("cpp", "float32 2D channels-last strided active"),       # a layout copy: was 2.0x
    ("cpp", "bfloat16 2D channels-last fwd+bwd SSL"),         # widened copies: was 7.4x
    ("cpp", "float32 3D channels-last fwd+bwd active"),       # planes of 1 MiB: was 4.0x
    ("reference", "uint8 1D SSL"),                            # int64 gather indices: was 4.3x
])
def test_peak_memory_is_bounded(backend, name):
    row = peak_memory.run(CASES[name], 128, backend)
    assert row["ok"], f"{name}: {row['ratio']:.2f}x the input, bound {row['bound']}x"


def _channels_last_with_gaps(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last memory with a gap after every row: neither dense nor contiguous."""
    n, c, h, w = x.shape
    big = torch.empty(n, h, w + 3, c, dtype=x.dtype)
    big[:, :, :w].copy_(x.permute(0, 2, 3, 1))
    return big[:, :, :w].permute(0, 3, 1, 2)


@pytest.mark.parametrize("active", [False, True])
def test_calls_in_blocks_match_the_reference(active):
    # One sample of 40 channels of 300x300 float32 is 14 MB: blocks of 16 channels (two whole
    # ones and a partial one), each copied from a gapped channels-last input, with a channel
    # multiplier of 2 (the k grad_input contributions summed per block).
    torch.manual_seed(0)
    x = _channels_last_with_gaps(torch.randn(1, 40, 300, 300))
    weight = torch.randn(80, 2, dtype=torch.float64) * 3
    assert ts.backends.cpp.kernel_name("forward", x, "reflect", active, multiplier=2).endswith(
        "[blocks]")
    xr = x.detach().requires_grad_()
    wr = weight.clone().requires_grad_()
    with ts.use_backend("cpp"):
        out = ts.shift(xr, wr, "reflect", active, crop=[(1, 2), (0, 3)])
    grad_output = torch.randn(out.shape)
    grad_input, grad_weight = torch.autograd.grad(out, (xr, wr), grad_output)
    xd = x.detach().double().requires_grad_()
    wd = weight.clone().requires_grad_()
    ref = ts.reference.shift(xd.repeat_interleave(2, 1), wd, "reflect", active,
                             crop=[(1, 2), (0, 3)])
    ref_input, ref_weight = torch.autograd.grad(ref, (xd, wd), grad_output.double())
    assert_close(out.double(), ref.detach(), torch.float32)
    assert_close(grad_input.double(), ref_input, torch.float32)
    scale = float(ref_weight.abs().max())
    assert_close(grad_weight / scale, ref_weight / scale, torch.float32)


@pytest.mark.parametrize("padding", ["zeros", "reflect"])
def test_channel_blocks_of_a_channels_last_grad_input(padding):
    # Regression: a 12.8 MB channels-last sample with a contiguous grad_output runs the
    # backward in blocks of 16 channels; each block's grad_input is a slice whose rows have
    # all 20 channels, which the gathers wrote as rows of 16 (garbage for every element but
    # the first column) until plan_backward sent such slices through a temporary.
    torch.manual_seed(0)
    x = torch.randn(1, 20, 400, 400).contiguous(memory_format=torch.channels_last)
    weight = torch.rand(20, 2) * 8 - 4
    grad_output = torch.randn(1, 20, 400, 400)
    assert ts.backends.cpp.kernel_name("backward", x, padding, grad_output=grad_output).endswith(
        "[blocks]")
    grads = []
    for fn in (ts.backends.cpp.backward, ts.reference.shift):
        xr = x.detach().requires_grad_()
        wr = weight.clone().requires_grad_()
        if fn is ts.reference.shift:
            grads.append(torch.autograd.grad(fn(xr, wr, padding), (xr, wr), grad_output))
        else:
            grads.append(fn(grad_output, x, weight, padding, False, [0, 0, 0, 0]))
    assert_close(grads[0][0], grads[1][0], torch.float32)
    scale = float(grads[1][1].abs().max())
    assert_close(grads[0][1] / scale, grads[1][1] / scale, torch.float32)


@pytest.mark.parametrize("active", [False, True])
def test_channels_last_3d_beyond_the_planes_budget_goes_planar(active):
    # Planes of 8x128x136 do not fit a task's buffers: the 3D channels-last backward (and the
    # Active Shift forward, by the cost model of AVX-512 and portable builds; AVX2 builds
    # gather) run the planar kernels on contiguous copies of blocks instead of a gather per
    # corner; results as the reference's.
    torch.manual_seed(0)
    x = torch.randn(1, 20, 8, 128, 136).contiguous(memory_format=torch.channels_last_3d)
    weight = torch.rand(20, 3) * 8 - 4
    assert ts.backends.cpp.kernel_name("backward", x) == "backward_planar [blocks]"
    if active and ts.backends.cpp.isa() != "avx2":
        assert ts.backends.cpp.kernel_name("forward", x, active=True, weight=weight) == (
            "active_forward_planar [blocks]")
    grads, outs = [], []
    for fn in (ts.shift, ts.reference.shift):
        xr = x.detach().requires_grad_()
        wr = weight.clone().requires_grad_()
        with ts.use_backend("cpp"):
            out = fn(xr, wr, "border", active)
            outs.append(out.detach())
            grads.append(torch.autograd.grad(out, (xr, wr), torch.ones_like(out) * 0.5 + out))
    assert outs[0].is_contiguous(memory_format=torch.channels_last_3d)
    assert_close(outs[0], outs[1], torch.float32)
    assert_close(grads[0][0], grads[1][0], torch.float32)
    scale = float(grads[1][1].abs().max())
    assert_close(grads[0][1] / scale, grads[1][1] / scale, torch.float32)
