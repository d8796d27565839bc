"""The C++ CPU backend: the kernels of ``*.cpp`` here, built at first use by :mod:`.build`.

Implements :class:`torchshift2.backends.Backend`. The kernels allocate ``out`` and
``grad_input`` themselves, from a cache of freed blocks (``output_cache.cpp``: big fresh CPU
tensors cost more in page faults than the shift itself), in the memory format that
:func:`torchshift2._spec.is_channels_last` picks; they refuse non-finite weights with a
``ValueError``.

Besides the interface, the library registers the eager fast path that
:mod:`torchshift2._eager` calls: ``shift_autograd`` (the forward with a C++ autograd node),
``eager_shift`` and ``eager_shift_inplace`` (see ``ops.cpp``).
"""

from __future__ import annotations

from ... import _spec
from . import build

name = "cpp"


def forward(input, weight, padding, active, crop, fill):
    return build.ops().forward(input, weight, _spec.padding_code(padding), active, crop,
                               float(fill), _spec.is_channels_last(input))


def backward(grad_output, input, weight, padding, active, crop):
    return build.ops().backward(grad_output, input, weight, _spec.padding_code(padding),
                                active, crop, _spec.is_channels_last(input))


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
