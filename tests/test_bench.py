"""Smoke tests of the benchmark harness (``python -m torchshift2.bench``): files and columns only.

No timing is asserted: the numbers of a --quick run mean nothing.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from torchshift2 import bench

ROOT = Path(__file__).resolve().parent.parent


def _read(out: Path, stem: str):
    with open(out / f"{stem}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(out / f"{stem}.json") as f:
        payload = json.load(f)
    return rows, payload


def test_quick_run_writes_csv_and_json(tmp_path, capsys):
    code = bench.main(["--quick", "--no-compile", "--out", str(tmp_path), "--name", "quick"])
    assert code == 0
    rows, payload = _read(tmp_path, "quick")

    assert list(rows[0].keys()) == list(bench.ROW_FIELDS)
    expected_cases = [c for c in bench.DEFAULT_CASES if c not in ("ref_ssl_compiled",)]
    combos = {(r["shape_name"], r["format"], r["dtype"]) for r in rows}
    # every quick shape, both formats (1D has the (N, L, C) channels-last analogue), both dtypes
    assert combos == {(s, f, d) for s in bench.QUICK_SHAPES
                      for f in ("contiguous", "channels_last") for d in ("float32", "bfloat16")}
    for combo in combos:
        cases = [r["case"] for r in rows if (r["shape_name"], r["format"], r["dtype"]) == combo]
        assert cases == expected_cases
    for r in rows:
        assert float(r["median_ms"]) > 0
        lo, mid, hi = (float(r[k]) for k in ("run_min_ms", "median_ms", "run_max_ms"))
        assert lo * (1 - 1e-5) <= mid <= hi * (1 + 1e-5)
        assert int(r["runs"]) == (2 if r["case"].startswith("dwconv") else 1)
        if r["case"] == "clone":
            assert float(r["ratio_clone"]) == pytest.approx(1.0)
        if r["case"] == "copy":
            assert float(r["ratio_copy"]) == pytest.approx(1.0)
        assert r["backend"] in ("cpp", "triton", "reference")

    machine = payload["machine"]
    for key in ("cpu_model", "threads", "torch_version", "backend", "backend_selected"):
        assert key in machine
    assert payload["config"]["quick"] is True and payload["config"]["compile"] is False
    assert len(payload["rows"]) == len(rows)
    assert set(payload["rows"][0]) == set(bench.ROW_FIELDS)

    table = capsys.readouterr().out
    assert "x clone" in table and "x copy_" in table and "ssl_fwdbwd" in table


def test_cli_records_the_backend_and_scaling(tmp_path):
    """The module entry point, a forced backend, a custom shape and --scaling."""
    env = dict(os.environ, TORCHSHIFT2_BACKEND="reference",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    base = [sys.executable, "-m", "torchshift2.bench", "--quick", "--no-compile",
            "--out", str(tmp_path), "--dtypes", "float32"]
    subprocess.run(base + ["--name", "t", "--shapes", "2x4x6x6", "--formats", "nchw",
                           "--cases", "ssl_fwd,dwconv_fwd"],
                   check=True, env=env, cwd=tmp_path, capture_output=True, timeout=120)
    rows, payload = _read(tmp_path, "t")
    assert [r["case"] for r in rows] == ["clone", "copy", "ssl_fwd", "dwconv_fwd"]
    assert {r["shape"] for r in rows} == {"2x4x6x6"}
    assert {r["backend"] for r in rows} == {"reference"}
    assert payload["machine"]["backend"] == "reference"

    subprocess.run(base + ["--name", "s", "--scaling", "--formats", "contiguous"],
                   check=True, env=env, cwd=tmp_path, capture_output=True, timeout=120)
    with open(tmp_path / "s-scaling.csv", newline="") as f:
        scaling = list(csv.DictReader(f))
    assert list(scaling[0].keys()) == list(bench.SCALING_FIELDS)
    assert {int(r["factor"]) for r in scaling} == {1, 4, 16}
    assert {r["case"] for r in scaling} == {"clone", "copy", "ssl_fwd", "active_fwd"}
    assert "1" in {r["threads"] for r in scaling}
    json.loads((tmp_path / "s-scaling.json").read_text())


def test_bad_arguments_and_missing_matplotlib(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--cases", "nope"])
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--shapes", "7x7"])
    monkeypatch.setattr(bench.importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else object())
    assert bench.main(["--quick", "--plot", "--out", str(tmp_path)]) == 2
    assert "matplotlib" in capsys.readouterr().err


def test_sanity_check_refuses_a_broken_kernel(monkeypatch):
    import torch

    real_shift = bench.shift

    def broken(x, w, padding="zeros", active=False, crop=None):
        return real_shift(x, -w, padding, active, crop)

    monkeypatch.setattr(bench, "shift", broken)
    x = bench.make_input((2, 3, 5, 5), torch.float32, "channels_last", torch.device("cpu"), 0)
    w = bench.make_weight(3, 2, torch.device("cpu"), 0)
    with pytest.raises(bench.SanityError, match="forward"):
        bench.check_against_reference(x, w, "zeros", "test")


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    code = bench.main(["--quick", "--no-compile", "--shapes", "q2d", "--dtypes", "float32",
                       "--out", str(tmp_path), "--name", "p", "--plot"])
    assert code == 0
    assert (tmp_path / "p.png").stat().st_size > 0
