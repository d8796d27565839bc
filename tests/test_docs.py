"""The documentation builds with ``mkdocs build --strict`` and documents every public name.

Skipped when mkdocs / mkdocs-material / mkdocstrings are not installed (they are in the
``test`` and ``docs`` extras). ``docs/make_figures.py`` runs into a temporary folder, so the
checkout is never modified.
"""

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import torchshift2

ROOT = Path(__file__).resolve().parent.parent
API_MODULES = ("functional", "nn", "convert", "quantized", "backends", "reference")


def _env():
    return dict(os.environ, NO_MKDOCS_2_WARNING="1",
                PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def test_make_figures_writes_every_output(tmp_path):
    pytest.importorskip("matplotlib")
    subprocess.run([sys.executable, str(ROOT / "docs" / "make_figures.py"), "--out", str(tmp_path),
                    "--bench-results", str(tmp_path / "none"), "--demo-output",
                    str(tmp_path / "none")],
                   check=True, cwd=ROOT, env=_env(), capture_output=True, timeout=300)
    for name in ("paddings.png", "active_1d.png", "active_2d.png"):
        assert (tmp_path / "figures" / name).read_bytes()[:4] == b"\x89PNG"
    adjoint = (tmp_path / "generated" / "adjoint.md").read_text()
    assert "[111, 1000, 10000, 0, 0]" in adjoint  # docs/migration.md bug 2: the border adjoint
    assert "No benchmark results yet" in (tmp_path / "generated" / "benchmarks.md").read_text()
    assert "No result file" in (tmp_path / "generated" / "numbers.md").read_text()
    assert "Not run yet" in (tmp_path / "generated" / "demo.md").read_text()


def test_numbers_page_shows_the_newest_result_of_each_configuration(tmp_path):
    """docs/dev/numbers.md: each (shape, layout, dtype) from the newest table file that has
    it, by machine timestamp (not the name), with its machine, the command that produced it
    and its ratios as recorded."""
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("make_figures", ROOT / "docs" / "make_figures.py")
    make_figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_figures)
    results = tmp_path / "results"
    results.mkdir()
    for name, stamp, ratio, shapes in (("bench-b.json", "2026-01-01T00:00:00", 0.5,
                                        ("1x2x3x4", "1x2x7")),
                                       ("bench-a.json", "2026-02-01T00:00:00", 0.25,
                                        ("1x2x3x4",))):
        rows = [dict(shape_name=shape, shape=shape, format="contiguous", dtype="float32",
                     case=case, median_ms=2.0 * r, ratio_clone=r)
                for shape in shapes for case, r in (("clone", 1.0), ("ssl_fwd", ratio))]
        payload = dict(machine=dict(device="cpu", cpu_model="CPU " + name, timestamp=stamp),
                       config=dict(mode="table", argv=["--out", name]), rows=rows)
        (results / name).write_text(json.dumps(payload))
    text = make_figures.generated_numbers(tmp_path / "out", results).read_text()
    assert "Run A: From" in text and "CPU bench-a.json" in text and "CPU bench-b.json" in text
    assert "`python benchmarks/bench.py --out bench-a.json`" in text
    # the shape both measured: the newer run's ratio; the other: the older run's
    assert "| `1x2x3x4` | contiguous | float32 | uniform1.5 | A | 2 | 0.25x |" in text
    assert "| `1x2x7` | contiguous | float32 | uniform1.5 | B | 2 | 0.5x |" in text
    assert "0.5x" not in text.split("`1x2x3x4`")[1].split("\n")[0]
    assert text.count("No result file") == 2  # no scaling file, no GPU file


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module)
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                           "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_every_page_is_built(site):
    for page in (ROOT / "docs").rglob("*.md"):
        relative = page.relative_to(ROOT / "docs")
        if relative.parts[0] == "generated":
            continue
        if relative.stem == "index":
            html = site / relative.parent / "index.html"
        else:
            html = site / relative.with_suffix("") / "index.html"
        assert html.exists(), f"{relative} was not built"


def test_every_public_name_is_documented(site):
    ids = set()
    for html in site.rglob("*.html"):
        ids.update(re.findall(r'id="(torchshift2[\w.]*)"', html.read_text()))
    missing = []
    for name in API_MODULES:
        module = importlib.import_module(f"torchshift2.{name}")
        for member in getattr(module, "__all__", []):
            if f"torchshift2.{name}.{member}" not in ids:
                missing.append(f"torchshift2.{name}.{member}")
    overview = (ROOT / "docs" / "api" / "index.md").read_text()
    for member in torchshift2.__all__:
        documented = (
            f"torchshift2.{member}" in ids
            or any(f"torchshift2.{m}.{member}" in ids for m in API_MODULES)
            or f"`{member}`" in overview
        )
        if not documented:
            missing.append(f"torchshift2.{member}")
    assert not missing, f"not in the API docs (docs/api/*.md): {missing}"
