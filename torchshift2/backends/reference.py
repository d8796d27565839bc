"""The reference (:mod:`torchshift2.reference`) as a :class:`~torchshift2.backends.Backend`.

``forward_into`` / ``backward_into`` write into preallocated outputs (the CUDA tests use them).
They run the reference on blocks of samples and channels: its gathers build index tensors
and op-math copies of the size of what they compute, so blocks keep a call's temporaries
bounded whatever the input's size (SPEC §5), which a fallback backend must respect too.
"""

from __future__ import annotations

import contextlib

import torch

from .. import _spec, reference

name = "reference"

#: Output elements one block of the reference computes at once.
BLOCK_ELEMENTS = 1 << 16


def _blocks(input, weight, out_shape):
    """``(samples, input channels, output channels)`` slices covering the call in blocks of
    about :data:`BLOCK_ELEMENTS` output elements (whole multiplier groups of channels)."""
    batch, channels = input.shape[:2]
    k = _spec.multiplier(channels, weight.shape[0])
    plane = 1
    for size in out_shape[2:]:
        plane *= size
    per_channel = max(1, plane * k)
    channel_step = max(1, min(channels, BLOCK_ELEMENTS // per_channel))
    sample_step = max(1, BLOCK_ELEMENTS // (per_channel * max(channels, 1)))
    for n in range(0, batch, sample_step):
        samples = slice(n, min(batch, n + sample_step))
        for c in range(0, channels, channel_step):
            end = min(channels, c + channel_step)
            yield samples, slice(c, end), slice(c * k, end * k)


def forward(input, weight, padding, active, crop, fill):
    _spec.check_finite(weight)
    out = _spec.empty_output(input, crop, weight)
    if out.numel():
        forward_into(out, input, weight, padding, active, crop, fill)
    return out


def backward(grad_output, input, weight, padding, active, crop, output_mask=(True, True)):
    _spec.check_finite(weight)
    grad_input, grad_weight = _spec.empty_grads(input, weight, output_mask)
    backward_into(grad_input, grad_weight, grad_output, input, weight, padding, active, crop)
    return grad_input, grad_weight


def shift_inplace(input, weight, padding):
    input.copy_(forward(input, weight, padding, False, [0, 0] * (input.dim() - 2), 0))


def forward_into(out, input, weight, padding, active, crop, fill):
    with torch.no_grad():
        for samples, inputs, outputs in _blocks(input, weight, out.shape):
            out[samples, outputs] = reference.shift(input[samples, inputs], weight[outputs],
                                                    padding, active, _spec.pair_crop(crop),
                                                    fill=fill)


@contextlib.contextmanager
def _autograd_inside_op():
    # A custom op's kernel runs below the Autograd dispatch keys (they are in the TLS exclude
    # set). The reference's gradients *are* its autograd graph, so re-admit them here.
    include = torch._C._dispatch_tls_local_include_set()
    exclude = torch._C.DispatchKeySet(torch._C.DispatchKey.Undefined)
    with torch._C._ForceDispatchKeyGuard(include, exclude), torch.enable_grad():
        yield


def backward_into(grad_input, grad_weight, grad_output, input, weight, padding, active, crop):
    """Write the gradients into ``grad_input`` / ``grad_weight``; either may be ``None``
    (not asked for)."""
    if grad_input is None and grad_weight is None:
        return
    if input.numel() == 0 or grad_output.numel() == 0:
        for out in (grad_input, grad_weight):
            if out is not None:
                out.zero_()
        return
    total = None if grad_weight is None else torch.zeros(grad_weight.shape, dtype=torch.float64,
                                                         device=grad_weight.device)
    for samples, inputs, outputs in _blocks(input, weight, grad_output.shape):
        with _autograd_inside_op():
            x = input[samples, inputs].detach().requires_grad_(grad_input is not None)
            w = weight[outputs].detach().requires_grad_(grad_weight is not None)
            out = reference.shift(x, w, padding, active, _spec.pair_crop(crop))
            grads = iter(torch.autograd.grad(out, [t for t in (x, w) if t.requires_grad],
                                             grad_output[samples, outputs]))
        if grad_input is not None:
            grad_input[samples, inputs] = next(grads)
        if total is not None:  # the sum over sample blocks in float64, then one rounding
            total[outputs] += next(grads).double()
    if grad_weight is not None:
        grad_weight.copy_(total)
