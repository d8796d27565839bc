"""CUDA integration of the Triton backend: opcheck, autograd, layers, torch.compile, CUDA
graphs, large tensors, determinism and non-finite weights on real GPU tensors.

Skipped without a GPU (CI has none); benchmarks/gpu_run.sh runs them on a GPU machine. The
kernels' values against the reference (realistic shapes, the channel multiplier, in place,
grad_output layouts, ...) are the kernel suite's: tests/test_backends.py, case
``triton-cuda`` (on CPU through the interpreter in CI, case ``triton-interpreter``).
"""

import pytest
import torch

import torchshift2 as ts
from helpers import assert_close, layout

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")


def _case(shape, memory_format="contiguous", dtype=torch.float32, seed=0, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=generator, dtype=torch.float64)
    weight = torch.randn(shape[1], len(shape) - 2, generator=generator, dtype=torch.float64)
    return layout(x.to(dtype), memory_format).to(CUDA), (weight * scale).float().to(CUDA)


def test_auto_backend_is_triton_on_cuda():
    assert ts.backends.resolve(CUDA) == "triton"


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last", "permuted"])
@pytest.mark.parametrize("padding", ts.PADDINGS)
def test_opcheck_on_cuda(padding, memory_format):
    x, weight = _case((2, 3, 5, 6), memory_format)
    crop = [1, 0, 0, 2]
    for active in (False, True):
        torch.library.opcheck(torch.ops.torchshift2.shift.default,
                              (x, weight, padding, active, crop))
        grad_output = torch.randn(2, 3, 4, 4, device=CUDA)
        torch.library.opcheck(torch.ops.torchshift2.shift_backward.default,
                              (grad_output, x, weight, padding, active, crop))
    torch.library.opcheck(torch.ops.torchshift2.shift_.default, (x.clone(), weight, padding))


def test_backward_is_deterministic_on_cuda():
    x, weight = _case((8, 64, 40, 40), "channels_last")
    grad_output = torch.randn_like(x)
    torch.use_deterministic_algorithms(True)
    try:
        results = []
        for _ in range(3):
            xs = x.detach().requires_grad_()
            ws = weight.detach().requires_grad_()
            out = ts.shift(xs, ws, "reflect", True)
            results.append(torch.autograd.grad(out, (xs, ws), grad_output))
    finally:
        torch.use_deterministic_algorithms(False)
    for grad_input, grad_weight in results[1:]:
        assert torch.equal(grad_input, results[0][0])
        assert torch.equal(grad_weight, results[0][1])


def test_more_than_2_to_the_31_elements():
    """int64 index path: 2**31 + 6 float16 elements (4 GiB)."""
    length = 2**30 + 3
    x = torch.empty(1, 2, length, dtype=torch.float16, device=CUDA)
    x.copy_(torch.arange(length, device=CUDA).remainder(2039).to(torch.float16))
    weight = torch.tensor([[5.0], [-7.0]], device=CUDA)
    with torch.no_grad():
        out = ts.shift(x, weight, "zeros")
    assert torch.equal(out[0, 0, 5:], x[0, 0, :-5])
    assert not out[0, 0, :5].any()
    assert torch.equal(out[0, 1, :-7], x[0, 1, 7:])
    assert not out[0, 1, -7:].any()


class _ShiftNet(torch.nn.Module):
    def __init__(self, channels=16):
        super().__init__()
        self.expand = torch.nn.Conv2d(3, channels, 1)
        self.ssl = ts.Shift2d(channels, padding="reflect")
        self.mix = torch.nn.Conv2d(channels, channels, 1)
        self.active = ts.Shift2d(channels, padding="symmetric", active_flag=True)
        self.head = torch.nn.Linear(channels, 2)

    def forward(self, x):
        x, loss = self.ssl(self.expand(x))
        x, _ = self.active(self.mix(torch.relu(x)))
        x = ts.shift(x, self.active.weight * 0.5, "border", True, [(1, 1), (0, 1)])
        return self.head(x.mean(dim=(2, 3))), loss


def test_layers_train_on_cuda():
    torch.manual_seed(0)
    model = _ShiftNet().to(CUDA)
    x = torch.randn(32, 3, 12, 12, device=CUDA)
    y = (x[:, 0, :6].mean(dim=(1, 2)) > 0).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        logits, sparsity = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        (loss + sparsity).backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_compiled_model_on_cuda_matches_eager_without_graph_breaks(memory_format):
    torch.manual_seed(0)
    model = _ShiftNet().to(CUDA)
    x = torch.randn(4, 3, 20, 20, device=CUDA)
    if memory_format == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    out, _ = compiled(x1)
    expected, _ = model(x2)
    assert_close(out, expected, torch.float32)
    out.square().sum().backward()
    expected.square().sum().backward()
    assert_close(x1.grad, x2.grad, torch.float32)


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_compiled_code_launches_the_triton_kernels_on_cuda(memory_format):
    """Issue 20: the ops are triton_ops, so Inductor's generated code launches the shift
    kernels itself (no opaque op), and mode="reduce-overhead" replays the captured CUDA
    graph of a training step to eager values."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = _ShiftNet().to(CUDA)
    prefix = "cl" if memory_format == "channels_last" else "planar"
    fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    torch._dynamo.reset()
    x = torch.randn(4, 3, 20, 20, device=CUDA).contiguous(memory_format=fmt)
    _, codes = run_and_get_code(torch.compile(model, fullgraph=True), x)
    code = "\n".join(codes)
    assert f"{prefix}_forward" in code and "_shift_kernel" not in code
    torch._dynamo.reset()
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # warm-up, capture, replay
        x = torch.randn(4, 3, 20, 20, device=CUDA).contiguous(memory_format=fmt)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        out, _ = compiled(x1)
        expected, _ = model(x2)
        assert_close(out.clone(), expected, torch.float32)
        out.square().sum().backward()
        expected.square().sum().backward()
        assert_close(x1.grad, x2.grad, torch.float32)
    torch._dynamo.reset()


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_non_finite_weight_gives_nan_channel_on_cuda(memory_format):
    """SPEC §5 on CUDA: no synchronising check, but never a silently finite value."""
    x, weight = _case((2, 8, 10, 12), memory_format)
    weight[2, 1] = float("nan")
    weight[5, 0] = float("inf")
    xs = x.detach().requires_grad_()
    ws = weight.detach().requires_grad_()
    for active in (False, True):
        out = ts.shift(xs, ws, "reflect", active)
        grad_input, grad_weight = torch.autograd.grad(out, (xs, ws), torch.ones_like(out))
        assert torch.isnan(out[:, [2, 5]]).all() and torch.isfinite(out[:, [0, 1, 3]]).all()
        assert torch.isnan(grad_input[:, [2, 5]]).all()
        assert torch.isfinite(grad_input[:, [0, 1, 3, 4, 6, 7]]).all()
        assert torch.isnan(grad_weight[[2, 5]]).all()
        assert torch.isfinite(grad_weight[[0, 1, 3, 4, 6, 7]]).all()


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_grad_weight_bitwise_across_launch_configurations(memory_format):
    """The reduction layout is canonical: warps, tiles per program and path thresholds
    change nothing (here on the GPU, where the warps really differ)."""
    from torchshift2.backends import triton as backend

    x, weight = _case((4, 48, 33, 70), memory_format)
    g = torch.randn_like(x)
    saved = dict(backend.CONFIG)
    results = []
    try:
        for config in ({}, dict(WARPS=8, BWD_WARPS=4, CHUNK_TILES=2),
                       dict(BWD_WARPS=2, CMAX_BWD=(0, 0, 0), CPAD=0, CL_BYTES=64)):
            backend.CONFIG.update(saved)
            backend.CONFIG.update(config)
            results.append(backend.backward(g, x, weight, "reflect", True, [0, 0, 0, 0]))
    finally:
        backend.CONFIG.clear()
        backend.CONFIG.update(saved)
    for grad_input, grad_weight in results[1:]:
        assert torch.equal(grad_input, results[0][0])
        assert torch.equal(grad_weight, results[0][1])


def test_training_step_captures_in_a_cuda_graph():
    """No host synchronisation in a forward+backward: it can be captured and replayed."""
    x, weight = _case((8, 32, 28, 28), "channels_last")
    xs = x.detach().requires_grad_()
    ws = weight.detach().requires_grad_()
    g = torch.randn_like(x)

    def step():
        return torch.autograd.grad(ts.shift(xs, ws, "zeros", True), (xs, ws), g)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            eager = step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured[0], eager[0]) and torch.equal(captured[1], eager[1])


def test_mixed_devices_are_refused():
    x, weight = _case((1, 2, 5), "contiguous")
    with pytest.raises(RuntimeError, match="weight: expected the device of input"):
        ts.shift(x, weight.cpu())
