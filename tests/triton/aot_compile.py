"""Compile the Triton kernels for a CUDA target without a GPU (ahead of time, to cubin).

The interpreter runs the kernels' Python semantics but never lowers them; this script
drives the real compiler (TTIR -> TTGIR -> LLVM -> PTX -> ptxas) for the launches that
``torchshift2.backends.triton.forward`` / ``backward`` would make, by replacing each kernel's
``[grid](...)`` launch with a compile for ``GPUTarget("cuda", ARCH, 32)``.

Usage (TRITON_INTERPRET must be unset):
``python tests/triton/aot_compile.py [ARCH] [--all]``: a quick representative set (about 40
kernels), or with ``--all`` every padding x D x mode x layout (about 180 kernels, ~1 min).
Prints one line per compiled kernel and exits non-zero on the first failure.
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

import torchshift2.backends.triton as backend_module  # noqa: E402
from torchshift2.backends.triton import kernels  # noqa: E402

_ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
ARCH = int(_ARGS[0]) if _ARGS else 90
ALL = "--all" in sys.argv
TARGET = GPUTarget("cuda", ARCH, 32)
BACKEND = make_backend(TARGET)
SEEN = set()


class _Compile:
    """Stands in for a JITFunction: ``kernel[grid](*args, **meta)`` compiles instead."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            kernel = self.kernel
            binder = create_function_from_signature(kernel.signature, kernel.params, BACKEND)
            bound, specialization, options = binder(*args, **kwargs)
            options, signature, constexprs, attrs = kernel._pack_args(
                BACKEND, kwargs, bound, specialization, options)
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


backend_module._interpreted = lambda: True  # CPU tensors only supply shapes and strides here
for _name in ("_forward_kernel", "_grad_input_kernel", "_grad_weight_kernel",
              "_reduce_partials_kernel"):
    setattr(kernels, _name, _Compile(getattr(kernels, _name)))


def _channels_last(x):
    ndim = x.dim() - 2
    order = [0] + list(range(2, ndim + 2)) + [1]
    return x.permute(order).contiguous().permute([0, ndim + 1] + list(range(1, ndim + 1)))


def run_case(ndim, padding, active, channels_last, dtype, big=False):
    backend_module._needs_int64 = (lambda *t: True) if big else _needs_int64
    backend_module._PLANS.clear()  # cached launch plans hold BIG
    x = torch.randn([2, 8] + [6, 5, 7][:ndim]).to(dtype)
    if channels_last:
        x = _channels_last(x)
    weight = torch.randn(8, ndim)
    crop = [1, 0] * ndim
    out = torch.empty([2, 8] + [[6, 5, 7][d] - 1 for d in range(ndim)], dtype=dtype)
    if channels_last:
        out = _channels_last(out)
    backend_module.forward_into(out, x, weight, padding, active, crop, 0)
    if dtype.is_floating_point:
        grad_input, grad_weight = torch.empty_like(x), torch.empty_like(weight)
        backend_module.backward_into(grad_input, grad_weight, out, x, weight, padding, active, crop)


_needs_int64 = backend_module._needs_int64

if __name__ == "__main__":
    # Every padding and D with both modes and layouts in float32, then the other dtypes,
    # integer SSL and the int64-index variant on a few combinations.
    paddings = ("zeros", "border", "periodic", "reflect", "symmetric")
    if ALL:
        combos = itertools.product((1, 2, 3), paddings, (False, True), (False, True))
    else:  # every padding, D, mode and layout at least once
        combos = [(1 + i % 3, padding, i % 2 == 0, i % 4 < 2) for i, padding in
                  enumerate(paddings * 2)]
    for ndim, padding, active, channels_last in combos:
        run_case(ndim, padding, active, channels_last, torch.float32)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        run_case(2, "reflect", True, False, dtype)
        run_case(3, "border", True, True, dtype)
    for dtype in (torch.uint8, torch.int16, torch.int64):
        run_case(2, "zeros", False, False, dtype)
    run_case(2, "symmetric", True, False, torch.float32, big=True)
    run_case(3, "border", True, True, torch.float16, big=True)
    print(f"compiled {len(SEEN)} kernels for sm_{ARCH}")
