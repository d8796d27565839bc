"""Examples of torchshift2 (not part of the wheel): ``python examples/demo.py``. A package so
that the tests and benchmarks/onnx_latency.py can import the demo's model builder."""
