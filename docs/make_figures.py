"""Generate the documentation's figures and generated pages (``make docs`` runs this first).

Writes, relative to ``--out`` (default: this ``docs/`` folder):

- ``figures/paddings.png``: one image shifted under each of the five paddings, with the
  padded canvas the shift reads from;
- ``figures/active_1d.png``: SSL vs. Active Shift on a 1D signal, and one output element as
  a function of the shift (SSL steps, active is continuous);
- ``figures/active_2d.png``: bilinear interpolation of a 2D image at fractional shifts;
- ``generated/adjoint.md``: grad_input of a 1D shift for every padding, computed by the
  library (the exact adjoint of SPEC §4);
- ``generated/benchmarks.md`` (+ ``figures/bench-*.png``): tables from the JSON files of
  ``python benchmarks/bench.py`` in ``benchmarks/results/`` (a line per weight distribution,
  and the worst ratios where the file has them), or a note that there are none;
- ``generated/demo.md`` (+ ``figures/demo_*.png``): the results of ``make demo`` when
  ``demo-output/`` exists, or a note that it has not been run;
- ``generated/numbers.md``: the current numbers (``docs/dev/numbers.md``): ratios to
  ``x.clone()`` per shape, layout, dtype and distribution, each from the newest CPU / GPU
  table file of ``benchmarks/results/`` that measured it, the newest CPU thread-scaling file
  and the newest SASS report summarised, each with its machine and the command that
  produced it.

Every number and every picture is computed by torchshift2 itself (with the pure-torch
reference backend, so no C++ compiler is needed), and each figure checks what it shows
against an independent computation (``numpy.pad``, the SPEC formula) before drawing it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import torchshift2 as ts  # noqa: E402
from torchshift2.nn import extend_input  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

NUMPY_MODE = {"zeros": "constant", "border": "edge", "periodic": "wrap", "reflect": "reflect",
              "symmetric": "symmetric"}
DPI = 100


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Fixed metadata so that regenerating unchanged figures gives identical files.
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return path


def sample_image(height: int = 10, width: int = 13) -> torch.Tensor:
    """An asymmetric test picture: a diagonal gradient with a bright 'F' near the top left."""
    rows = torch.arange(height, dtype=torch.float64)[:, None]
    cols = torch.arange(width, dtype=torch.float64)[None, :]
    image = 0.15 + 0.35 * (rows / (height - 1)) * (cols / (width - 1))
    image[1:8, 2] = 1.0           # stem of the F
    image[1, 2:8] = 1.0           # top bar
    image[4, 2:6] = 0.85          # middle bar
    image[height - 1, width - 1] = 0.65  # marks the bottom-right corner
    return image


def figure_paddings(out: Path) -> Path:
    image = sample_image()
    height, width = image.shape
    shift = (4.0, 6.0)  # rows down, columns right (positive = towards higher indices)
    x = image.reshape(1, 1, height, width)
    weight = torch.tensor([shift], dtype=torch.float64)
    fig, axes = plt.subplots(2, 6, figsize=(15, 4.6), layout="constrained",
                             gridspec_kw=dict(height_ratios=[2.2, 1]))
    axes[0, 0].imshow(image, cmap="magma", vmin=0, vmax=1)
    axes[0, 0].set_title(f"input {height}x{width}")
    axes[1, 0].axis("off")
    axes[1, 0].text(0.0, 0.5, f"shift = {shift}\n(rows, cols)\n\ntop: the padded canvas\n"
                    "(input framed in white),\ndashed: the window the\noutput reads",
                    fontsize=9, va="center")
    for column, padding in enumerate(ts.PADDINGS, start=1):
        with ts.use_backend("reference"):
            output = ts.shift(x, weight, padding=padding)[0, 0]
        canvas = extend_input(x, [height, height, width, width], padding)[0, 0]
        expected = np.pad(image.numpy(), ((height, height), (width, width)),
                          mode=NUMPY_MODE[padding])
        assert np.array_equal(canvas.numpy(), expected), padding
        top, left = height - int(shift[0]), width - int(shift[1])
        window = canvas[top:top + height, left:left + width]
        assert torch.equal(output, window), padding  # SPEC §3: out[o] = V(o - s)
        axis = axes[0, column]
        axis.imshow(canvas, cmap="magma", vmin=0, vmax=1)
        axis.add_patch(Rectangle((width - 0.5, height - 0.5), width, height, fill=False,
                                 ec="white", lw=1.5))
        axis.add_patch(Rectangle((left - 0.5, top - 0.5), width, height, fill=False,
                                 ec="cyan", lw=1.5, ls="--"))
        axis.set_title(f'"{padding}"  (np.pad "{NUMPY_MODE[padding]}")', fontsize=10)
        axes[1, column].imshow(output, cmap="magma", vmin=0, vmax=1)
        axes[1, column].set_title("output", fontsize=9)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    fig.suptitle("ts.shift(x, weight=[[4, 6]], padding=...): the same shift under the five "
                 "paddings")
    return _save(fig, out / "figures" / "paddings.png")


def _original_active(signal: np.ndarray, w: float, i: int) -> float:
    """The original torchshifts active forward as measured (docs/migration.md, fixed bug 1):
    (1-d) * in[i-k] + d * in[i-k+1], k = floor(w), d = w - k, zeros outside."""
    k = int(np.floor(w))
    d = w - k

    def value(j):
        return signal[j] if 0 <= j < len(signal) else 0.0

    return (1 - d) * value(i - k) + d * value(i - k + 1)


def figure_active_1d(out: Path) -> Path:
    signal = torch.tensor([0.0, 0.2, 1.0, 0.4, 0.1, 0.8, 0.5, 0.0, 0.3, 0.9, 0.6, 0.2],
                          dtype=torch.float64)
    length = len(signal)
    x = signal.reshape(1, 1, length)
    w = 1.3
    with ts.use_backend("reference"):
        ssl = ts.shift(x, torch.tensor([[w]], dtype=torch.float64))[0, 0]
        active = ts.shift(x, torch.tensor([[w]], dtype=torch.float64), active=True)[0, 0]
    padded = torch.cat([torch.zeros(3, dtype=torch.float64), signal])  # V(k) for k >= -3
    for i in range(length):  # SPEC §3 by hand
        assert abs(float(ssl[i]) - float(padded[3 + i - 1])) < 1e-12
        assert abs(float(active[i]) - (0.7 * float(padded[3 + i - 1])
                                       + 0.3 * float(padded[3 + i - 2]))) < 1e-12

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.2))
    positions = np.arange(length)
    left.plot(positions, signal.numpy(), "o-", color="0.6", label="input")
    left.plot(positions, ssl.numpy(), "s--", color="tab:blue",
              label=f"SSL, w = {w}: shift by round(w) = 1")
    left.plot(positions, active.numpy(), "^-", color="tab:orange",
              label=f"active, w = {w}: 0.7·x[i-1] + 0.3·x[i-2]")
    left.set_xlabel("position i")
    left.set_title("shift(x, [[1.3]]): SSL rounds, Active Shift interpolates")
    left.legend(fontsize=8, loc="upper left")
    left.grid(alpha=0.3)

    position = 6
    weights = np.linspace(-0.75, 3.75, 721)
    batch = torch.tensor(weights, dtype=torch.float64).reshape(-1, 1)
    many = x.expand(1, len(weights), length)
    with ts.use_backend("reference"):
        ssl_curve = ts.shift(many, batch)[0, :, position].numpy()
        active_curve = ts.shift(many, batch, active=True)[0, :, position].numpy()
    original = [_original_active(signal.numpy(), float(v), position) for v in weights]
    right.plot(weights, active_curve, color="tab:orange", lw=2, label="active (SPEC §3)")
    right.plot(weights, ssl_curve, color="tab:blue", lw=1.5, label="SSL (round half to even)")
    right.plot(weights, original, ":", color="tab:red", lw=1.5,
               label="original torchshifts active (migration: bug 1)")
    integers = np.arange(0, 4)
    right.plot(integers, [float(signal[position - k]) for k in integers], "ko", ms=4,
               label=f"x[{position} - w] at integer w")
    right.set_xlabel("shift weight w")
    right.set_title(f"output[{position}] as a function of w")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out / "figures" / "active_1d.png")


def figure_active_2d(out: Path) -> Path:
    image = torch.zeros(7, 7, dtype=torch.float64)
    image[2, 2] = 1.0
    image[2:5, 4] = 0.6
    shifts = [(0.0, 0.0), (0.0, 0.5), (0.5, 0.5), (1.25, 0.75), (2.0, 1.0)]
    x = image.reshape(1, 1, 7, 7)
    fig, axes = plt.subplots(1, len(shifts), figsize=(3 * len(shifts), 3.4), layout="constrained")
    for axis, shift in zip(axes, shifts):
        weight = torch.tensor([shift], dtype=torch.float64)
        with ts.use_backend("reference"):
            output = ts.shift(x, weight, active=True)[0, 0]
        assert abs(float(output.sum()) - float(image.sum())) < 1e-12  # nothing leaves
        axis.imshow(output, cmap="viridis", vmin=0, vmax=1)
        for (r, c), value in np.ndenumerate(output.numpy()):
            if value > 1e-9:
                axis.text(c, r, f"{value:.2f}".rstrip("0").rstrip("."), ha="center",
                          va="center", fontsize=7, color="w" if value < 0.5 else "k")
        axis.set_title(f"active, w = {shift}", fontsize=10)
        axis.set_xticks([])
        axis.set_yticks([])
    fig.suptitle("Bilinear interpolation (active=True): fractional shifts spread each pixel "
                 "over its 4 neighbours")
    return _save(fig, out / "figures" / "active_2d.png")


def generated_adjoint(out: Path) -> Path:
    grad_output = torch.tensor([[[1.0, 10.0, 100.0, 1000.0, 10000.0]]], dtype=torch.float64)
    lines = [
        "<!-- generated by docs/make_figures.py: do not edit -->",
        "| padding | forward: output reads input at | grad_input = adjoint applied to "
        "g = [1, 10, 100, 1000, 10000] |",
        "|---|---|---|",
    ]
    for padding in ts.PADDINGS:
        x = torch.zeros(1, 1, 5, dtype=torch.float64, requires_grad=True)
        weight = torch.tensor([[2.0]], dtype=torch.float64)
        with ts.use_backend("reference"):
            (grad,) = torch.autograd.grad(ts.shift(x, weight, padding=padding), x, grad_output)
            marker = torch.arange(1.0, 6.0, dtype=torch.float64).reshape(1, 1, 5)
            reads = ts.shift(marker, weight, padding=padding)[0, 0]
        sources = ", ".join("0" if v == 0 else f"x[{int(v) - 1}]" for v in reads.tolist())
        values = ", ".join(f"{v:g}" for v in grad[0, 0].tolist())
        lines.append(f"| `{padding}` | [{sources}] | [{values}] |")
    path = out / "generated" / "adjoint.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


#: Result files written before the harness had weight distributions drew every weight
#: uniformly in [-1.5, 1.5]; weightless cases (floors, conv) say "none".
OLD_DISTRIBUTION = "uniform1.5"
NO_DISTRIBUTION = "none"


def _bench_header(path: Path, payload: dict) -> list:
    machine, config = payload.get("machine", {}), payload.get("config", {})
    lines = [f"### `{path.parent.name + '/' if path.parent.name != 'results' else ''}{path.name}`",
             ""]
    lines.append(
        f"Machine: {machine.get('cpu_model', '?')} ({machine.get('logical_cpus', '?')} logical "
        f"CPUs, {machine.get('threads', '?')} threads), {machine.get('gpu_model') or 'no GPU'}; "
        f"torch {machine.get('torch_version', '?')}; backend `{machine.get('backend', '?')}` "
        f"(selected `{machine.get('backend_selected', '?')}`); commit "
        f"`{machine.get('git_commit', '?')}`; {machine.get('timestamp', '?')}."
    )
    if config.get("quick"):
        lines += ["", "!!! warning \"--quick run\"", "    A smoke-test run: its numbers mean "
                  "nothing."]
    return lines + [""]


def _bench_lines(rows: list) -> list:
    """``(shape_name, shape, format, dtype, distribution)`` of each table line: one per
    weight distribution of a row group, the weightless cases shown on each of them."""
    keys = []
    for row in rows:
        dist = row.get("distribution", OLD_DISTRIBUTION)
        group = (row["shape_name"], row["shape"], row["format"], row["dtype"])
        if dist != NO_DISTRIBUTION and group + (dist,) not in keys:
            keys.append(group + (dist,))
    groups = {key[:4] for key in keys}
    for row in rows:  # a group that ran weightless cases only
        group = (row["shape_name"], row["shape"], row["format"], row["dtype"])
        if group not in groups:
            groups.add(group)
            keys.append(group + (NO_DISTRIBUTION,))
    return keys


def _bench_table(rows: list) -> list:
    cases = list(dict.fromkeys(row["case"] for row in rows))
    lines = ["Median ms (ratio to `x.clone()`):", "",
             "| shape | format | dtype | distribution | "
             + " | ".join(f"`{c}`" for c in cases) + " |",
             "|---|---|---|---|" + "---:|" * len(cases)]
    for key in _bench_lines(rows):
        cells = []
        for case in cases:
            match = [r for r in rows if (r["shape_name"], r["shape"], r["format"], r["dtype"])
                     == key[:4] and r["case"] == case
                     and r.get("distribution", OLD_DISTRIBUTION) in (key[4], NO_DISTRIBUTION)]
            cells.append(f"{float(match[0]['median_ms']):.3g} "
                         f"({float(match[0]['ratio_clone']):.3g}x)" if match else "")
        name = f"`{key[1]}`" if key[0] == key[1] else f"{key[0]} `{key[1]}`"
        lines.append(f"| {name} | {key[2]} | {key[3]} | {key[4]} | " + " | ".join(cells) + " |")
    return lines


#: The harness's ratios in the order and with the names of its printed table.
SUMMARY_RATIOS = (("ratio_clone", "x clone"), ("ratio_copy", "x copy_"),
                  ("ratio_dwconv_best", "x dw best"), ("ratio_dwconv", "x dw same"),
                  ("ratio_nchw", "x NCHW"))


def _bench_summary(summary: list) -> list:
    """The harness's worst ratio of each kind per layout and case, with the row that
    produced it."""
    lines = ["", "Worst ratio of each kind (the row that produced it):", "",
             "| format | case | " + " | ".join(h for _, h in SUMMARY_RATIOS) + " |",
             "|---|---|" + "---|" * len(SUMMARY_RATIOS)]
    keys = list(dict.fromkeys((e["format"], e["case"]) for e in summary))
    for fmt, case in keys:
        cells = {e["ratio"]: f"{e['worst']:.3g} ({e['shape_name']}, {e['dtype']}, "
                 f"{e['distribution']})"
                 for e in summary if (e["format"], e["case"]) == (fmt, case)}
        lines.append(f"| {fmt} | `{case}` | "
                     + " | ".join(cells.get(r, "") for r, _ in SUMMARY_RATIOS) + " |")
    return lines


def _bench_plain(rows: list) -> list:
    """Scaling or another layout: the rows as they are, minus per-run constants."""
    constant = {"cpu_model", "gpu_model", "torch_version", "backend_selected", "device", "note"}
    fields = [k for k in (rows[0] if rows else {}) if k not in constant]
    lines = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    for row in rows:
        lines.append("| " + " | ".join(
            f"{row.get(k):.4g}" if isinstance(row.get(k), float) else str(row.get(k, ""))
            for k in fields) + " |")
    return lines


def _bench_section(path: Path, figures: Path) -> list:
    payload = json.loads(path.read_text())
    rows = payload["rows"]
    lines = _bench_header(path, payload)
    if rows and all(k in rows[0] for k in ("shape_name", "case", "ratio_clone")):
        lines += _bench_table(rows)
        if payload.get("summary"):
            lines += _bench_summary(payload["summary"])
    else:
        lines += _bench_plain(rows)
    notes = payload.get("notes") or []
    if notes:
        lines += ["", "Notes: " + "; ".join(str(n) for n in notes)]
    png = path.with_suffix(".png")
    if png.exists():
        target = figures / f"bench-{path.parent.name}-{png.name}"
        shutil.copyfile(png, target)
        lines += ["", f"![{png.name}](figures/{target.name})"]
    return lines + [""]


def generated_benchmarks(out: Path, results: Path) -> Path:
    lines = ["<!-- generated by docs/make_figures.py from benchmarks/results/: do not edit -->",
             ""]
    # bench-*.json of the harness, also in per-machine subfolders (results/gpu-h100/...)
    files = sorted(results.glob("**/bench*.json")) if results.is_dir() else []
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for stale in figures.glob("bench-*.png"):
        stale.unlink()
    if not files:
        lines += [
            "!!! note \"No benchmark results yet\"",
            "    `benchmarks/results/` holds no result files in this checkout, so there are "
            "no numbers",
            "    to show. Run `make bench` (or `python benchmarks/bench.py --out "
            "benchmarks/results --plot`)",
            "    on a quiet machine, then `make docs`: this section is generated from those "
            "files.",
        ]
    for path in files:
        lines += _bench_section(path, figures)
    target = out / "generated" / "benchmarks.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n")
    return target


#: The numbers page's ratio tables: the op's cases, then the convolution they replace.
NUMBERS_CASES = ("ssl_fwd", "active_fwd", "ssl_fwdbwd", "active_fwdbwd", "ssl_inplace_sparse",
                 "dwconv_fwd", "dwconv_fwdbwd")


def _results_of(results: Path, device: str, mode: str) -> list:
    """``(path, payload)`` of the harness's JSON files for ``device`` and ``mode``."""
    found = []
    for path in sorted(results.glob("**/bench*.json")) if results.is_dir() else []:
        payload = json.loads(path.read_text())
        machine, config = payload.get("machine", {}), payload.get("config", {})
        if machine.get("device") == device and config.get("mode") == mode:
            found.append((path, payload))
    return found


def _stamp(item) -> tuple:
    """When a ``(path, payload)`` result was measured: machine timestamp, then name."""
    return item[1].get("machine", {}).get("timestamp", ""), item[0].name


def _newest(found: list):
    """The file of ``found`` measured last, or None."""
    return max(found, key=_stamp) if found else None


def _numbers_source(path: Path, results: Path, payload: dict, label: str = "") -> list:
    machine, config = payload.get("machine", {}), payload.get("config", {})
    name = path.relative_to(results.parent.parent) if results.parent.parent in path.parents \
        else path
    argv = " ".join(config.get("argv", []))
    line = (f"{label}From `{name}`. Machine: {machine.get('cpu_model', '?')} "
            f"({machine.get('logical_cpus', '?')} logical CPUs, {machine.get('threads', '?')} "
            f"threads), {machine.get('gpu_model') or 'no GPU'}; torch "
            f"{machine.get('torch_version', '?')}; backend `{machine.get('backend', '?')}`; "
            f"commit `{machine.get('git_commit', '?')}`; {machine.get('timestamp', '?')}.")
    return [line, "", f"Produced by `python benchmarks/bench.py {argv}`.", ""]


def _group(row) -> tuple:
    return row["shape_name"], row["shape"], row["format"], row["dtype"]


def _numbers_ratio_tables(found: list, results: Path) -> list:
    """One ratio table over the table files ``found`` of one device: each (shape, layout,
    dtype) from the newest file that measured it (all its distributions), the file named in
    the ``run`` column."""
    ordered = sorted(found, key=_stamp)
    groups, newest = [], {}
    for item in ordered:
        for row in item[1]["rows"]:
            if _group(row) not in groups:
                groups.append(_group(row))
            newest[_group(row)] = item
    used = sorted({id(item): item for item in newest.values()}.values(), key=_stamp,
                  reverse=True)
    labels = {id(item): chr(ord("A") + i) for i, item in enumerate(used)}
    lines = []
    for item in used:
        lines += _numbers_source(item[0], results, item[1], f"Run {labels[id(item)]}: ")
    rows_used = [row for item in used for row in item[1]["rows"]]
    cases = [c for c in NUMBERS_CASES if any(r["case"] == c for r in rows_used)]
    lines += ["Ratio of each case's median time to `x.clone()` of the same tensor in the same "
              "run (the `clone` column: its median in ms); `dwconv_*` is the 3x3 depthwise "
              "convolution in the row's layout. Each line comes from one run (`run`), the "
              "newest that measured its shape, layout and dtype; an empty cell is a case that "
              "run did not time.", "",
              "| shape | format | dtype | distribution | run | `clone` ms | "
              + " | ".join(f"`{c}`" for c in cases) + " |",
              "|---|---|---|---|---|---:|" + "---:|" * len(cases)]
    for group in groups:
        item = newest[group]
        rows = [r for r in item[1]["rows"] if _group(r) == group]
        for key in _bench_lines(rows):
            def find(case):
                return [r for r in rows if r["case"] == case
                        and r.get("distribution", OLD_DISTRIBUTION) in (key[4],
                                                                        NO_DISTRIBUTION)]
            clone = find("clone")
            cells = [f"{float(clone[0]['median_ms']):.3g}" if clone else ""]
            for case in cases:
                match = find(case)
                cells.append(f"{float(match[0]['ratio_clone']):.3g}x" if match else "")
            name = f"`{key[1]}`" if key[0] == key[1] else f"{key[0]} `{key[1]}`"
            lines.append(f"| {name} | {key[2]} | {key[3]} | {key[4]} | {labels[id(item)]} | "
                         + " | ".join(cells) + " |")
    return lines


def _numbers_scaling_table(rows: list) -> list:
    """Per size factor and layout: the speedup of all threads over one, per case."""
    cases = list(dict.fromkeys(r["case"] for r in rows))
    most = max(int(r["threads"]) for r in rows)
    lines = [f"Speedup of {most} threads over 1 (`speedup_vs_1_thread`), and in brackets the "
             f"time per element relative to the 1x size at {most} threads "
             "(`per_element_vs_1x`):", "",
             "| size | shape | format | dtype | " + " | ".join(f"`{c}`" for c in cases) + " |",
             "|---:|---|---|---|" + "---:|" * len(cases)]
    groups = list(dict.fromkeys((r["factor"], r["shape"], r["format"], r["dtype"])
                                for r in rows))
    for group in groups:
        cells = []
        for case in cases:
            match = [r for r in rows if (r["factor"], r["shape"], r["format"], r["dtype"])
                     == group and r["case"] == case and int(r["threads"]) == most]
            cells.append(f"{float(match[0]['speedup_vs_1_thread']):.3g} "
                         f"({float(match[0]['per_element_vs_1x']):.3g})" if match else "")
        lines.append(f"| {group[0]}x | `{group[1]}` | {group[2]} | {group[3]} | "
                     + " | ".join(cells) + " |")
    return lines


SASS_CALLS = ("forward", "backward", "backward gi", "backward gw", "shift_")


def _numbers_sass(path: Path) -> list:
    """The SASS report summarised per case: launches per call, the most registers of any
    kernel, spilled bytes, and the widest global load and store of the first kernel."""
    cases, case, call = [], None, None
    header = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if raw.startswith("# SASS report"):
            header = raw[2:]
        elif raw.startswith("== "):
            case = {"name": raw[3:], "calls": {}, "regs": 0, "spill": 0}
            cases.append(case)
        elif case is not None and raw.startswith("  ") and not raw.startswith("    ") \
                and ":" in line:
            call = line.split(":")[0]
            case["calls"][call] = []
        elif case is not None and call is not None and " regs " in line:
            fields = line.split()
            regs = int(fields[fields.index("regs") + 1])
            spill = int(fields[fields.index("spill") + 1])
            case["regs"] = max(case["regs"], regs)
            case["spill"] += spill
            case["calls"][call].append(
                (fields[0], [f for f in fields if f.startswith(("LDG.", "STG."))]))
    lines = [header + ".", "",
             "| case | launches: " + " / ".join(SASS_CALLS) + " | most registers | spilled "
             "bytes | forward kernel's global accesses |", "|---|---|---:|---:|---|"]
    for case in cases:
        launches = " / ".join(str(len(case["calls"].get(c, []))) if c in case["calls"] else "-"
                              for c in SASS_CALLS)
        forward = case["calls"].get("forward") or [("", [])]
        lines.append(f"| {case['name']} | {launches} | {case['regs']} | {case['spill']} | "
                     f"`{forward[0][0]}` {' '.join(forward[0][1])} |")
    return lines


def generated_numbers(out: Path, results: Path) -> Path:
    """``generated/numbers.md``: the newest result files, each with where it comes from."""
    lines = ["<!-- generated by docs/make_figures.py from benchmarks/results/: do not edit -->",
             ""]
    sections = [
        ("CPU: the C++ kernels", _results_of(results, "cpu", "table"), "table"),
        ("CPU: thread scaling", _results_of(results, "cpu", "scaling"), "scaling"),
        ("GPU: the Triton kernels", _results_of(results, "cuda", "table"), "table"),
    ]
    for title, found, kind in sections:
        lines += [f"## {title}", ""]
        if not found:
            lines += ["!!! note \"No result file\"",
                      "    `benchmarks/results/` holds none in this checkout.", ""]
            continue
        if kind == "table":
            lines += _numbers_ratio_tables(found, results)
        else:
            path, payload = _newest(found)
            lines += _numbers_source(path, results, payload)
            lines += _numbers_scaling_table(payload["rows"])
        lines.append("")
    lines += ["## GPU: the Triton kernels' machine code (sm_90)", ""]
    reports = sorted(results.glob("sass-*.txt")) if results.is_dir() else []
    if reports:
        name = reports[-1].relative_to(results.parent.parent) \
            if results.parent.parent in reports[-1].parents else reports[-1]
        lines += [f"From `{name}`, produced by `python benchmarks/tools/sass_report.py` (no GPU "
                  "needed).", ""] + _numbers_sass(reports[-1])
    else:
        lines += ["!!! note \"No SASS report\"",
                  "    `benchmarks/results/` holds none in this checkout."]
    target = out / "generated" / "numbers.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n")
    return target


def generated_demo(out: Path, demo: Path) -> Path:
    lines = ["<!-- generated by docs/make_figures.py from demo-output/: do not edit -->", ""]
    figures = out / "figures"
    results = demo / "results.md"
    if results.exists():
        about = ""
        if (demo / "results.json").exists():
            machine = json.loads((demo / "results.json").read_text()).get("machine", {})
            about = (f" ({machine.get('cpu_model', '?')}, {machine.get('logical_cpus', '?')} "
                     f"logical CPUs, torch {machine.get('torch', '?')}, "
                     f"{machine.get('timestamp', '?')})")
        lines += [f"Results of the last `make demo` run in this checkout{about}; timings are "
                  "from that machine, at that time, under whatever load it had:", "",
                  results.read_text().strip(), ""]
        for name in ("shift_histogram.png", "training_curves.png"):
            if (demo / name).exists():
                shutil.copyfile(demo / name, figures / f"demo_{name}")
                lines += [f"![{name}](figures/demo_{name})", ""]
    else:
        lines += ["!!! note \"Not run yet\"",
                  "    `demo-output/` does not exist in this checkout: run `make demo`, then "
                  "`make docs`, to show its table and plots here."]
    target = out / "generated" / "demo.md"
    target.write_text("\n".join(lines) + "\n")
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE,
                        help="where figures/ and generated/ go (default: docs/)")
    parser.add_argument("--bench-results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--demo-output", type=Path, default=ROOT / "demo-output")
    args = parser.parse_args(argv)
    plt.rcParams.update({"font.size": 9})
    written = [
        figure_paddings(args.out),
        figure_active_1d(args.out),
        figure_active_2d(args.out),
        generated_adjoint(args.out),
        generated_benchmarks(args.out, args.bench_results),
        generated_demo(args.out, args.demo_output),
        generated_numbers(args.out, args.bench_results),
    ]
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
