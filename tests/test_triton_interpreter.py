"""Runs tests/triton (the Triton kernels on CPU through TRITON_INTERPRET=1) in its own
process: the interpreter must be switched on before triton is imported, which this process
may already have done."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

triton = pytest.importorskip("triton")


def test_triton_kernels_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", TORCHSHIFT2_BACKEND="triton")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + env.get("PYTHONPATH", "").split(os.pathsep))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests/triton", "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )
    if result.returncode != 0:
        print(result.stdout[-20000:])
        print(result.stderr[-5000:])
    assert result.returncode == 0, f"tests/triton failed (exit {result.returncode}); output above"
