"""The original torchshifts' measured bugs, one test each, named by the bug it pins (the list
is in docs/migration.md, "Bugs of the original that are fixed"; the item is in each test's
docstring). Part of the kernel suite: each runs on every ``backend_device`` case (see
tests/test_backends.py), the data race of item 5 on the C++ kernels' threads."""

import subprocess
import sys

import pytest
import torch

import torchshift2 as ts

G = [1.0, 10.0, 100.0, 1000.0, 10000.0]


def _grads(backend_device, x, weight, padding, active, grad_output):
    device = backend_device.device
    x = x.detach().double().to(device).requires_grad_()
    weight = weight.detach().double().to(device).requires_grad_()
    grad_output = torch.as_tensor(grad_output).double().to(device)
    with ts.use_backend(backend_device.backend):  # the backward too: chosen when it runs
        out = ts.shift(x, weight, padding, active)
        return torch.autograd.grad(out, (x, weight), grad_output.view_as(out))


def test_active_forward_interpolates_towards_the_shift_and_is_continuous(backend_device):
    """Item 1: the active forward interpolated in the mirrored direction and jumped at every
    integer."""
    x = torch.arange(6.0, dtype=torch.float64).reshape(1, 1, 6).to(backend_device.device) ** 2

    def at(w):
        weight = torch.tensor([[w]], dtype=torch.float64, device=x.device)
        return ts.shift(x, weight, "zeros", True)

    with ts.use_backend(backend_device.backend):
        # w = 0.99 moves content by +0.99: out[i] = 0.01 x[i] + 0.99 x[i - 1].
        expected = 0.01 * x[0, 0, 1:] + 0.99 * x[0, 0, :-1]
        torch.testing.assert_close(at(0.99)[0, 0, 1:], expected)
        assert torch.allclose(at(1 - 1e-9), at(1.0), atol=1e-6)
        assert torch.allclose(at(2 - 1e-9), at(2.0), atol=1e-6)


@pytest.mark.parametrize("active", [False, True])
@pytest.mark.parametrize("padding,adjoint", [
    ("zeros", [100, 1000, 10000, 0, 0]),
    ("border", [111, 1000, 10000, 0, 0]),
    ("reflect", [100, 1010, 10001, 0, 0]),
    ("symmetric", [110, 1001, 10000, 0, 0]),
    ("periodic", [100, 1000, 10000, 1, 10]),
])
def test_grad_input_is_the_adjoint_for_every_padding(backend_device, active, padding, adjoint):
    """Item 2: grad_input shifted grad_output back with the same padding, which is not the
    adjoint for border / reflect / symmetric (zeros and periodic: the same example)."""
    grad_input, _ = _grads(backend_device, torch.zeros(1, 1, 5), torch.tensor([[2.0]]),
                           padding, active, G)
    assert grad_input.flatten().tolist() == adjoint


def test_active_grad_input_shifts_back_the_right_way(backend_device):
    """Item 3: the active grad_input shifted the wrong way, even with zeros padding."""
    grad_output = [1, 10, 100, 1000, 10000, 100000]
    grad_input, _ = _grads(backend_device, torch.zeros(1, 1, 6), torch.tensor([[2.0]]), "zeros",
                           True, grad_output)
    assert grad_input.flatten().tolist() == [100, 1000, 10000, 100000, 0, 0]


@pytest.mark.parametrize("w", [1.2, 1.7, -0.3, -0.8])
def test_ssl_grad_weight_keeps_fraction_sign_and_axis(backend_device, w):
    """Item 4: the SSL grad_weight ignored the fractional part, had the wrong sign on half of
    each unit interval, and took the gradient of H from differences along W."""
    # A ramp along H only: the W component of the gradient must vanish, the H component is
    # the ramp's slope (d out / d w = x[i - fl - 1] - x[i - fl] = -1 per interior element).
    x = torch.arange(6.0).reshape(1, 1, 6, 1).expand(1, 1, 6, 4).contiguous()
    weight = torch.tensor([[w, w]])
    grad_output = torch.zeros(1, 1, 6, 4)
    grad_output[0, 0, 3] = 1.0  # a row whose reads stay inside for |w| < 2
    for active in (False, True):
        _, grad_weight = _grads(backend_device, x, weight, "border", active, grad_output)
        assert grad_weight.flatten().tolist() == [-4.0, 0.0]


def test_grad_weight_is_deterministic_with_two_threads():
    """Item 5: a data race in grad_weight (threads added into one sum without atomics); the
    C++ kernels, the default on CPU, with 2 threads and with 1."""
    code = """
import torch, torchshift2 as ts
torch.set_num_threads(2)
torch.manual_seed(0)
x = torch.randn(8, 16, 33, 35, requires_grad=True)
w = (torch.randn(16, 2) * 3).requires_grad_()
g = torch.randn(8, 16, 33, 35)
results = []
for _ in range(6):
    x.grad = w.grad = None
    ts.shift(x, w, "reflect", True).backward(g)
    results.append(w.grad.clone())
assert all(torch.equal(r, results[0]) for r in results), "grad_weight varies between runs"
with torch.no_grad():
    torch.set_num_threads(1)
x.grad = w.grad = None
ts.shift(x, w, "reflect", True).backward(g)
assert torch.equal(w.grad, results[0]), "grad_weight depends on the thread count"
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


@pytest.mark.parametrize("active", [False, True])
def test_zeros_padding_shifts_size_one_axes(backend_device, active):
    """Item 6: zeros padding ignored the shift along a size-1 axis."""
    x = torch.arange(5.0).reshape(1, 1, 1, 5).to(backend_device.device)
    weight = torch.tensor([[2.0, 1.0]], device=backend_device.device)
    with torch.no_grad(), ts.use_backend(backend_device.backend):
        out = ts.shift(x, weight, "zeros", active)
    assert out.flatten().tolist() == [0.0] * 5
