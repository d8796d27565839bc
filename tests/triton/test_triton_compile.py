"""The kernels lower to CUDA machine code (sm_90) — checked without a GPU.

The interpreter never lowers the kernels, so type or layout errors that only the compiler
sees would slip through; tests/triton/aot_compile.py compiles a representative set of
launches ahead of time in a process without TRITON_INTERPRET.
"""

import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def _ptxas_available():
    import triton

    bundled = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return bundled.exists() or os.environ.get("TRITON_PTXAS_PATH")


@pytest.mark.skipif(not _ptxas_available(), reason="no ptxas to compile CUDA kernels")
def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + env.get("PYTHONPATH", "").split(os.pathsep))
    result = subprocess.run([sys.executable, str(HERE / "aot_compile.py"), "90"], env=env,
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "compiled" in result.stdout
