"""Forward-mode AD and torch.func through the shift (SPEC §4), on every CPU backend.

Regression tests of issue 18 items 1-2: jvp / jacfwd / forward_ad returned zero or missing
tangents, and torch.func.grad / jacrev failed naming an internal autograd.Function.
"""

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from hypothesis import given
from hypothesis import strategies as st

import torchshift2 as ts
from torchshift2.ops import DOUBLE_BACKWARD_ERROR

CPU_BACKENDS = ["cpp", "reference"]


@st.composite
def smooth_cases(draw, multiplier=False):
    """float64 arguments whose weights keep their fractions inside (0.1, 0.9), so that the
    forward is differentiable there and finite differences are exact up to rounding."""
    ndim = draw(st.integers(1, 3))
    sizes = draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim))
    channels = draw(st.integers(1, 3))
    k = draw(st.integers(1, 3)) if multiplier else 1
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(2, channels, *sizes, generator=generator, dtype=torch.float64)
    if draw(st.booleans()):
        x = x.to(memory_format=(torch.channels_last, torch.channels_last_3d)[ndim - 2]) \
            if ndim > 1 else x.transpose(1, 2).contiguous().transpose(1, 2)
    whole = torch.randint(-4, 5, (k * channels, ndim), generator=generator).double()
    weight = whole + 0.1 + 0.8 * torch.rand(k * channels, ndim, generator=generator,
                                            dtype=torch.float64)
    crop = None
    if draw(st.booleans()):
        crop = [(draw(st.integers(0, 1 if s > 1 else 0)), 0) for s in sizes]
    return x, weight, draw(st.sampled_from(ts.PADDINGS)), draw(st.booleans()), crop


def _tangents(x, weight, seed=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(x.shape, generator=g, dtype=x.dtype),
            torch.randn(weight.shape, generator=g, dtype=weight.dtype))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(case=smooth_cases(multiplier=True))
def test_jvp_matches_finite_differences_and_is_the_adjoint_of_vjp(backend, case):
    x, weight, padding, active, crop = case
    tx, tw = _tangents(x, weight)

    def f(x, w):
        return ts.shift(x, w, padding, active, crop)

    with ts.use_backend(backend):
        out, tangent = torch.func.jvp(f, (x, weight), (tx, tw))
        g = torch.randn_like(out)
        _, vjp = torch.func.vjp(f, x, weight)
        gx, gw = vjp(g)
    # Forward mode is the transpose of reverse mode: <jvp(t), g> == <t, vjp(g)>.
    torch.testing.assert_close((tangent * g).sum(), (tx * gx).sum() + (tw * gw).sum(),
                               rtol=1e-10, atol=1e-10)
    # Input part: the forward map (SSL: the rounded shift) applied to the tangent.
    expected = ts.reference.shift(tx, weight, padding, active, crop)
    # Weight part: a central difference of the *active* forward (straight-through for SSL).
    # With fractions in (0.1, 0.9) no step crosses an integer; along the tangent the forward
    # is a polynomial of degree D, so the difference is off by O(eps²) plus rounding.
    eps = 1e-5
    ahead = ts.reference.shift(x, weight + eps * tw, padding, True, crop)
    behind = ts.reference.shift(x, weight - eps * tw, padding, True, crop)
    expected = expected + (ahead - behind) / (2 * eps)
    torch.testing.assert_close(tangent, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(case=smooth_cases())
def test_forward_ad_api_equals_func_jvp(backend, case):
    x, weight, padding, active, crop = case
    tx, tw = _tangents(x, weight)
    with ts.use_backend(backend):
        _, expected = torch.func.jvp(lambda x, w: ts.shift(x, w, padding, active, crop),
                                     (x, weight), (tx, tw))
        with fwAD.dual_level():
            out = ts.shift(fwAD.make_dual(x, tx), fwAD.make_dual(weight, tw), padding, active,
                           crop)
            tangent = fwAD.unpack_dual(out).tangent
    assert tangent is not None
    torch.testing.assert_close(tangent, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("active", [False, True])
def test_jacfwd_equals_jacrev_and_autograd(backend, active):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    weight = torch.randn(3, 2, dtype=torch.float64) * 2

    def f(x, w):
        return ts.shift(x, w, "reflect", active, [(1, 0), (0, 1)])

    with ts.use_backend(backend):
        forward = torch.func.jacfwd(f, argnums=(0, 1))(x, weight)
        reverse = torch.func.jacrev(f, argnums=(0, 1))(x, weight)
        xr, wr = x.clone().requires_grad_(), weight.clone().requires_grad_()
        out = f(xr, wr)
        grads = torch.func.grad(lambda x, w: (f(x, w) * out.detach()).sum(), argnums=(0, 1))(
            x, weight)
        expected = torch.autograd.grad(out, (xr, wr), out.detach())
    assert forward[1].abs().max() > 0.1  # the issue: jacfwd in the weight was all zeros
    for a, b in zip(forward, reverse):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("batched", ["input", "weight", "both"])
@pytest.mark.parametrize("multiplier", [1, 2])
def test_vmap_matches_a_loop(backend, batched, multiplier):
    torch.manual_seed(1)
    inputs = torch.randn(4, 2, 3, 6, 5, dtype=torch.float64)
    weights = torch.randn(4, 3 * multiplier, 2, dtype=torch.float64) * 2
    in_dims = {"input": (0, None), "weight": (None, 0), "both": (0, 0)}[batched]
    x_arg = inputs if in_dims[0] == 0 else inputs[0]
    w_arg = weights if in_dims[1] == 0 else weights[0]

    def f(x, w):
        return ts.shift(x, w, "symmetric", True, [(0, 1), (2, 0)])

    with ts.use_backend(backend):
        out = torch.func.vmap(f, in_dims=in_dims)(x_arg, w_arg)
        # Gradients per batch element through vmap(grad): grad_weight must not sum the batch.
        grads = torch.func.vmap(torch.func.grad(lambda x, w: f(x, w).square().sum(),
                                                argnums=(0, 1)), in_dims=in_dims)(x_arg, w_arg)
    for b in range(4):
        xb = inputs[b] if in_dims[0] == 0 else inputs[0]
        wb = weights[b] if in_dims[1] == 0 else weights[0]
        xr, wr = xb.clone().requires_grad_(), wb.clone().requires_grad_()
        ref = ts.reference.shift(xr, wr, "symmetric", True, [(0, 1), (2, 0)])
        torch.testing.assert_close(out[b], ref.detach(), rtol=1e-12, atol=1e-12)
        gx, gw = torch.autograd.grad(ref.square().sum(), (xr, wr))
        torch.testing.assert_close(grads[0][b], gx, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(grads[1][b], gw, rtol=1e-10, atol=1e-10)


def test_vmap_of_the_op_uses_its_batching_rule():
    x = torch.randn(3, 2, 4, 5)
    weight = torch.randn(4, 1)
    with _no_fallback_warning():
        out = torch.func.vmap(
            lambda x: torch.ops.torchshift2.shift(x, weight, "zeros", True, [0, 0]))(x)
    torch.testing.assert_close(out, torch.stack([ts.reference.shift(t, weight, "zeros", True)
                                                 for t in x]))


class _no_fallback_warning:
    """Fails if torch warns that it fell back to a per-example loop (no batching rule)."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings(record=True)
        self._records = self._catch.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
        assert not any("batching rule" in str(r.message) for r in self._records)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_second_order_raises_the_spec_error(backend):
    x = torch.randn(1, 2, 5, dtype=torch.float64)
    weight = torch.randn(2, 1, dtype=torch.float64, requires_grad=True)
    with ts.use_backend(backend):
        with pytest.raises(RuntimeError, match="double backward"):
            torch.func.hessian(lambda w: ts.shift(x, w, active=True).sum())(weight.detach())
        with pytest.raises(RuntimeError, match="double backward"):
            torch.func.jacfwd(torch.func.jacrev(lambda w: ts.shift(x, w, active=True)))(
                weight.detach())
        (grad,) = torch.autograd.grad(ts.shift(x, weight, active=True).square().sum(), weight,
                                      create_graph=True)
        with pytest.raises(RuntimeError, match="double backward"):
            grad.sum().backward()
    assert "torch.func.hessian" in DOUBLE_BACKWARD_ERROR
