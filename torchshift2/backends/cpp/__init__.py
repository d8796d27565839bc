"""The C++ CPU backend: the kernels of ``csrc/`` (map: ``README.md`` here), built once per
environment by :mod:`.build` (at the first CPU call, or ``python -m torchshift2.build``).

Implements :class:`torchshift2.backends.Backend`. The kernels allocate ``out`` and
``grad_input`` themselves, from a cache of freed blocks (``csrc/output_cache.cpp``: big fresh
CPU tensors cost more in page faults than the shift itself), in the memory format that
:func:`torchshift2._spec.is_channels_last` picks; they refuse non-finite weights with a
``ValueError``.

Besides the interface, the library registers the eager fast path that
:mod:`torchshift2._eager` calls: ``shift_autograd`` (the forward with a C++ autograd node),
``eager_shift`` and ``eager_shift_inplace`` (see ``csrc/eager.cpp``), and
:func:`kernel_name`, which says which kernel a call would run.
"""
from __future__ import annotations

import contextlib

from ... import _spec
from . import build

name = "cpp"


def forward(input, weight, padding, active, crop, fill):
    return build.ops().forward(input, weight, _spec.padding_code(padding), active, crop,
                               float(fill), _spec.is_channels_last(input))


def backward(grad_output, input, weight, padding, active, crop, output_mask=(True, True)):
    return tuple(build.ops().backward(grad_output, input, weight, _spec.padding_code(padding),
                                      active, crop, _spec.is_channels_last(input),
                                      list(output_mask)))


def shift_inplace(input, weight, padding):
    build.ops().shift_inplace(input, weight, _spec.padding_code(padding))


def shift_autograd(input, weight, padding, active, crop):
    """The forward with a C++ autograd node (the eager fast path of :mod:`torchshift2._eager`)."""
    return build.ops().shift_autograd(input, weight, padding, _spec.padding_code(padding),
                                      active, crop, _spec.is_channels_last(input))


def empty_cache() -> None:
    """Release the free blocks of the output cache (no-op when the kernel is not built)."""
    ops = build.loaded()
    if ops is not None:
        ops.empty_cache()


def cache_info() -> dict:
    """The output cache's state: free bytes and blocks, limit, hits and misses."""
    ops = build.loaded()
    if ops is None:
        return {"free_bytes": 0, "free_blocks": 0, "limit_bytes": None, "hits": 0, "misses": 0}
    free_bytes, free_blocks, limit, hits, misses = ops.cache_info()
    return {"free_bytes": free_bytes, "free_blocks": free_blocks, "limit_bytes": limit,
            "hits": hits, "misses": misses}


def kernel_name(direction, input, padding="zeros", active=False, crop=None,
                grad_output=None, multiplier=1, needs_grad_input=True,
                needs_grad_weight=True, weight=None) -> str:
    """The C++ kernel a call would run, without running it (``README.md`` here, kernel
    selection): ``direction`` is ``"forward"``, ``"backward"`` or ``"inplace"``; ``input``
    any tensor with the call's dtype, sizes and strides (a ``meta`` tensor will do);
    ``crop`` flat ``[before, after] * D`` or ``None``; ``grad_output`` (backward, any device)
    by default in the layout the forward gives; ``multiplier`` k of a ``(k·C, D)`` weight;
    ``needs_grad_input`` / ``needs_grad_weight`` the backward's ``output_mask``; ``weight``
    the call's ``(k·C, D)`` weight, whose shift spread the channels-last forward's cost model
    reads (``None``: the widest spread, every channel's corners taps of their own). Answers
    ``"<function>"``, with `` [widened]`` (bfloat16 / half through the float kernels),
    `` [blocks]`` (the call runs in blocks of samples / channels) and `` [inverse shift]``
    (grad_input as the forward with the negated shift), or ``"none"``."""
    ndim = input.dim() - 2
    crop = [0] * (2 * max(ndim, 0)) if crop is None else [int(v) for v in crop]
    return build.ops().kernel_name(direction, input.dtype, list(input.shape), list(input.stride()),
                                   _spec.padding_code(_spec.canonical_padding(padding)), active,
                                   crop, _spec.is_channels_last(input),
                                   [] if grad_output is None else list(grad_output.stride()),
                                   int(multiplier), bool(needs_grad_input),
                                   bool(needs_grad_weight),
                                   None if weight is None else weight.detach().cpu())


@contextlib.contextmanager
def kernel_override(kernel: str):
    """Within the block, every channels-last call runs ``kernel`` (``"taps"``, ``"gather"``,
    ``"planes"``, or the forward's ``"planar"``: the planar kernel on contiguous copies of
    blocks) where it can and raises where it cannot: for calibrating the cost model
    (``benchmarks/tools/calibrate_cl.py``), not for use. Process-wide, not thread-safe."""
    build.ops().set_kernel_override(kernel)
    try:
        yield
    finally:
        build.ops().set_kernel_override("none")


@contextlib.contextmanager
def assumed_cache(nbytes: int):
    """Within the block, the kernels take the last-level cache to hold ``nbytes`` (by default:
    the machine's, from sysfs), which decides where they write with streaming stores and
    where the channels-last taps prefetch (``csrc/cache.h``): 0 turns both on for every call,
    a huge value off. For tests and benchmarks; process-wide, not thread-safe."""
    previous = build.ops().set_cache_bytes(int(nbytes))
    try:
        yield
    finally:
        build.ops().set_cache_bytes(previous)


def isa() -> str:
    """The instruction set the library was built for: ``avx512``, ``avx2`` or ``portable``."""
    return build.ops().isa()
