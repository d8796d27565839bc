"""Static evidence for the Triton kernels without a GPU: compile every kernel launch that a
forward and a backward would make, for sm_90, and read the machine code.

    python benchmarks/tools/sass_report.py                 # the report (about 2 min)
    python benchmarks/tools/sass_report.py --quick         # 2 configurations (CI)
    python benchmarks/tools/sass_report.py --json FILE     # also machine-readable

The backend's launch indirection (``torchshift2.backends.triton._launch``) is replaced by a
compiler: each ``kernel[grid](*args, **meta)`` the backend would run is compiled ahead of
time (``triton.compile`` for ``GPUTarget("cuda", ARCH, 32)``: TTIR -> PTX -> ptxas ->
cubin) with exactly the arguments' specialisations, and nothing runs. CPU tensors supply
shapes, strides and dtypes (their data pointers are 16-byte aligned, as CUDA
allocations are). For each launch the report gives what ``cuobjdump`` shows:

* ``regs``: registers per thread (the occupancy limit is 65536 / (regs x threads));
* ``spill``: bytes of local memory (``STACK`` + ``LOCAL`` of ``-res-usage``; 0 = no spills);
* ``smem``: shared memory per CTA (Triton's reductions and layout conversions);
* the global loads / stores by width: ``LDG.128`` etc. (an ``.E`` access of 32 bits is
  listed as ``LDG.32``); 128-bit accesses are what a bandwidth-bound kernel needs;
* ``instr``: SASS instructions of the whole kernel (code size, not a count per element).

TRITON_INTERPRET must be unset (the interpreter never compiles).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("sass_report.py: unset TRITON_INTERPRET (the interpreter does not compile)")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.compiler import compile as triton_compile  # noqa: E402
from triton.compiler import make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

import torchshift2.backends.triton as backend  # noqa: E402

BIN = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
_ACCESS = re.compile(r"\b(LDG|STG)((?:\.[A-Z0-9_]+)*)")
_WIDTH = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "64": 64, "128": 128}


def access_widths(sass: str) -> dict:
    """``{"LDG.128": count, "STG.32": count, ...}`` over the global accesses in ``sass``."""
    counts = collections.Counter()
    for op, suffix in _ACCESS.findall(sass):
        parts = [p for p in suffix.split(".") if p]
        width = next((_WIDTH[p] for p in parts if p in _WIDTH), 32)
        counts[f"{op}.{width}"] += 1
    return dict(sorted(counts.items()))


class Compiler:
    """Stands in for a JITFunction: ``kernel[grid](*args, **meta)`` compiles and records."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)
        self.backend = make_backend(self.target)
        self.cache = {}
        self.launches = []

    def __call__(self, kernel):
        def with_grid(grid):
            def launch(*args, **meta):
                self.launches.append(self.compile(kernel, grid, args, meta))
            return launch

        return _Subscript(with_grid)

    def compile(self, kernel, grid, args, meta):
        binder = create_function_from_signature(kernel.signature, kernel.params, self.backend)
        bound, specialization, options = binder(*args, **meta)
        options, signature, constexprs, attrs = kernel._pack_args(
            self.backend, meta, bound, specialization, options)
        source = ASTSource(kernel, signature, constexprs, attrs)
        key = source.hash() + str(options.num_warps)
        if key not in self.cache:
            compiled = triton_compile(source, target=self.target, options=options.__dict__)
            self.cache[key] = _inspect(compiled)
        names = kernel.arg_names
        shown = {names[k[0]]: v for k, v in constexprs.items() if names[k[0]].isupper()}
        return dict(kernel=kernel.fn.__name__, grid=[int(g) for g in grid],
                    warps=options.num_warps, meta={k: str(v) for k, v in shown.items()},
                    **self.cache[key])


class _Subscript:
    def __init__(self, fn):
        self.fn = fn

    def __getitem__(self, grid):
        return self.fn(grid)


def _inspect(compiled) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = subprocess.run([str(BIN / "cuobjdump"), "-res-usage", path],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([str(BIN / "cuobjdump"), "-sass", path],
                              capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"\b([A-Z]+(?:\[\d\])?):(\d+)", usage))
    spill = int(fields.get("STACK", 0)) + int(fields.get("LOCAL", 0))
    return dict(regs=int(fields["REG"]), spill=spill, smem=int(compiled.metadata.shared),
                instr=len(re.findall(r"/\*[0-9a-f]{4,}\*/\s+[@A-Z]", sass)),
                local_ops=len(re.findall(r"\b(?:LDL|STL)\b", sass)),
                access=access_widths(sass))


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if not channels_last:
        return x.contiguous()
    nd = x.dim() - 2
    order = [0] + list(range(2, nd + 2)) + [1]
    return x.permute(order).contiguous().permute([0, nd + 1] + list(range(1, nd + 1)))


def run_case(compiler, shape, dtype, channels_last, active, padding="zeros", multiplier=1,
             crop=None):
    """Compile the launches of a forward, a backward with both gradients, one with
    grad_input only and one with grad_weight only; return them grouped by call."""
    ndim = len(shape) - 2
    x = _layout(torch.empty(shape, dtype=dtype), channels_last)
    weight = torch.zeros(shape[1] * multiplier, ndim)
    crop = crop or [0, 0] * ndim
    out_shape = [shape[0], shape[1] * multiplier] + [
        s - crop[2 * d] - crop[2 * d + 1] for d, s in enumerate(shape[2:])]
    out = _layout(torch.empty(out_shape, dtype=dtype), channels_last)
    calls = {}
    for call, fn in (
        ("forward", lambda: backend.forward_into(out, x, weight, padding, active, crop, 0)),
        ("backward", lambda: backend.backward_into(torch.empty_like(x), torch.empty_like(weight),
                                                   out, x, weight, padding, active, crop)),
        ("backward gi", lambda: backend.backward_into(torch.empty_like(x), None, out, x, weight,
                                                      padding, active, crop)),
        ("backward gw", lambda: backend.backward_into(None, torch.empty_like(weight), out, x,
                                                      weight, padding, active, crop)),
    ):
        start = len(compiler.launches)
        fn()
        calls[call] = compiler.launches[start:]
    if not active and multiplier == 1 and not any(crop):
        start = len(compiler.launches)
        backend.shift_inplace(x, weight, padding)
        calls["shift_"] = compiler.launches[start:]
    return calls


def cases(quick: bool):
    """(label, kwargs of run_case): the benchmark's training shape in every layout, dtype and
    mode, then the variants the kernels specialise on."""
    shape = (64, 128, 56, 56)
    main = [(f"{'x'.join(map(str, shape))} {fmt} {dt} {'active' if act else 'SSL'}",
             dict(shape=shape, dtype=getattr(torch, dt), channels_last=fmt == "channels_last",
                  active=act))
            for fmt in ("contiguous", "channels_last") for dt in ("float32", "bfloat16")
            for act in (False, True)]
    if quick:
        return [main[0], main[5]]
    extra = [
        ("8x64x28x28 contiguous float32 SSL reflect", dict(
            shape=(8, 64, 28, 28), dtype=torch.float32, channels_last=False, active=False,
            padding="reflect")),
        ("8x64x28x28 channels_last float32 active border", dict(
            shape=(8, 64, 28, 28), dtype=torch.float32, channels_last=True, active=True,
            padding="border")),
        ("64x128x4096 contiguous float32 active (1D)", dict(
            shape=(64, 128, 4096), dtype=torch.float32, channels_last=False, active=True)),
        ("4x32x16x32x32 channels_last float32 active (3D)", dict(
            shape=(4, 32, 16, 32, 32), dtype=torch.float32, channels_last=True, active=True)),
        ("4x32x16x32x32 contiguous float16 SSL (3D)", dict(
            shape=(4, 32, 16, 32, 32), dtype=torch.float16, channels_last=False, active=False)),
        ("64x128x56x56 contiguous float64 active", dict(
            shape=(64, 128, 56, 56), dtype=torch.float64, channels_last=False, active=True)),
        ("64x64x56x56 channels_last float32 SSL k=2", dict(
            shape=(64, 64, 56, 56), dtype=torch.float32, channels_last=True, active=False,
            multiplier=2)),
        ("64x128x56x56 contiguous float32 active crop 1", dict(
            shape=(64, 128, 56, 56), dtype=torch.float32, channels_last=False, active=True,
            crop=[1, 1, 1, 1])),
    ]
    return main + extra


def collect(quick=False, arch=90):
    compiler = Compiler(arch)
    saved = backend._launch, backend._interpreted
    backend._launch, backend._interpreted = compiler, lambda: True
    backend._PLANS.clear()
    try:
        return [(label, run_case(compiler, **kwargs)) for label, kwargs in cases(quick)]
    finally:
        backend._launch, backend._interpreted = saved
        backend._PLANS.clear()


def _meta_text(meta):
    keys = ("NDIM", "ACTIVE", "NEED_GI", "NEED_GW", "VX", "VO", "VG", "VI", "V", "BR", "BW",
            "BC", "T0", "T1", "T2")
    return " ".join(f"{k}={meta[k]}" for k in keys if k in meta)


def render(results, arch=90) -> str:
    lines = [f"# SASS report: torchshift2 Triton kernels compiled for sm_{arch} "
             f"(triton {triton.__version__}, torch {torch.__version__})",
             "# regs / spill bytes / shared bytes per CTA / global accesses by width / "
             "instructions; produced by benchmarks/tools/sass_report.py", ""]
    for label, calls in results:
        lines.append(f"== {label}")
        for call, launches in calls.items():
            lines.append(f"  {call}: {len(launches)} launch{'es' if len(launches) != 1 else ''}")
            for item in launches:
                access = " ".join(f"{k}x{v}" for k, v in item["access"].items())
                lines.append(
                    f"    {item['kernel']:<16} warps {item['warps']} regs {item['regs']:>3} "
                    f"spill {item['spill']:>3} smem {item['smem']:>5} instr {item['instr']:>5}"
                    f"  {access}")
                lines.append(f"      {_meta_text(item['meta'])}  grid {item['grid'][0]}")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two configurations only")
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--out", help="write the text report here too")
    parser.add_argument("--json", help="write the launches as JSON here")
    args = parser.parse_args(argv)
    results = collect(args.quick, args.arch)
    text = render(results, args.arch)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(
            [{"case": label, "calls": calls} for label, calls in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
