"""The demo (``python examples/demo.py``, ``make demo``) on a reduced schedule.

Runs eagerly (``--no-compile``) with ``--quick`` (8 epochs): about 10 s on one core.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # examples/ is not installed: it is imported from the checkout

from examples import demo  # noqa: E402


def test_models_share_the_architecture():
    dw = demo.build_model("dwconv")
    shift = demo.build_model("shift", sparsity_term=1e-3)
    x = torch.randn(2, 1, 8, 8)
    assert dw(x).shape == shift(x).shape == (2, 10)
    assert demo.spatial_macs(dw) == 32 * 9 * 64 * 2 + 64 * 9 * 16 * 2
    assert demo.spatial_macs(shift) == 0
    # the shift net is the dwconv net minus the depthwise kernels (C*9) plus shifts (C*2)
    channels = 32 + 32 + 64 + 64

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(dw) - count(shift) == channels * (9 - 2)
    assert demo.total_macs(dw) - demo.total_macs(shift) == demo.spatial_macs(dw)


def test_quick_demo_trains_both_nets(tmp_path):
    """Run as a script from another directory, as ``make demo`` and a user do."""
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--quick", "--no-compile",
         "--no-progress", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads((out / "results.json").read_text())
    results = {r["model"]: r for r in payload["results"]}
    assert set(results) == {"dwconv", "shift"}
    for r in results.values():
        assert r["test_accuracy"] >= 0.90, (r["model"], r["test_accuracy"])
        assert r["train_s"] > 0 and r["inference_ms"] > 0
        assert len(r["curve"]) == payload["config"]["epochs"] == 8
    assert results["dwconv"]["spatial_macs"] > 0 and results["shift"]["spatial_macs"] == 0
    assert results["dwconv"]["zero_shift_fraction"] is None
    zero = results["shift"]["zero_shift_fraction"]
    assert 0.0 <= zero <= 1.0
    shifts = torch.tensor(results["shift"]["shifts"])
    assert zero == torch.round(shifts).eq(0).float().mean().item()

    table = (out / "results.md").read_text()
    assert "test acc" in table and "spatial MACs" in table and "zero shifts" in table
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("|")]
    assert rows[2:] == ["dwconv", "shift"]
    assert table.splitlines()[0] in proc.stdout  # the table is printed too
    for name in ("shift_histogram.png", "training_curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    machine = payload["machine"]
    for key in ("cpu_model", "logical_cpus", "threads", "torch", "backend", "timestamp"):
        assert machine[key] not in (None, ""), key
