"""What can be checked about the CUDA kernels without a GPU, each in a process without
TRITON_INTERPRET (the interpreter never lowers a kernel):

* every kernel variant lowers to sm_90 machine code (tests/triton/aot_compile.py);
* the static preconditions of the performance targets hold in that machine code
  (benchmarks/tools/sass_report.py): launches per call, no spills, at most 128 registers,
  128-bit global loads and stores in the planar and channels-last float32 kernels;
* the launch functions trace with symbolic shapes through ``torch.library.wrap_triton``
  (tests/triton/trace_launches.py), as a ``triton_op`` body under ``torch.compile``.
"""

import json
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


needs_ptxas = pytest.mark.skipif(not _ptxas_available(), reason="no ptxas to compile CUDA kernels")


def _run(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + env.get("PYTHONPATH", "").split(os.pathsep))
    result = subprocess.run([sys.executable, *map(str, args)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result.stdout


@needs_ptxas
def test_kernels_compile_for_sm90():
    assert "compiled" in _run(HERE / "aot_compile.py", "90")


@needs_ptxas
def test_sass_preconditions_hold(tmp_path):
    """One launch per forward and per grad_input-only backward, two with grad_weight; no
    kernel spills or uses more than 128 registers; the float32 planar and channels-last
    kernels move data with 128-bit loads and stores."""
    report = tmp_path / "sass.json"
    _run(ROOT / "benchmarks" / "tools" / "sass_report.py", "--quick", "--json", report)
    cases = json.loads(report.read_text())
    assert len(cases) == 2
    expected = {"forward": 1, "backward": 2, "backward gi": 1, "backward gw": 2, "shift_": 1}
    for case in cases:
        calls = case["calls"]
        counts = {call: len(launches) for call, launches in calls.items()}
        assert {k: counts[k] for k in counts if k in expected} == {
            k: expected[k] for k in counts if k in expected}, case["case"]
        for call, launches in calls.items():
            for item in launches:
                where = f"{case['case']} {call} {item['kernel']}"
                assert item["spill"] == 0 and item["local_ops"] == 0, where
                assert item["regs"] <= 128, (where, item["regs"])
        if "float32" not in case["case"]:
            continue
        for call in ("forward", "backward", "backward gi"):
            main = calls[call][0]
            assert main["access"].get("LDG.128", 0) > 0, (case["case"], call, main["access"])
            assert main["access"].get("STG.128", 0) > 0, (case["case"], call, main["access"])


def test_launchers_trace_through_wrap_triton():
    lines = _run(HERE / "trace_launches.py").strip().splitlines()
    traced = {tuple(line.split()[:2]): line.split()[2:] for line in lines}
    for layout, prefix in (("contiguous", "planar"), ("channels_last", "cl")):
        assert traced["forward", layout] == [f"{prefix}_forward", "symbolic-grid"]
        assert traced["backward", layout] == [f"{prefix}_backward", "reduce_partials",
                                              "symbolic-grid"]
        assert traced["backward_input", layout] == [f"{prefix}_backward", "symbolic-grid"]
        assert traced["shift_", layout] == [f"{prefix}_inplace", "symbolic-grid"]


def test_compile_sees_the_kernels_of_the_ops_on_cuda():
    """Issue 20: under torch.compile the public ops are triton_ops whose CUDA graphs hold the
    kernel launches themselves (what Inductor compiles and CUDA graphs capture), one per
    forward / grad_input-only backward / shift_, two with grad_weight; never the opaque
    kernel ops of the other backends. Traced by AOTAutograd on fake CUDA tensors."""
    lines = [line.split() for line in _run(HERE / "trace_launches.py").splitlines()
             if line.startswith("op:")]
    calls = {(line[0][3:], line[1]): line[2:] for line in lines}
    assert len(calls) == 8
    for layout, prefix in (("contiguous", "planar"), ("channels_last", "cl")):
        kernels = {op: [c[7:] for c in targets if c.startswith("kernel:")]
                   for (op, fmt), targets in calls.items() if fmt == layout}
        assert kernels == {"shift": [f"{prefix}_forward"],
                           "shift_backward": [f"{prefix}_backward", "reduce_partials"],
                           "shift_backward_input": [f"{prefix}_backward"],
                           "shift_": [f"{prefix}_inplace"]}, layout
        for targets in calls.values():
            assert not any("torchshift2" in target for target in targets), targets
