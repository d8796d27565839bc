"""Before a measurement: our kernels against the pure-torch reference. A benchmark never
reports a kernel that disagrees with it."""

from __future__ import annotations

import torch

from torchshift2 import reference
from torchshift2.functional import shift

from .cases import make_input


class SanityError(RuntimeError):
    """Our kernel disagrees with the reference: the benchmark refuses to time it."""


def _rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a = actual.detach().double()
    e = expected.detach().double()
    denom = e.norm().item()
    diff = (a - e).norm().item()
    return diff / denom if denom > 0 else diff


def _tolerance(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-10, torch.float32: 1e-5}.get(dtype, 2e-2)


def _check_forward(x: torch.Tensor, w: torch.Tensor, padding: str, label: str) -> None:
    tol = _tolerance(x.dtype)
    with torch.no_grad():
        ours = shift(x, w, padding, False)
        ref = reference.shift(x, w, padding, False)
        if ours.shape != ref.shape or not torch.equal(ours, ref):
            raise SanityError(f"{label}: SSL forward differs from the reference "
                              f"(relative error {_rel_error(ours, ref):.3g})")
        ours = shift(x, w, padding, True)
        ref = reference.shift(x, w, padding, True)
        err = _rel_error(ours, ref)
        if ours.shape != ref.shape or not err <= tol:
            raise SanityError(f"{label}: active forward differs from the reference "
                              f"(relative error {err:.3g} > {tol:g})")


def _check_backward(x: torch.Tensor, w: torch.Tensor, padding: str, label: str) -> None:
    tol = _tolerance(x.dtype)
    x1 = x[:1]
    g = make_input(x1.shape, x.dtype, "contiguous", x.device, seed=999)
    for active in (False, True):
        grads = []
        for fn in (shift, reference.shift):
            xr = x1.detach().requires_grad_()  # a view: the layout under test, strides kept
            wr = w.detach().clone().requires_grad_()
            grads.append(torch.autograd.grad(fn(xr, wr, padding, active), (xr, wr), g))
        mode = "active" if active else "SSL"
        for name, a, b in zip(("grad_input", "grad_weight"), *grads):
            err = _rel_error(a, b)
            if not err <= tol:
                raise SanityError(f"{label}: {mode} {name} differs from the reference "
                                  f"(relative error {err:.3g} > {tol:g})")


def check_against_reference(x: torch.Tensor, w: torch.Tensor, padding: str, label: str) -> None:
    """Our forward (whole tensor) and backward (first sample) against the reference.

    SSL forward must be bit-identical; the rest within a normwise relative tolerance of the
    dtype. Raises :class:`SanityError` naming what disagrees.
    """
    _check_forward(x, w, padding, label)
    _check_backward(x, w, padding, label)
