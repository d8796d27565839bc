"""Where the host time of a CUDA forward+backward goes (enqueue rate, no device sync).

    python benchmarks/gpu_host_split.py
"""

import time

import torch

import torchshift2 as ts
from torchshift2.backends import triton as backend


def rate(fn, n=300):
    for _ in range(30):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - start) / n
    torch.cuda.synchronize()
    return host * 1e6


def main():
    for shape in ((8, 16, 8, 8), (64, 128, 56, 56)):
        x = torch.randn(shape, device="cuda", requires_grad=True)
        w = (torch.rand(shape[1], 2, device="cuda") * 3 - 1.5).requires_grad_()
        g = torch.randn_like(x)
        xd, wd = x.detach(), w.detach()
        out, gi, gw = torch.empty_like(xd), torch.empty_like(xd), torch.empty_like(wd)
        crop = [0, 0, 0, 0]
        cases = {
            "autograd fwd+bwd (ts.shift)": lambda: torch.autograd.grad(ts.shift(x, w), (x, w), g),
            "op fwd + op bwd (no autograd)": lambda: (
                torch.ops.torchshift2.shift(xd, wd, "zeros", False, crop),
                torch.ops.torchshift2.shift_backward(g, xd, wd, "zeros", False, crop,
                                                     [True, True])),
            "op fwd": lambda: torch.ops.torchshift2.shift(xd, wd, "zeros", False, crop),
            "op bwd": lambda: torch.ops.torchshift2.shift_backward(g, xd, wd, "zeros", False,
                                                                    crop, [True, True]),
            "backend fwd + bwd": lambda: (
                backend.forward_into(out, xd, wd, "zeros", False, crop, 0),
                backend.backward_into(gi, gw, g, xd, wd, "zeros", False, crop)),
            "backend bwd": lambda: backend.backward_into(gi, gw, g, xd, wd, "zeros", False, crop),
            "autograd of x * 2 (engine only)": lambda: torch.autograd.grad(x * 2, x, g),
        }
        print(f"shape {shape}")
        for name, fn in cases.items():
            print(f"  {name:36s} {rate(fn):8.1f} us per call")
    xc = torch.randn(8, 16, 8, 8, requires_grad=True)
    wc = torch.rand(16, 2, requires_grad=True)
    gc = torch.randn_like(xc)
    print("CPU tensors (8, 16, 8, 8), cpp backend")
    for name, fn in {"autograd fwd+bwd": lambda: torch.autograd.grad(ts.shift(xc, wc), (xc, wc),
                                                                     gc),
                     "autograd of x * 2": lambda: torch.autograd.grad(xc * 2, xc, gc)}.items():
        for _ in range(30):
            fn()
        start = time.perf_counter()
        for _ in range(300):
            fn()
        print(f"  {name:36s} {(time.perf_counter() - start) / 300 * 1e6:8.1f} us per call")


if __name__ == "__main__":
    main()
