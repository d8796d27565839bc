"""Smoke tests of the benchmark harness (``python benchmarks/bench.py``, package
``benchmarks/harness``): files, columns, distributions and the fuzz draw only.

No timing is asserted: the numbers of a --quick run mean nothing.
"""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # benchmarks/ is not installed: it is imported from the checkout

from benchmarks.harness import cases, check, cli, fuzz, measure, rows  # noqa: E402
from benchmarks.harness.machine import machine_info, machine_line  # noqa: E402

# One thread: on a loaded 2-core machine a two-thread parallel region waits milliseconds for
# a descheduled thread, which turns a smoke run of microsecond calls into minutes.
QUICK = ["--quick", "--no-compile", "--threads", "1"]
RATIOS = ("ratio_clone", "ratio_copy", "ratio_dwconv", "ratio_dwconv_best", "ratio_nchw")


@pytest.fixture(autouse=True)
def _restore_threads():
    """``--threads`` sets torch's thread count for the whole process."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _read(out: Path, stem: str):
    with open(out / f"{stem}.csv", newline="") as f:
        found = list(csv.DictReader(f))
    with open(out / f"{stem}.json") as f:
        payload = json.load(f)
    return found, payload


def _ratio(row: dict, key: str) -> float:
    return float(row[key]) if row[key] not in ("", None) else math.nan


def test_quick_run_writes_csv_and_json(tmp_path, capsys):
    code = cli.main(QUICK + ["--shapes", "q1d,q2d", "--out", str(tmp_path), "--name", "quick"])
    assert code == 0
    found, payload = _read(tmp_path, "quick")

    assert list(found[0].keys()) == list(rows.ROW_FIELDS)
    combos = {(r["shape_name"], r["format"], r["dtype"]) for r in found}
    # both quick shapes, both formats (1D has the (N, L, C) channels-last analogue), both dtypes
    assert combos == {(s, f, d) for s in ("q1d", "q2d") for f in ("contiguous", "channels_last")
                      for d in ("float32", "bfloat16")}
    expected = [c for c in cases.DEFAULT_CASES if c != "ref_ssl_compiled"]
    for combo in combos:
        group = [r for r in found if (r["shape_name"], r["format"], r["dtype"]) == combo]
        assert list(dict.fromkeys(r["case"] for r in group)) == expected
        for case in ("ssl_fwd", "active_fwd", "ssl_fwdbwd", "active_fwdbwd", "ref_ssl_fwd"):
            # every distribution of a case, next to each other
            assert [r["distribution"] for r in group if r["case"] == case] == \
                list(cases.DISTRIBUTIONS)
        assert {r["distribution"] for r in group if r["case"] in cases.WEIGHTLESS_CASES} == \
            {"none"}
        assert [r["distribution"] for r in group if r["case"] == "ssl_inplace_sparse"] == \
            ["sparse"]
    for r in found:
        assert float(r["median_ms"]) > 0
        lo, mid, hi = (float(r[k]) for k in ("run_min_ms", "median_ms", "run_max_ms"))
        assert lo * (1 - 1e-5) <= mid <= hi * (1 + 1e-5)
        assert int(r["runs"]) == (2 if r["case"].startswith("dwconv") else 1)
        assert r["backend"] in ("cpp", "triton", "reference")
        for key in ("ratio_clone", "ratio_copy", "ratio_dwconv", "ratio_dwconv_best"):
            assert _ratio(r, key) > 0, (r["case"], key)
        assert r["dwconv_best_format"] in ("contiguous", "channels_last")
        # the same case's NCHW time is the denominator of every channels-last row
        assert (_ratio(r, "ratio_nchw") > 0) == (r["format"] == "channels_last")
        if r["case"] == "clone":
            assert float(r["ratio_clone"]) == pytest.approx(1.0)
        if r["case"] == "copy":
            assert float(r["ratio_copy"]) == pytest.approx(1.0)

    machine = payload["machine"]
    for key in ("cpu_model", "threads", "torch_version", "backend", "backend_selected",
                "git_commit", "memory_gib"):
        assert key in machine
    config = payload["config"]
    assert config["quick"] is True and config["compile"] is False
    assert config["distributions"] == list(cases.DISTRIBUTIONS)
    assert len(payload["rows"]) == len(found)
    assert set(payload["rows"][0]) == set(rows.ROW_FIELDS)
    # strict JSON: a ratio without a denominator is null, not NaN
    assert all(r["ratio_nchw"] is None for r in payload["rows"] if r["format"] == "contiguous")
    assert {e["case"] for e in payload["summary"]} >= {"ssl_fwd", "ssl_fwdbwd"}

    table = capsys.readouterr().out
    assert "x clone" in table and "x copy_" in table and "x dw best" in table
    assert "x dw same" in table and "x NCHW" in table and "ssl_fwdbwd" in table
    for dist in cases.DISTRIBUTIONS:
        assert f"{dist} ms" in table  # side by side
    assert "worst dist" in table and "Worst ratio of each kind" in table


def test_quick_fuzz_run(tmp_path, capsys):
    code = cli.main(QUICK + ["--fuzz", "3", "--seed", "5", "--out", str(tmp_path),
                             "--name", "f"])
    assert code == 0
    found, payload = _read(tmp_path, "f-fuzz")
    drawn = payload["fuzz_cases"]
    assert [c["name"] for c in drawn] == ["fuzz00", "fuzz01", "fuzz02"]
    assert {r["shape_name"] for r in found} == {c["name"] for c in drawn}
    for c in drawn:
        group = [r for r in found if r["shape_name"] == c["name"]]
        assert [r["case"] for r in group] == list(cases.FUZZ_CASES)
        assert {r["format"] for r in group} == {c["format"]}
        assert {r["distribution"] for r in group} == {c["distribution"], "none"}
    assert payload["config"]["seed"] == 5 and payload["config"]["fuzz"] == 3
    summary = payload["summary"]
    assert summary and {e["ratio"] for e in summary} <= set(RATIOS)
    for entry in summary:  # the worst is one of the rows, and named
        assert entry["shape_name"] in {c["name"] for c in drawn}
    out = capsys.readouterr().out
    assert "Worst ratio of each kind over the fuzz cases" in out


def test_fuzz_draw_is_seeded_and_capped():
    kw = dict(layouts=cases.LAYOUTS, dtypes=[torch.float32, torch.bfloat16],
              distributions=cases.DISTRIBUTIONS)
    a = fuzz.draw_cases(40, 3, **kw)
    assert a == fuzz.draw_cases(40, 3, **kw)
    assert a != fuzz.draw_cases(40, 4, **kw)
    for case in a:
        n, c, *spatial = case.shape
        assert 1 <= n <= 64 and 1 <= c <= 256 and 1 <= len(spatial) <= 3
        assert all(fuzz.MIN_SIZE <= s <= fuzz.MAX_SIZE for s in spatial)
        assert math.prod(case.shape) * case.dtype.itemsize <= fuzz.DEFAULT_MAX_MIB * 2**20
    assert {case.layout for case in a} == set(cases.LAYOUTS)
    assert {case.distribution for case in a} == set(cases.DISTRIBUTIONS)
    assert fuzz.cap_shape((64, 256, 112, 112), 4, 2**20) == (1, 16, 112, 112)


def test_distributions():
    w = cases.make_weight(200, 2, torch.device("cpu"), 0, "sparse")
    moving = torch.round(w).ne(0).any(1)
    assert int(moving.sum()) == 20  # 10% of the channels
    assert set(w[moving].abs().unique().tolist()) <= {1.0, 2.0, 3.0}
    assert w[moving].lt(0).any() and w[moving].gt(0).any()
    wide = cases.make_weight(200, 3, torch.device("cpu"), 0, "wide")
    assert wide.abs().max() <= 4 and wide.abs().max() > 3
    # uniform1.5 draws what the harness drew before distributions existed
    gen = torch.Generator(device="cpu").manual_seed(10_000 + 2)
    old = torch.empty(7, 2).uniform_(-1.5, 1.5, generator=gen)
    assert torch.equal(cases.make_weight(7, 2, torch.device("cpu"), 2), old)
    assert cases.canonical_distribution("uniform0.5") == "uniform0.5"
    with pytest.raises(ValueError, match="--distributions: unknown 'gauss'"):
        cases.canonical_distribution("gauss")


def test_layouts():
    shape = (2, 3, 5, 6)
    cl = cases.make_input(shape, torch.float32, "channels_last", torch.device("cpu"), 0)
    assert cl.shape == shape and cl.is_contiguous(memory_format=torch.channels_last)
    strided = cases.make_input(shape, torch.float32, "strided", torch.device("cpu"), 0)
    assert strided.shape == shape and not strided.is_contiguous()
    assert not strided.is_contiguous(memory_format=torch.channels_last)
    plan = measure.plan_layouts(["channels_last"], list(cases.FUZZ_CASES))
    # channels-last rows need our NCHW time and the conv in both layouts
    assert plan["contiguous"] == ["ssl_fwd", "active_fwd", "ssl_fwdbwd", "active_fwdbwd",
                                  "dwconv_fwd", "dwconv_fwdbwd"]
    assert plan["channels_last"] == list(cases.FUZZ_CASES)


def test_cli_records_the_backend_and_scaling(tmp_path):
    """The script entry point, a forced backend, a custom shape and --scaling."""
    env = dict(os.environ, TORCHSHIFT2_BACKEND="reference",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    base = [sys.executable, str(ROOT / "benchmarks" / "bench.py"), *QUICK,
            "--out", str(tmp_path), "--dtypes", "float32"]
    subprocess.run(base + ["--name", "t", "--shapes", "2x4x6x6", "--formats", "nchw",
                           "--cases", "ssl_fwd,dwconv_fwd", "--distributions", "sparse"],
                   check=True, env=env, cwd=tmp_path, capture_output=True, timeout=120)
    found, payload = _read(tmp_path, "t")
    assert [r["case"] for r in found] == ["clone", "copy", "ssl_fwd", "dwconv_fwd"]
    assert [r["distribution"] for r in found] == ["none", "none", "sparse", "none"]
    assert {r["shape"] for r in found} == {"2x4x6x6"}
    assert {r["backend"] for r in found} == {"reference"}
    assert payload["machine"]["backend"] == "reference"

    subprocess.run(base + ["--name", "s", "--scaling", "--formats", "contiguous",
                           "--distributions", "uniform1.5"],
                   check=True, env=env, cwd=tmp_path, capture_output=True, timeout=120)
    with open(tmp_path / "s-scaling.csv", newline="") as f:
        scaling = list(csv.DictReader(f))
    assert list(scaling[0].keys()) == list(cli.SCALING_FIELDS)
    assert {int(r["factor"]) for r in scaling} == {1, 4, 16}
    assert {r["case"] for r in scaling} == {"clone", "copy", "ssl_fwd", "active_fwd"}
    assert {r["threads"] for r in scaling} == {"1"}
    json.loads((tmp_path / "s-scaling.json").read_text())


def test_bad_arguments_and_missing_matplotlib(tmp_path, monkeypatch, capsys):
    for argv in (["--cases", "nope"], ["--shapes", "7x7"], ["--distributions", "gauss"],
                 ["--fuzz", "0"], ["--fuzz", "2", "--shapes", "q2d"], ["--formats", "nhcw"]):
        with pytest.raises(SystemExit):
            cli.main(["--quick"] + argv)
    assert "--distributions: unknown 'gauss'" in capsys.readouterr().err
    monkeypatch.setattr(cli.importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else object())
    assert cli.main(["--quick", "--plot", "--out", str(tmp_path)]) == 2
    assert "matplotlib" in capsys.readouterr().err


def test_sanity_check_refuses_a_broken_kernel(monkeypatch):
    real_shift = check.shift

    def broken(x, w, padding="zeros", active=False, crop=None):
        return real_shift(x, -w, padding, active, crop)

    monkeypatch.setattr(check, "shift", broken)
    x = cases.make_input((2, 3, 5, 5), torch.float32, "channels_last", torch.device("cpu"), 0)
    w = cases.make_weight(3, 2, torch.device("cpu"), 0)
    with pytest.raises(check.SanityError, match="forward"):
        check.check_against_reference(x, w, "zeros", "test")


def test_machine_info():
    info = machine_info("cpu")
    assert info["cpu_model"] and info["logical_cpus"] >= 1 and info["threads"] >= 1
    assert info["backend"] in ("cpp", "triton", "reference")
    line = machine_line(info)
    assert line.startswith("Machine: ") and info["torch_version"] in line


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    code = cli.main(QUICK + ["--shapes", "q2d", "--dtypes", "float32", "--out", str(tmp_path),
                             "--name", "p", "--plot"])
    assert code == 0
    assert (tmp_path / "p.png").stat().st_size > 0
