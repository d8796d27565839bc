"""Sweep of random float64 configurations: a backend against the pure-torch oracle.

Every (D, padding, active, memory format) with random sizes, crops and shifts (integers,
half-integers and fractions, up to 8 and occasionally huge): forward, grad_input and
grad_weight must match :func:`torchshift2.reference.shift` differentiated by autograd within
1e-9, with the same output strides. Exit status 1 on any mismatch.

    python benchmarks/oracle_check.py --backend cpp
    TRITON_INTERPRET=1 python benchmarks/oracle_check.py --backend triton --trials 1
    python benchmarks/oracle_check.py --backend triton --device cuda --large
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys

import torch

import torchshift2 as ts
from torchshift2 import reference


def _layout(x: torch.Tensor, fmt: str) -> torch.Tensor:
    ndim = x.dim() - 2
    if fmt == "channels_last":
        order = [0] + list(range(2, ndim + 2)) + [1]
        return x.permute(order).contiguous().permute([0, ndim + 1] + list(range(1, ndim + 1)))
    if fmt == "permuted":
        return x.transpose(-1, 0).contiguous().transpose(-1, 0)
    return x.contiguous()


def _weight(rng: random.Random, channels: int, ndim: int) -> torch.Tensor:
    values = []
    for _ in range(channels * ndim):
        kind = rng.random()
        if kind < 0.2:
            values.append(float(rng.randint(-9, 9)))
        elif kind < 0.35:
            values.append(rng.randint(-9, 9) + 0.5)
        elif kind < 0.4:
            values.append(rng.choice([-1.0, 1.0]) * rng.choice([1e6, 1e30, 2.0**70]))
        else:
            values.append(rng.gauss(0.0, rng.choice([0.5, 2.0, 8.0])))
    return torch.tensor(values, dtype=torch.float64).reshape(channels, ndim)


def check_one(rng, device, ndim, padding, active, fmt, max_size, max_batch, max_channels):
    sizes = [rng.randint(1, max_size) for _ in range(ndim)]
    n, c = rng.randint(1, max_batch), rng.randint(1, max_channels)
    x = _layout(torch.randn(n, c, *sizes, dtype=torch.float64), fmt).to(device)
    weight = _weight(rng, c, ndim).to(device)
    crop = None
    if rng.random() < 0.5:
        crop = []
        for size in sizes:
            before = rng.randint(0, size)
            crop.append((before, rng.randint(0, size - before)))
    xs, ws = x.detach().requires_grad_(), weight.detach().requires_grad_()
    out = ts.shift(xs, ws, padding, active, crop)
    xr, wr = x.detach().requires_grad_(), weight.detach().requires_grad_()
    ref = reference.shift(xr, wr, padding, active, crop)
    problems = []
    if out.shape != ref.shape or out.stride() != ref.stride():
        problems.append(f"shape/stride {tuple(out.shape)}/{out.stride()} vs "
                        f"{tuple(ref.shape)}/{ref.stride()}")
    elif out.numel():
        grad_output = torch.randn(ref.shape, dtype=torch.float64).to(device)
        grads = torch.autograd.grad(out, (xs, ws), grad_output)
        ref_grads = torch.autograd.grad(ref, (xr, wr), grad_output)
        for name, a, b in (("forward", out, ref), ("grad_input", grads[0], ref_grads[0]),
                           ("grad_weight", grads[1], ref_grads[1])):
            err = float((a.detach() - b.detach()).abs().max()) if a.numel() else 0.0
            if not err <= 1e-9:
                problems.append(f"{name} max error {err:.3g}")
    if problems:
        return (f"D={ndim} {padding} active={active} {fmt} shape={tuple(x.shape)} "
                f"crop={crop} weight={weight.tolist()}: " + "; ".join(problems))
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="auto", choices=ts.BACKENDS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--trials", type=int, default=3, help="configurations per combination")
    parser.add_argument("--large", action="store_true",
                        help="also sizes up to 70 and 48 channels (many tiles per plane)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--paddings", default=",".join(ts.PADDINGS),
                        help="comma-separated subset of the paddings")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    limits = [(6, 3, 4)] + ([(70, 2, 48)] if args.large else [])
    count, failures = 0, []
    with ts.use_backend(args.backend):
        chosen = ts.backends.resolve(device)
        for (max_size, max_batch, max_channels), ndim, padding, active, fmt in itertools.product(
                limits, (1, 2, 3), args.paddings.split(","), (False, True),
                ("contiguous", "channels_last", "permuted")):
            size = max_size if ndim < 3 else min(max_size, 24)
            for _ in range(args.trials):
                count += 1
                problem = check_one(rng, device, ndim, padding, active, fmt, size, max_batch,
                                    max_channels)
                if problem:
                    failures.append(problem)
                    print("MISMATCH", problem, flush=True)
    print(f"oracle check: backend {chosen} on {device}: {count} configurations, "
          f"{len(failures)} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
