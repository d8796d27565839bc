"""Trace the backend's launch functions as a ``triton_op`` body would run under
``torch.compile``: ``make_fx`` with symbolic shapes and ``torch.library.wrap_triton`` as the
launcher, on CPU tensors (nothing runs: each launch becomes a
``triton_kernel_wrapper_mutation`` node). Any data access, ``.item()`` or host sync in the
planning code would fail here.

Usage (TRITON_INTERPRET must be unset: the interpreter's kernels are not traceable):
``python tests/triton/trace_launches.py`` prints one line per traced call:
``<call> <layout> <kernel names>`` and whether the grid is symbolic.

Then the public ops themselves (``torch.library.triton_op``s) as torch.compile hands them to
Inductor: AOTAutograd (``aot_function``) traces each op on FakeTensors of device ``cuda``
(no GPU needed: nothing runs) and one line per op lists the graph's calls,
``op:<op> <layout> <targets>``: the Triton kernels as
``triton_kernel_wrapper_functional`` nodes (``kernel:<name>``), any other call by its
target. The kernels' mutation analysis needs a compile target: sm_90, as aot_compile.py.
"""

import os
import sys

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("trace_launches.py: unset TRITON_INTERPRET")

from operator import getitem  # noqa: E402

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


def _kernel_name(node):
    """The Triton kernel a ``triton_kernel_wrapper_*`` node launches."""
    kernel = torch._higher_order_ops.triton_kernel_wrap.kernel_side_table.get_kernel(
        node.kwargs["kernel_idx"])
    return kernel.fn.__name__


def kernels(graph_module):
    names, symbolic = [], True
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and "triton_kernel_wrapper" in str(node.target):
            names.append(_kernel_name(node))
            grid = node.kwargs["grid"][0]
            symbolic = symbolic and not all(isinstance(g, int) for g in grid)
    return names, symbolic


class _SM90Driver:
    """The one thing tracing asks Triton's driver (TTIR for the mutation analysis)."""

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)


def _op_calls(graph_module):
    calls = []
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or node.target is getitem:
            continue
        if "triton_kernel_wrapper" in str(node.target):
            calls.append(f"kernel:{_kernel_name(node)}")
        else:
            calls.append(str(node.target))
    return calls


def trace_ops():
    """``{(op, layout): calls}`` of each public op traced by AOTAutograd on fake CUDA
    tensors."""
    import triton
    from functorch.compile import aot_function
    from torch._subclasses.fake_tensor import FakeTensorMode

    triton.runtime.driver.set_active(_SM90Driver())
    mode = FakeTensorMode()
    traced = {}

    def keep(key):
        def compiler(graph_module, example_inputs):
            traced[key] = _op_calls(graph_module)

            def run(*args):  # the graph on the fake inputs, for aot_function's wrappers
                with mode:
                    return graph_module(*args)
            return run
        return compiler

    ops = torch.ops.torchshift2
    calls = {  # (x, w, g): w has a channel multiplier of 2, w8 none
        "shift": lambda x, w, w8, g: ops.shift(x, w, "reflect", True, CROP),
        "shift_backward": lambda x, w, w8, g: ops.shift_backward(g, x, w, "reflect", True, CROP,
                                                                 [True, True]),
        "shift_backward_input": lambda x, w, w8, g: ops.shift_backward(
            g, x, w, "reflect", True, CROP, [True, False])[0],
        "shift_": lambda x, w, w8, g: _inplace(x, w8),
    }
    for channels_last in (False, True):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        with mode:  # (views of fake CUDA tensors need a CUDA build: every tensor is made)
            x = torch.empty(2, 8, 6, 8, device="cuda", memory_format=fmt)
            w, w8 = torch.empty(16, 2, device="cuda"), torch.empty(8, 2, device="cuda")
            g = torch.empty(2, 16, 5, 8, device="cuda", memory_format=fmt)
        label = "channels_last" if channels_last else "contiguous"
        for name, fn in calls.items():
            aot_function(fn, fw_compiler=keep((name, label)))(x, w, w8, g)
    return traced


def _inplace(x, w):
    x = x.clone()
    torch.ops.torchshift2.shift_(x, w, "zeros")
    return x


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
    for (name, label), calls in trace_ops().items():
        print(f"op:{name}", label, " ".join(calls), flush=True)
