"""Trace the backend's launch functions as a ``triton_op`` body would run under
``torch.compile``: ``make_fx`` with symbolic shapes and ``torch.library.wrap_triton`` as the
launcher, on CPU tensors (nothing runs: each launch becomes a
``triton_kernel_wrapper_mutation`` node). Any data access, ``.item()`` or host sync in the
planning code would fail here.

Usage (TRITON_INTERPRET must be unset: the interpreter's kernels are not traceable):
``python tests/triton/trace_launches.py`` prints one line per traced call:
``<call> <layout> <kernel names>`` and whether the grid is symbolic.
"""

import os
import sys

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("trace_launches.py: unset TRITON_INTERPRET")

import torch  # noqa: E402
from torch.fx.experimental.proxy_tensor import make_fx  # noqa: E402

import torchshift2.backends.triton as backend  # noqa: E402
from torchshift2 import _spec  # noqa: E402

backend._interpreted = lambda: True  # CPU example tensors: shapes and strides only
WRAP = torch.library.wrap_triton
CROP = [1, 0, 0, 0]


def forward(x, w):
    out = _spec.empty_output(x, CROP, w)
    backend.launch_forward(out, x, w, "reflect", True, CROP, launcher=WRAP)
    return out


def backward(g, x, w):
    gi, gw = _spec.empty_grads(x, w)
    backend.launch_backward(gi, gw, g, x, w, "reflect", True, CROP, launcher=WRAP)
    return gi, gw


def backward_input(g, x, w):
    gi, _ = _spec.empty_grads(x, w, (True, False))
    backend.launch_backward(gi, None, g, x, w, "reflect", True, CROP, launcher=WRAP)
    return gi


def shift_(x, w):
    x = x.clone()
    backend.launch_shift_inplace(x, w, "zeros", launcher=WRAP)
    return x


def kernels(graph_module):
    names, symbolic = [], True
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and "triton_kernel_wrapper" in str(node.target):
            kernel = torch._higher_order_ops.triton_kernel_wrap.kernel_side_table.get_kernel(
                node.kwargs["kernel_idx"])
            names.append(kernel.fn.__name__)
            grid = node.kwargs["grid"][0]
            symbolic = symbolic and not all(isinstance(g, int) for g in grid)
    return names, symbolic


if __name__ == "__main__":
    for channels_last in (False, True):
        x = torch.randn(2, 8, 6, 8)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        w = torch.randn(16, 2)
        g = torch.randn(2, 16, 5, 8)
        if channels_last:
            g = g.contiguous(memory_format=torch.channels_last)
        label = "channels_last" if channels_last else "contiguous"
        for call, fn, args in (("forward", forward, (x, w)), ("backward", backward, (g, x, w)),
                               ("backward_input", backward_input, (g, x, w)),
                               ("shift_", shift_, (x, w[:8]))):
            names, symbolic = kernels(make_fx(fn, tracing_mode="symbolic")(*args))
            print(call, label, " ".join(names), "symbolic-grid" if symbolic else "static-grid",
                  flush=True)
