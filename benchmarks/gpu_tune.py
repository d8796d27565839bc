"""Launch-configuration sweep and host-overhead profile of the Triton backend (needs a GPU).

Device times come from ``triton.testing.do_bench`` (CUDA events, median) of the backend
functions writing into preallocated outputs, so they exclude Python and allocation; the
host part measures what a call of ``torchshift2.shift`` costs on the CPU side.

    python benchmarks/gpu_tune.py --out DIR            # sweep + host profile, JSON in DIR

Kernels are first compiled by a pool of processes (one GPU, many CPU cores), then timed
one at a time in this process.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import json
import multiprocessing as mp
import os
import pstats
import sys
import time

import torch

SHAPES = [(64, 128, 56, 56), (256, 64, 112, 112)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
FORMATS = ("contiguous", "channels_last")
CASES = ("ssl_fwd", "active_fwd", "ssl_bwd", "active_bwd")
PLANAR = [dict(TILE_BYTES=t, WARPS=w, CL_CHANNELS=64) for t in (4096, 8192, 16384)
          for w in (4, 8)]
CL = [dict(TILE_BYTES=t, WARPS=w, CL_CHANNELS=c) for t in (4096, 16384) for w in (4, 8)
      for c in (32, 64, 128)]


def _configs(fmt):
    return PLANAR if fmt == "contiguous" else CL


def _tensors(shape, dtype, fmt, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(shape, device="cuda", generator=g).to(dtype)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.rand(shape[1], 2, device="cuda", generator=g) * 3 - 1.5)
    return x, w


def _call(case, x, w, out, grad_input, grad_weight):
    from torchshift2 import triton as backend

    crop = [0, 0, 0, 0]
    if case.endswith("fwd"):
        return lambda: backend.forward_into(out, x, w, "zeros", case == "active_fwd", crop, 0)
    return lambda: backend.backward_into(grad_input, grad_weight, out, x, w, "zeros",
                                    case == "active_bwd", crop)


def _apply(config):
    from torchshift2 import triton as backend

    for key, value in config.items():
        setattr(backend, key, value)


def _warm(job):
    """Compile one (dtype, format, case, config) on a 1-sample tensor (same kernels)."""
    shape, dtype_name, fmt, case, config = job
    _apply(config)
    x, w = _tensors((1,) + tuple(shape[1:]), DTYPES[dtype_name], fmt)
    out, gi, gw = torch.empty_like(x), torch.empty_like(x), torch.empty_like(w)
    _call(case, x, w, out, gi, gw)()
    torch.cuda.synchronize()
    return job


def sweep(log):
    from triton.testing import do_bench

    jobs = [(s, d, f, c, cfg) for s, d, f, c in itertools.product(SHAPES, DTYPES, FORMATS, CASES)
            for cfg in _configs(f)]
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(min(14, os.cpu_count() or 2)) as pool:
        for _ in pool.imap_unordered(_warm, jobs):
            pass
    log(f"compiled {len(jobs)} launches in {time.perf_counter() - start:.0f} s")
    results = []
    for shape, dtype_name, fmt in itertools.product(SHAPES, DTYPES, FORMATS):
        dtype = DTYPES[dtype_name]
        x, w = _tensors(shape, dtype, fmt)
        out, gi, gw = torch.empty_like(x), torch.empty_like(x), torch.empty_like(w)
        copy_ms = do_bench(lambda: out.copy_(x), warmup=10, rep=50, return_mode="median")
        nbytes = x.numel() * x.element_size()
        results.append(dict(shape=shape, dtype=dtype_name, format=fmt, case="copy_",
                            config=None, ms=copy_ms, gbps=2 * nbytes / copy_ms / 1e6))
        for case in CASES:
            timings = []
            for config in _configs(fmt):
                _apply(config)
                ms = do_bench(_call(case, x, w, out, gi, gw), warmup=10, rep=40,
                              return_mode="median")
                transfers = 2 if case.endswith("fwd") else 3
                timings.append((ms, config))
                results.append(dict(shape=shape, dtype=dtype_name, format=fmt, case=case,
                                    config=config, ms=ms, x_copy=ms / copy_ms,
                                    gbps=transfers * nbytes / ms / 1e6))
            best_ms, best = min(timings, key=lambda t: t[0])
            default = next(ms for ms, c in timings if c == dict(TILE_BYTES=4096, WARPS=4,
                                                                CL_CHANNELS=64))
            log(f"{'x'.join(map(str, shape)):>16} {dtype_name:>8} {fmt:>13} {case:>10}: "
                f"copy_ {copy_ms * 1e3:7.1f} us, default {default * 1e3:7.1f} us "
                f"({default / copy_ms:4.2f}x), best {best_ms * 1e3:7.1f} us "
                f"({best_ms / copy_ms:4.2f}x) {best}")
        del x, w, out, gi, gw
        torch.cuda.empty_cache()
    return results


def host_profile(log):
    """CPU cost of one call (enqueue rate, no sync) and a cProfile of forward+backward."""
    import torchshift2 as ts
    from torchshift2 import triton as backend

    x, w = _tensors((64, 128, 56, 56), torch.float32, "contiguous")
    x.requires_grad_()
    w.requires_grad_()
    g = torch.randn_like(x)
    out = torch.empty_like(x)

    def fwd():
        with torch.no_grad():
            ts.shift(x, w)

    def raw_fwd():
        backend.forward_into(out, x.detach(), w.detach(), "zeros", False, [0, 0, 0, 0], 0)

    def fwdbwd():
        torch.autograd.grad(ts.shift(x, w), (x, w), g)

    report = {}
    for name, fn in (("op_forward", fwd), ("backend_forward", raw_fwd), ("op_fwd_bwd", fwdbwd)):
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        # Enqueue rate on a tiny tensor: host cost alone (the GPU keeps up).
        start = time.perf_counter()
        for _ in range(200):
            fn()
        host = (time.perf_counter() - start) / 200
        torch.cuda.synchronize()
        report[name] = host * 1e6
        log(f"host {name:>16}: {host * 1e6:7.1f} us per call (enqueue, 64x128x56x56)")
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(100):
        fwdbwd()
    profile.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(15)
    log(text.getvalue())
    report["cprofile_fwd_bwd"] = text.getvalue()
    # Which CPU-side ops and CUDA runtime calls a forward+backward makes (a hidden device
    # synchronisation would show here as cudaStreamSynchronize / cudaMemcpy).
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            fwdbwd()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    log(table)
    report["torch_profile_fwd_bwd"] = table
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--no-sweep", action="store_true")
    args = parser.parse_args(argv)

    def log(message):
        print(message, flush=True)

    payload = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    payload["host"] = host_profile(log)
    if not args.no_sweep:
        payload["sweep"] = sweep(log)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu-tune.json"), "w") as f:
            json.dump(payload, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
