"""The reference (:mod:`torchshift2.reference`) as a :class:`~torchshift2.backends.Backend`.

``forward_into`` / ``backward_into`` write into preallocated outputs (the CUDA tests use them).
"""

from __future__ import annotations

import contextlib

import torch

from .. import _spec, reference

name = "reference"


def forward(input, weight, padding, active, crop, fill):
    _spec.check_finite(weight)
    out = _spec.empty_output(input, crop)
    if out.numel():
        forward_into(out, input, weight, padding, active, crop, fill)
    return out


def backward(grad_output, input, weight, padding, active, crop):
    _spec.check_finite(weight)
    grad_input, grad_weight = _spec.empty_grads(input, weight)
    if input.numel() == 0 or grad_output.numel() == 0:
        grad_input.zero_()
        grad_weight.zero_()
    else:
        backward_into(grad_input, grad_weight, grad_output, input, weight, padding, active, crop)
    return grad_input, grad_weight


def shift_inplace(input, weight, padding):
    input.copy_(forward(input, weight, padding, False, [0, 0] * (input.dim() - 2), 0))


def forward_into(out, input, weight, padding, active, crop, fill):
    with torch.no_grad():
        out.copy_(reference.shift(input, weight, padding, active, _spec.pair_crop(crop), fill=fill))


@contextlib.contextmanager
def _autograd_inside_op():
    # A custom op's kernel runs below the Autograd dispatch keys (they are in the TLS exclude
    # set). The reference's gradients *are* its autograd graph, so re-admit them here.
    include = torch._C._dispatch_tls_local_include_set()
    exclude = torch._C.DispatchKeySet(torch._C.DispatchKey.Undefined)
    with torch._C._ForceDispatchKeyGuard(include, exclude), torch.enable_grad():
        yield


def backward_into(grad_input, grad_weight, grad_output, input, weight, padding, active, crop):
    with _autograd_inside_op():
        x = input.detach().requires_grad_()
        w = weight.detach().requires_grad_()
        out = reference.shift(x, w, padding, active, _spec.pair_crop(crop))
        gx, gw = torch.autograd.grad(out, (x, w), grad_output)
    grad_input.copy_(gx)
    grad_weight.copy_(gw)
