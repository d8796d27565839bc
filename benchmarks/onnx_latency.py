"""Inference latency of the demo CNNs: PyTorch eager against ONNX Runtime, in one process.

The demo's two models (``examples/demo.py``'s ``build_model``: ``dwconv``, 3x3 depthwise convs,
and ``shift``, the same after ``replace_depthwise``, SSL shifts) are exported with
``torch.onnx.export(..., dynamo=True)`` and ``torchshift2.onnx.translation_table`` three
times: with the timed shape fixed and with a dynamic batch (the exporter folds the shift's
index arithmetic into constants), and with dynamic batch and image size (ONNX Runtime
computes the indices at every call). Each (model, batch) row times PyTorch and the three
sessions in alternation, after checking that they agree, and prints a markdown table of
medians (docs/deployment.md shows one).

    python benchmarks/onnx_latency.py                     # 1 thread, batches 1 and 64
    python benchmarks/onnx_latency.py --threads 2 --batches 1,8 --repeats 300
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time
import warnings

import torch

import torchshift2 as ts  # noqa: F401  (registers the ops)
import torchshift2.onnx

# examples/ and benchmarks/ are imported from the checkout (appended: the installed
# torchshift2 stays the one used)
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.harness.machine import cpu_model  # noqa: E402
from examples import demo  # noqa: E402


def _require():
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise SystemExit(f"needs onnx, onnxscript, onnxruntime: pip install 'torchshift2[onnx]' "
                         f"({error})") from None
    return onnxruntime


def export(model, x, dynamic_dims=()):
    dynamic_shapes = None
    if dynamic_dims:
        dynamic_shapes = ({d: torch.export.Dim.DYNAMIC for d in dynamic_dims},)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False,
                                    dynamic_shapes=dynamic_shapes,
                                    custom_translation_table=torchshift2.onnx.translation_table)
    return program.model_proto.SerializeToString()


def session(ort, model_bytes: bytes, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def time_alternating(calls, repeats: int):
    """``(median, min)`` seconds of each callable, called in turn so that changes of the
    machine's load hit all alike; the minimum is what the code costs on a quiet machine."""
    times = {name: [] for name in calls}
    for fn in calls.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(values), min(values)) for name, values in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads and ONNX Runtime intra-op threads")
    parser.add_argument("--batches", default="1,64", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per case")
    args = parser.parse_args(argv)
    ort = _require()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]

    rows = []
    for kind in ("dwconv", "shift"):
        torch.manual_seed(0)
        model = demo.build_model(kind).eval()
        example = torch.randn(2, 1, 8, 8)
        sessions = {
            "batch": session(ort, export(model, example, (0,)), args.threads),
            "sizes": session(ort, export(model, example, (0, 2, 3)), args.threads),
        }
        for batch in batches:
            x = torch.randn(batch, 1, 8, 8)
            calls = {"static": session(ort, export(model, x), args.threads), **sessions}
            with torch.inference_mode():
                expected = model(x)
            for name, sess in list(calls.items()):
                feed = {sess.get_inputs()[0].name: x.numpy()}
                actual = torch.from_numpy(sess.run(None, feed)[0])
                torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
                calls[name] = functools.partial(sess.run, None, feed)

            def eager():
                with torch.inference_mode():
                    model(x)

            medians = time_alternating({"eager": eager, **calls},
                                       max(10, args.repeats // max(1, batch // 8)))
            rows.append((kind, batch, medians))

    print(f"Machine: {cpu_model()}, {platform.machine()}, {os.cpu_count()} cores; "
          f"{args.threads} thread(s) for PyTorch and ONNX Runtime; Python "
          f"{sys.version.split()[0]}, torch {torch.__version__}, onnxruntime {ort.__version__}. "
          "Demo CNN on 8x8 images, float32; median (minimum) of alternating calls, in ms; load "
          f"average {os.getloadavg()[0]:.1f} at the end.\n")
    print("| model | batch | PyTorch eager | ONNX Runtime, static shapes "
          "| ONNX Runtime, dynamic batch | ONNX Runtime, dynamic batch and size |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind, batch, medians in rows:
        cells = " | ".join(f"{medians[name][0] * 1e3:.3f} ({medians[name][1] * 1e3:.3f})"
                           for name in ("eager", "static", "batch", "sizes"))
        print(f"| {kind} | {batch} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
