"""The custom ops ``torchshift2::shift``, ``::shift_backward`` and ``::shift_``, and their
autograd: reverse mode, forward mode and ``torch.func``.

The ops hand checked arguments (:mod:`torchshift2.functional`) to the backend that
:mod:`torchshift2.backends` picks, which allocates the outputs in the shape and memory
format that the fake impls compute with :mod:`torchshift2._spec` (``opcheck`` holds them to
it). The kernels still refuse anything that could make them read or write out of bounds.
The ops are ``triton_op``s, so that torch.compile sees the Triton kernels (see "the ops"
below).

Autograd comes in two registrations of the same rules (SPEC §4):

* on the ops (``register_autograd``, ``register_vmap``): what ``torch.compile``,
  ``torch.export`` and direct calls of ``torch.ops.torchshift2.shift`` see;
* :class:`ShiftAutograd`, an ``autograd.Function`` with ``jvp`` and a generated vmap rule,
  for eager calls (:func:`apply_shift`): torch's custom ops have no forward-mode AD (a
  tangent would be dropped silently) and their autograd cannot run under ``torch.func``.
  Dynamo does not trace an ``autograd.Function`` with a custom ``jvp``, hence the two.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from . import _eager, _spec, backends

__all__ = ["ShiftAutograd", "apply_shift", "apply_shift_", "shift", "shift_", "shift_backward"]

DOUBLE_BACKWARD_ERROR = (
    "torchshift2: double backward (differentiating the gradient of a shift, e.g. "
    "create_graph=True then backward again, torch.func.hessian, or forward-mode AD through "
    "a backward) is not supported; compute first-order gradients only"
)


# --- the ops ---------------------------------------------------------------------------
#
# The public ops are ``triton_op``s: torch.compile traces their bodies, so on CUDA (the
# Triton backend) Inductor sees the kernel launches themselves (``wrap_triton``) and
# ``mode="reduce-overhead"`` can capture a training step in a CUDA graph. A triton_op's body
# is traced for every device, so every other backend (C++, reference, Triton under the
# interpreter) runs behind a private opaque op (``torchshift2::_shift_kernel`` ...) that the
# body calls. ``torch.export`` keeps triton_ops whole: exported programs and ONNX see
# ``torchshift2::shift`` itself. Plain eager calls take neither (:mod:`torchshift2._eager`).


def _launches_triton(input: Tensor) -> bool:
    """Whether the op bodies launch Triton kernels themselves (CUDA with the Triton backend)
    rather than call the opaque kernel ops."""
    return input.device.type == "cuda" and backends.resolve(input.device) == "triton"


def _triton():
    # Imported at first use, not with this module: importing it decorates the kernels, which
    # reads TRITON_INTERPRET (the tests set it before their first Triton call).
    from .backends import triton

    return triton


def _fake(input: Tensor) -> bool:
    """Whether a body runs under tracing (fake tensors: compile, export, fake impls), where
    the launches go through ``wrap_triton`` into the graph; else it runs eagerly (torch.func,
    forward-mode AD, direct op calls), with the backend's cached launch plans."""
    return torch._subclasses.fake_tensor.is_fake(input)


@torch.library.custom_op("torchshift2::_shift_kernel", mutates_args=())
def _shift_kernel(input: Tensor, weight: Tensor, padding: str, active: bool,
                  crop: List[int]) -> Tensor:
    """:func:`shift` on the backend of ``input``'s device, opaque to compile."""
    return backends.module_for(input.device).forward(input, weight, padding, active, crop, 0)


@_shift_kernel.register_fake
def _(input, weight, padding, active, crop):
    return _spec.empty_output(input, crop, weight)


@torch.library.triton_op("torchshift2::shift", mutates_args=())
def shift(input: Tensor, weight: Tensor, padding: str, active: bool, crop: List[int]) -> Tensor:
    """Forward shift (SPEC §3) of checked arguments; ``crop`` is flat ``[b1, a1, ...]``."""
    if not _launches_triton(input):
        return _shift_kernel(input, weight, padding, active, crop)
    out = _spec.empty_output(input, crop, weight)
    if _fake(input):
        _triton().launch_forward(out, input, weight, padding, active, crop,
                                 launcher=torch.library.wrap_triton)
    else:
        _triton().forward_into(out, input, weight, padding, active, crop, 0)
    return out


@torch.library.custom_op("torchshift2::_shift_backward_kernel", mutates_args=())
def _shift_backward_kernel(grad_output: Tensor, input: Tensor, weight: Tensor, padding: str,
                           active: bool, crop: List[int],
                           output_mask: List[bool]) -> Tuple[Tensor, Tensor]:
    """:func:`shift_backward` on the backend of ``input``'s device, opaque to compile."""
    grads = backends.module_for(input.device).backward(grad_output, input, weight, padding,
                                                       active, crop, tuple(output_mask))
    return _placeholders(grads, input, weight)


@_shift_backward_kernel.register_fake
def _(grad_output, input, weight, padding, active, crop, output_mask):
    return _placeholders(_spec.empty_grads(input, weight, output_mask), input, weight)


@torch.library.triton_op("torchshift2::shift_backward", mutates_args=())
def shift_backward(grad_output: Tensor, input: Tensor, weight: Tensor, padding: str,
                   active: bool, crop: List[int], output_mask: List[bool]) -> Tuple[Tensor, Tensor]:
    """``(grad_input, grad_weight)`` of :func:`shift` (SPEC §4), each only where
    ``output_mask`` asks for it (else :func:`torchshift2._spec.not_computed`'s placeholder),
    as ``aten::convolution_backward`` takes its ``output_mask``."""
    if not _launches_triton(input):
        return _shift_backward_kernel(grad_output, input, weight, padding, active, crop,
                                      output_mask)
    grad_input, grad_weight = _spec.empty_grads(input, weight, output_mask)
    if _fake(input):
        _triton().launch_backward(grad_input, grad_weight, grad_output, input, weight, padding,
                                  active, crop, launcher=torch.library.wrap_triton)
    else:
        _triton().backward_into(grad_input, grad_weight, grad_output, input, weight, padding,
                                active, crop)
    return _placeholders((grad_input, grad_weight), input, weight)


def _placeholders(grads, input, weight) -> Tuple[Tensor, Tensor]:
    grad_input, grad_weight = grads
    return (_spec.not_computed(input) if grad_input is None else grad_input,
            _spec.not_computed(weight) if grad_weight is None else grad_weight)


@torch.library.custom_op("torchshift2::_shift_kernel_", mutates_args=("input",))
def _shift_kernel_(input: Tensor, weight: Tensor, padding: str) -> None:
    """:func:`shift_` on the backend of ``input``'s device, opaque to compile."""
    if input.numel() == 0:
        _spec.check_finite(weight)
        return
    backends.module_for(input.device).shift_inplace(input, weight, padding)


@_shift_kernel_.register_fake
def _(input, weight, padding):
    return None


@torch.library.triton_op("torchshift2::shift_", mutates_args=("input",))
def shift_(input: Tensor, weight: Tensor, padding: str) -> None:
    """SSL forward in place (no crop, no autograd): only moving channels are touched."""
    if not _launches_triton(input):
        _shift_kernel_(input, weight, padding)
    elif _fake(input):
        _triton().launch_shift_inplace(input, weight, padding, launcher=torch.library.wrap_triton)
    else:
        _triton().shift_inplace(input, weight, padding)


class _TritonKernels:
    """The Triton backend's kernels, imported when first iterated (see :func:`_triton`)."""

    def __iter__(self):
        return iter(_triton().KERNELS)


if importlib.util.find_spec("triton") is not None:
    # torch.compile's AOTAutograd cache keys a graph on the source of the kernels its
    # triton_ops launch, which torch finds by reading the op bodies; ours launch through the
    # backend's helpers, so the kernels are named here (else a changed kernel could be served
    # from a stale cache entry).
    for _name in ("torchshift2::shift", "torchshift2::shift_backward", "torchshift2::shift_"):
        torch._library.triton.triton_ops_to_kernels[_name] = _TritonKernels()


# --- autograd of the ops (compile, export, direct op calls) ------------------------------

def _setup_context(ctx, inputs, output):
    input, weight, padding, active, crop = inputs
    ctx.save_for_backward(input, weight)
    ctx.arguments = (padding, active, crop)


def _shift_grad(ctx, grad_output):
    input, weight = ctx.saved_tensors
    mask = list(ctx.needs_input_grad[:2])
    grad_input, grad_weight = shift_backward(grad_output, input, weight, *ctx.arguments, mask)
    return (grad_input if mask[0] else None, grad_weight if mask[1] else None, None, None, None)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(DOUBLE_BACKWARD_ERROR)


shift.register_autograd(_shift_grad, setup_context=_setup_context)
shift_backward.register_autograd(_no_double_backward,
                                 setup_context=lambda ctx, inputs, output: None)


# --- vmap: a batch of inputs or weights is folded into the channels ----------------------

def _fold_channels(t: Tensor, batch_dim, size: int) -> Tensor:
    """``(B, N, C, *L)`` (batch at ``batch_dim``, or unbatched ``(N, C, *L)`` repeated) as
    ``(N, B·C, *L)``: channel ``b·C + c`` holds ``t[b, :, c]``."""
    t = t.unsqueeze(0).expand(size, *t.shape) if batch_dim is None else t.movedim(batch_dim, 0)
    return t.movedim(0, 1).flatten(1, 2)


def _unfold_channels(t: Tensor, size: int) -> Tensor:
    """Inverse of :func:`_fold_channels`: ``(N, B·C, *L)`` -> ``(B, N, C, *L)``."""
    return t.unflatten(1, (size, -1)).movedim(1, 0)


def _batched_weight(weight: Tensor, batch_dim, size: int) -> Tensor:
    """``(B, k·C, D)`` from a batched or an unbatched weight."""
    if batch_dim is None:
        return weight.unsqueeze(0).expand(size, *weight.shape)
    return weight.movedim(batch_dim, 0)


def _shift_vmap(info, in_dims, input, weight, padding, active, crop):
    input_dim, weight_dim = in_dims[:2]
    size = info.batch_size
    if weight_dim is None:  # the batch joins N
        x = input.movedim(input_dim, 0)
        return shift(x.flatten(0, 1), weight, padding, active, crop).unflatten(0, (size, -1)), 0
    weight = weight.movedim(weight_dim, 0)  # (B, k·C, D)
    if input_dim is None:
        # One input, B weights: a channel multiplier of B·k, with output channel
        # (c·B + b)·k + j = weight[b, c·k + j] reading input channel c; no copy of the input.
        channels = input.shape[1]
        k = _spec.multiplier(channels, weight.shape[1])
        folded = weight.unflatten(1, (channels, k)).movedim(0, 1).flatten(0, 2)
        out = shift(input, folded, padding, active, crop)  # (N, C·B·k, *L)
        return out.unflatten(1, (channels, size, k)).movedim(2, 0).flatten(2, 3), 0
    out = shift(_fold_channels(input, input_dim, size), weight.flatten(0, 1), padding, active,
                crop)
    return _unfold_channels(out, size), 0


def _shift_backward_vmap(info, in_dims, grad_output, input, weight, padding, active, crop,
                         output_mask):
    # Every gradient is per batch element, so the batch goes into the channels (an unbatched
    # argument is repeated): grad_weight must not sum over it, as it would over N.
    size = info.batch_size
    grad_dim, input_dim, weight_dim = in_dims[:3]
    grad_input, grad_weight = shift_backward(
        _fold_channels(grad_output, grad_dim, size), _fold_channels(input, input_dim, size),
        _batched_weight(weight, weight_dim, size).flatten(0, 1), padding, active, crop,
        output_mask)
    return ((_unfold_channels(grad_input, size) if output_mask[0] else grad_input,
             grad_weight.unflatten(0, (size, -1)) if output_mask[1] else grad_weight),
            (0 if output_mask[0] else None, 0 if output_mask[1] else None))


shift.register_vmap(_shift_vmap)
shift_backward.register_vmap(_shift_backward_vmap)


# --- forward-mode AD ---------------------------------------------------------------------

def _derivative_period(weight: Tensor, length: int, padding: str) -> Tensor:
    """``weight`` moved by whole periods of the padding (the derivative repeats with them),
    or clamped where moving further changes nothing (zeros, border), in float64: so that
    ``floor(w) + 1`` stays exact for any finite weight."""
    w = weight.double()
    period = {"periodic": length, "reflect": 2 * length - 2, "symmetric": 2 * length}.get(padding)
    if period is None:
        return w.clamp(-(length + 2), length + 2)
    return w.remainder(period) if period > 0 else torch.zeros_like(w)


def weight_derivative(input: Tensor, weight: Tensor, weight_tangent: Tensor, padding: str,
                      crop: Sequence[int]) -> Tensor:
    """``Σ_d weight_tangent[o, d] · ∂out[o]/∂weight[o, d]`` of the Active Shift forward (the
    SPEC §4 weight derivative, straight-through for SSL).

    Along dim d the forward is linear in the fraction, so the derivative is the difference of
    two shifts that are whole along d: ``shift(w with w_d = floor(w_d) + 1) - shift(w with
    w_d = floor(w_d))``, each interpolating only in the other dims.
    """
    out = None
    for d in range(weight.shape[1]):
        base = torch.floor(_derivative_period(weight[:, d], input.shape[2 + d], padding))
        columns = [weight[:, e:e + 1].double() for e in range(weight.shape[1])]
        columns[d] = (base + 1).unsqueeze(1)
        upper = shift(input, torch.cat(columns, 1).to(weight.dtype), padding, True, crop)
        columns[d] = base.unsqueeze(1)
        lower = shift(input, torch.cat(columns, 1).to(weight.dtype), padding, True, crop)
        scale = weight_tangent[:, d].to(upper.dtype).reshape((-1,) + (1,) * (input.dim() - 2))
        term = (upper - lower) * scale
        out = term if out is None else out + term
    return out


@dataclasses.dataclass(frozen=True)
class ShiftArguments:
    """The non-tensor arguments of :func:`shift`, as one object: the generated vmap rule of
    an ``autograd.Function`` miscounts its inputs when a list (``crop``) is among them."""

    padding: str
    active: bool
    crop: Tuple[int, ...]


class ShiftAutograd(torch.autograd.Function):
    """Autograd of :func:`shift` for eager calls: backward, forward mode (``jvp``) and the
    ``torch.func`` transforms (its vmap rule is generated from the ops' rules)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, weight, args: ShiftArguments):
        return shift(input, weight, args.padding, args.active, list(args.crop))

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, ctx.args = inputs
        ctx.save_for_backward(input, weight)
        ctx.save_for_forward(input, weight)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        grad_input, grad_weight = ShiftBackwardAutograd.apply(
            grad_output, input, weight, ctx.args, *ctx.needs_input_grad[:2])
        return (grad_input if ctx.needs_input_grad[0] else None,
                grad_weight if ctx.needs_input_grad[1] else None, None)

    @staticmethod
    def jvp(ctx, input_tangent, weight_tangent, _):
        # The tangent is the transpose of the backward: the forward map applied to the input's
        # tangent (it is linear in the input), plus the weight derivative.
        input, weight = ctx.saved_tensors
        args = ctx.args
        crop = list(args.crop)
        tangent = None
        if input_tangent is not None:
            tangent = shift(input_tangent, weight, args.padding, args.active, crop)
        if weight_tangent is not None:
            term = weight_derivative(input, weight, weight_tangent, args.padding, crop)
            tangent = term if tangent is None else tangent + term
        return tangent


class ShiftBackwardAutograd(torch.autograd.Function):
    """:func:`shift_backward` inside :class:`ShiftAutograd`, so that differentiating it
    again, in either mode, raises :data:`DOUBLE_BACKWARD_ERROR` (SPEC §4)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad_output, input, weight, args: ShiftArguments, needs_input: bool,
                needs_weight: bool):
        return shift_backward(grad_output, input, weight, args.padding, args.active,
                              list(args.crop), [needs_input, needs_weight])

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(DOUBLE_BACKWARD_ERROR)

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(DOUBLE_BACKWARD_ERROR)


def _traced() -> bool:
    """Whether Dynamo or ``torch.jit`` trace the call: they must see the op itself."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def apply_shift(input: Tensor, weight: Tensor, padding: str, active: bool,
                crop: List[int]) -> Tensor:
    """:func:`shift` with autograd, for checked arguments: plain eager calls of the C++ and
    Triton backends take their fast path (:mod:`torchshift2._eager`), traced calls the
    custom op, the rest :class:`ShiftAutograd`."""
    out = _eager.shift(input, weight, padding, active, crop)
    if out is not None:
        return out
    if _traced():
        return shift(input, weight, padding, active, crop)
    return ShiftAutograd.apply(input, weight, ShiftArguments(padding, active, tuple(crop)))


def apply_shift_(input: Tensor, weight: Tensor, padding: str) -> None:
    """:func:`shift_` for checked arguments, through the fast path where it applies."""
    if not _eager.shift_(input, weight, padding):
        shift_(input, weight, padding)


# Quantized tensors dispatch to QuantizedCPU: shift their integer representation exactly and
# fill zeros padding with the zero point, which represents the real value 0 (SPEC §1).
_quantized_lib = torch.library.Library("torchshift2", "IMPL")


def _shift_quantized(input, weight, padding, active, crop):
    if input.dtype not in _spec.QUANTIZED_DTYPES:
        raise TypeError(f"input: expected one of {list(_spec.QUANTIZED_DTYPES)}, got {input.dtype}")
    if input.qscheme() != torch.per_tensor_affine:
        raise ValueError(
            f"input: expected a per-tensor affine quantized tensor, got {input.qscheme()}"
        )
    values = input.int_repr()
    out = backends.module_for(values.device).forward(
        values, weight, padding, False, crop, input.q_zero_point()
    )
    return torch._make_per_tensor_quantized_tensor(out, input.q_scale(), input.q_zero_point())


_quantized_lib.impl("shift", _shift_quantized, "QuantizedCPU")
