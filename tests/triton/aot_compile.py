"""Compile the Triton kernels for a CUDA target without a GPU (ahead of time, to cubin).

The interpreter runs the kernels' Python semantics but never lowers them; this script
drives the real compiler (TTIR -> TTGIR -> LLVM -> PTX -> ptxas) for the launches that the
backend's ``forward`` / ``backward`` / ``shift_inplace`` would make, by replacing its launch
indirection (``torchshift2.backends.triton._launch``) with a compile for
``GPUTarget("cuda", ARCH, 32)``.

Usage (TRITON_INTERPRET must be unset):
``python tests/triton/aot_compile.py [ARCH] [--all]``: a representative set, or with
``--all`` every padding x D x mode x layout. Prints one line per compiled kernel and exits
non-zero on the first failure.
"""

import itertools
import os
import sys

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("aot_compile.py: unset TRITON_INTERPRET")

import torch  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.compiler import compile as triton_compile  # noqa: E402
from triton.compiler import make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

import torchshift2.backends.triton as backend  # noqa: E402

_ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
ARCH = int(_ARGS[0]) if _ARGS else 90
ALL = "--all" in sys.argv
TARGET = GPUTarget("cuda", ARCH, 32)
BACKEND = make_backend(TARGET)
SEEN = set()


def _compile(kernel):
    """Stands in for ``kernel``: ``kernel[grid](*args, **meta)`` compiles instead."""

    class Grid:
        def __getitem__(self, grid):
            def launch(*args, **meta):
                binder = create_function_from_signature(kernel.signature, kernel.params, BACKEND)
                bound, specialization, options = binder(*args, **meta)
                options, signature, constexprs, attrs = kernel._pack_args(
                    BACKEND, meta, bound, specialization, options)
                source = ASTSource(kernel, signature, constexprs, attrs)
                if source.hash() in SEEN:
                    return
                SEEN.add(source.hash())
                compiled = triton_compile(source, target=TARGET, options=options.__dict__)
                assert compiled.asm.get("cubin"), kernel.fn.__name__
                names = kernel.arg_names
                print(kernel.fn.__name__, {names[k[0]]: v for k, v in constexprs.items()
                                           if names[k[0]].isupper()}, flush=True)

            return launch

    return Grid()


backend._launch = _compile
backend._interpreted = lambda: True  # CPU tensors only supply shapes and strides here


def _layout(x, channels_last):
    if not channels_last:
        return x.contiguous()
    ndim = x.dim() - 2
    order = [0] + list(range(2, ndim + 2)) + [1]
    return x.permute(order).contiguous().permute([0, ndim + 1] + list(range(1, ndim + 1)))


def run_case(ndim, padding, active, channels_last, dtype, big=False, k=1, masks=False):
    backend._plan.needs_int64 = (lambda *t: True) if big else _needs_int64
    backend._PLANS.clear()  # cached launch plans hold BIG
    x = _layout(torch.zeros([2, 8] + [6, 5, 8][3 - ndim:]).to(dtype), channels_last)
    weight = torch.zeros(8 * k, ndim)
    crop = [1, 0] * ndim
    out = _layout(torch.zeros([2, 8 * k] + [s - 1 for s in x.shape[2:]], dtype=dtype),
                  channels_last)
    backend.forward_into(out, x, weight, padding, active, crop, 0)
    if dtype.is_floating_point:
        for mask in ([(True, True), (True, False), (False, True)] if masks else [(True, True)]):
            grad_input = torch.empty_like(x) if mask[0] else None
            grad_weight = torch.empty_like(weight) if mask[1] else None
            backend.backward_into(grad_input, grad_weight, out, x, weight, padding, active, crop)
    if not active and k == 1:
        backend.shift_inplace(x, weight, padding)


_needs_int64 = backend._plan.needs_int64

if __name__ == "__main__":
    paddings = ("zeros", "border", "periodic", "reflect", "symmetric")
    if ALL:
        combos = itertools.product((1, 2, 3), paddings, (False, True), (False, True))
    else:  # every padding, D, mode and layout at least once
        combos = [(1 + i % 3, padding, i % 2 == 0, i % 4 < 2) for i, padding in
                  enumerate(paddings * 2)]
    for i, (ndim, padding, active, channels_last) in enumerate(combos):
        run_case(ndim, padding, active, channels_last, torch.float32, masks=i < 4)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        run_case(2, "reflect", True, False, dtype)
        run_case(3, "border", True, True, dtype)
    for dtype in (torch.uint8, torch.int16, torch.int64):
        run_case(2, "zeros", False, False, dtype)
    run_case(2, "periodic", True, True, torch.float32, k=2)
    run_case(1, "symmetric", False, False, torch.float32, k=3)
    run_case(2, "symmetric", True, False, torch.float32, big=True)
    run_case(3, "border", True, True, torch.float16, big=True)
    print(f"compiled {len(SEEN)} kernels for sm_{ARCH}")
