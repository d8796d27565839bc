"""Launch-configuration sweep of the Triton backend (needs a GPU): bounded, and checked.

    python benchmarks/gpu_tune.py --out DIR          # sweep, JSON + text in DIR
    python benchmarks/gpu_tune.py --quick            # one shape, fewer configurations

Every configuration is a dict of ``torchshift2.backends.triton.CONFIG`` knobs (tile bytes,
warps, channel block bytes, tiles per program, candidate / padding thresholds). Device
times come from ``triton.testing.do_bench`` (CUDA events, median) of the backend writing
into preallocated outputs (no Python of the ops, no allocation). The sweep also asserts
the property that makes tuning safe: every configuration gives the same bits (forward
output, grad_input, grad_weight) as the default. The best configuration per case is
reported; CONFIG's defaults are chosen from it by hand (no run-time autotuning).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from torchshift2.backends import triton as backend  # noqa: E402

SHAPES = [(64, 128, 56, 56), (32, 64, 112, 112)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
FORMATS = ("contiguous", "channels_last")
CASES = ("ssl_fwd", "active_fwd", "ssl_bwd", "active_bwd")
SPACE = dict(TILE_BYTES=(2048, 4096, 8192), WARPS=(4, 8), BWD_WARPS=(4, 8),
             CHUNK_TILES=(4, 8, 16), CL_BYTES=(64, 128), CMAX_FWD=(9, 16))


def _configs(quick):
    keys = ("TILE_BYTES", "WARPS", "BWD_WARPS") if quick else tuple(SPACE)
    for values in itertools.product(*(SPACE[k] for k in keys)):
        yield dict(zip(keys, values))


def _tensors(shape, dtype, fmt, seed=0):
    generator = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(shape, device="cuda", generator=generator).to(dtype)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.rand(shape[1], 2, device="cuda", generator=generator) * 3 - 1.5
    return x, w


def _call(case, x, w, out, grad_input, grad_weight, g):
    crop = [0, 0, 0, 0]
    active = case.startswith("active")
    if case.endswith("fwd"):
        return lambda: backend.forward_into(out, x, w, "zeros", active, crop, 0)
    return lambda: backend.backward_into(grad_input, grad_weight, g, x, w, "zeros", active, crop)


def sweep(quick, log):
    from triton.testing import do_bench

    default = dict(backend.CONFIG)
    results = []
    for shape, dtype_name, fmt in itertools.product(SHAPES[:1] if quick else SHAPES, DTYPES,
                                                    FORMATS):
        x, w = _tensors(shape, DTYPES[dtype_name], fmt)
        g = torch.randn_like(x)
        out, gi, gw = torch.empty_like(x), torch.empty_like(x), torch.empty_like(w)
        copy_ms = do_bench(lambda: out.copy_(x), warmup=10, rep=50, return_mode="median")
        for case in CASES:
            fn = _call(case, x, w, out, gi, gw, g)
            backend.CONFIG.update(default)
            fn()
            reference = [t.clone() for t in ((out,) if case.endswith("fwd") else (gi, gw))]
            timings = []
            for config in _configs(quick):
                backend.CONFIG.update(default)
                backend.CONFIG.update(config)
                fn()
                got = (out,) if case.endswith("fwd") else (gi, gw)
                same = all(torch.equal(a, b) for a, b in zip(got, reference))
                if not same:
                    raise AssertionError(f"{case} {shape} {dtype_name} {fmt}: configuration "
                                         f"{config} changed the result")
                ms = do_bench(fn, warmup=10, rep=40, return_mode="median")
                timings.append((ms, config))
            backend.CONFIG.update(default)
            default_ms = do_bench(fn, warmup=10, rep=40, return_mode="median")
            best_ms, best = min(timings, key=lambda t: t[0])
            results.append(dict(shape=shape, dtype=dtype_name, format=fmt, case=case,
                                copy_ms=copy_ms, default_ms=default_ms, best_ms=best_ms,
                                best=best, all=[dict(ms=ms, config=c) for ms, c in timings]))
            log(f"{'x'.join(map(str, shape)):>16} {dtype_name:>8} {fmt:>13} {case:>10}: "
                f"copy_ {copy_ms * 1e3:7.1f} us, default {default_ms * 1e3:7.1f} us "
                f"({default_ms / copy_ms:4.2f}x), best {best_ms * 1e3:7.1f} us "
                f"({best_ms / copy_ms:4.2f}x) {best}  [all bitwise equal]")
        torch.cuda.empty_cache()
    backend.CONFIG.update(default)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu_tune.py: needs a CUDA GPU")

    def log(message):
        print(message, flush=True)

    payload = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "default": dict(backend.CONFIG), "sweep": sweep(args.quick, log)}
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu-tune.json"), "w") as f:
            json.dump(payload, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
