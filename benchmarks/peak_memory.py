"""Extra peak memory of one shift, as a multiple of the input's bytes (SPEC §5).

Each case runs in a fresh process: the input (and, for fwd+bwd, grad_output) is created
first, then the peak resident set size (``ru_maxrss``) is read before and after the call.
The difference is what the call itself needed at its peak: the output (1x for an uncropped
shift), grad_input for fwd+bwd (1x), and any temporaries. SPEC §5 allows a forward its output
plus buffers that do not grow with the input (<= 1.25x in all), and a fwd+bwd its output and
grad_input plus such buffers.

    python benchmarks/peak_memory.py [--mib 256] [--backend cpp]

Prints a markdown table; the exit status is 1 when a case exceeds its bound.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CASES = [
    # name, shape, dtype, layout, active, backward
    ("uint8 1D SSL", (8, 64, None), "uint8", "contiguous", False, False),
    ("float32 1D SSL", (8, 64, None), "float32", "contiguous", False, False),
    ("float32 1D active", (8, 64, None), "float32", "contiguous", True, False),
    ("float32 1D channels-last active", (8, 64, None), "float32", "channels_last", True, False),
    ("float32 2D NCHW SSL", (8, 64, None, 32), "float32", "contiguous", False, False),
    ("float32 2D NCHW active", (8, 64, None, 32), "float32", "contiguous", True, False),
    ("float32 2D channels-last SSL", (8, 64, None, 32), "float32", "channels_last", False, False),
    ("float32 2D channels-last active", (8, 64, None, 32), "float32", "channels_last", True, False),
    ("bfloat16 2D channels-last active", (8, 64, None, 32), "bfloat16", "channels_last", True,
     False),
    ("float32 3D channels-last active", (4, 32, None, 16, 16), "float32", "channels_last", True,
     False),
    ("float32 2D channels-last strided active", (8, 64, None, 32), "float32", "strided", True,
     False),
    ("float32 2D NCHW fwd+bwd active", (8, 64, None, 32), "float32", "contiguous", True, True),
    ("float32 2D channels-last fwd+bwd active", (8, 64, None, 32), "float32", "channels_last",
     True, True),
    ("bfloat16 2D channels-last fwd+bwd SSL", (8, 64, None, 32), "bfloat16", "channels_last",
     False, True),
    ("float32 3D channels-last fwd+bwd active", (4, 32, None, 16, 16), "float32",
     "channels_last", True, True),
    ("float32 2D channels-last strided fwd+bwd SSL", (8, 64, None, 32), "float32", "strided",
     False, True),
]

CHILD = r"""
import json, resource, sys, torch, torchshift2 as ts
shape, dtype, layout, active, backward = json.loads(sys.argv[1])
dtype = getattr(torch, dtype)
def peak():  # bytes (ru_maxrss is in KiB on Linux)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
ndim = len(shape) - 2
def make(shape):
    x = torch.empty(shape, dtype=dtype)
    if layout in ("channels_last", "strided"):
        order = [0] + list(range(2, len(shape))) + [1]
        x = torch.empty([shape[i] for i in order], dtype=dtype).permute(
            [0, len(shape) - 1] + list(range(1, len(shape) - 1)))
    return x
# Warm-up: the same kind of call on a small tensor (builds / loads the kernel, starts the
# threads and their allocator arenas), so that only the measured call's own memory counts.
warm = make([2, shape[1]] + [6] * ndim).fill_(1)
weight = torch.ones(shape[1], ndim, requires_grad=backward)
with torch.set_grad_enabled(backward):
    out = ts.shift(warm.requires_grad_(backward), weight, "zeros", active)
    if backward:
        out.backward(torch.ones_like(out))
del warm, weight, out
x = torch.empty(shape, dtype=dtype)
if layout in ("channels_last", "strided"):
    order = [0] + list(range(2, len(shape))) + [1]
    x = torch.empty([shape[i] for i in order], dtype=dtype).permute(
        [0, len(shape) - 1] + list(range(1, len(shape) - 1)))
if layout == "strided":  # channels-last with a gap: neither contiguous nor dense
    big = torch.empty([shape[0]] + [s + (1 if i == len(shape) - 1 else 0) for i, s in
                       enumerate(shape[2:], 2)] + [shape[1]], dtype=dtype)
    x = big[..., :shape[-1], :].permute([0, len(shape) - 1] + list(range(1, len(shape) - 1)))
x.fill_(1) if not dtype.is_floating_point else x.normal_()
weight = torch.randn(shape[1], ndim) * 2
# grad_output in the output's layout, as autograd passes it in a network
grad = None
if backward:  # a strided input's output is contiguous (the layout rule)
    grad = (torch.ones(shape, dtype=dtype) if layout == "strided" else make(shape).fill_(1))
if backward:
    x.requires_grad_()
    weight.requires_grad_()
before = peak()
with torch.set_grad_enabled(backward):
    out = ts.shift(x, weight, "zeros", active)
    if backward:
        out.backward(grad)
after = peak()
print(json.dumps({"extra": after - before, "input": x.numel() * x.element_size()}))
"""


def run(case, mib: int, backend: str) -> dict:
    name, shape, dtype, layout, active, backward = case
    element = {"uint8": 1, "bfloat16": 2, "float32": 4}[dtype]
    other = 1
    for size in shape:
        other *= size or 1
    shape = [size or max(1, mib * 2**20 // (other * element)) for size in shape]
    env = dict(os.environ, TORCHSHIFT2_BACKEND=backend, TORCHSHIFT2_CPU_CACHE_MB="0")
    result = subprocess.run([sys.executable, "-c", CHILD,
                             json.dumps([shape, dtype, layout, active, backward])],
                            capture_output=True, text=True, env=env, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"{name}: {result.stderr[-2000:]}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    ratio = data["extra"] / data["input"]
    bound = 2.25 if backward else 1.25
    return dict(name=name, shape=shape, ratio=ratio, bound=bound, ok=ratio <= bound)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="input size in MiB (default 256)")
    parser.add_argument("--backend", default="cpp", help="TORCHSHIFT2_BACKEND (default cpp)")
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    args = parser.parse_args(argv)
    rows = [run(case, args.mib, args.backend) for case in CASES if args.only in case[0]]
    print(f"| case ({args.mib} MiB input, backend {args.backend}) | shape | extra peak / input "
          "| bound |")
    print("|---|---|---|---|")
    for row in rows:
        flag = "" if row["ok"] else " **over**"
        print(f"| {row['name']} | {tuple(row['shape'])} | {row['ratio']:.2f}x{flag} | "
              f"{row['bound']}x |")
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
