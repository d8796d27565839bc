"""Printed tables, the worst-ratio summary, CSV / JSON files and the plot."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from . import cases as C
from .rows import RATIOS

Group = Tuple[str, str, str, str, str]  # shape_name, shape, format, dtype, case


def fmt_ms(value: float) -> str:
    return f"{value:.4f}" if value < 10 else f"{value:.2f}"


def fmt_ratio(value: Optional[float]) -> str:
    """Two decimals where that is precise enough, two significant digits below 0.1."""
    if value is None or math.isnan(value):
        return ""
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"


def align(header: Sequence[str], lines: Sequence[Sequence[str]], left: int,
           breaks: Sequence[bool] = ()) -> str:
    """Columns padded to their widest cell, the first ``left`` left-aligned; a blank line
    before line i where ``breaks[i]``."""
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(header)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [fmt(header), fmt(["-" * w for w in widths])]
    for i, line in enumerate(lines):
        if i < len(breaks) and breaks[i]:
            out.append("")
        out.append(fmt(line))
    return "\n".join(out)


def group_rows(rows: Sequence[dict]) -> Dict[Group, List[dict]]:
    """Rows by (shape, format, dtype, case), in order: a case's distributions together."""
    groups: Dict[Group, List[dict]] = {}
    for r in rows:
        key = (r["shape_name"], r["shape"], r["format"], r["dtype"], r["case"])
        groups.setdefault(key, []).append(r)
    return groups


def worst(rows: Sequence[dict], key: str) -> Optional[dict]:
    """The row with the largest ``key`` (NaN ignored), or ``None``."""
    valid = [r for r in rows if not math.isnan(r.get(key, math.nan))]
    return max(valid, key=lambda r: r[key]) if valid else None


def _table_line(key: Group, rows: Sequence[dict], distributions: Sequence[str]) -> List[str]:
    slowest = max(rows, key=lambda r: r["median_ms"])
    spread = (f"{fmt_ms(slowest['run_min_ms'])}-{fmt_ms(slowest['run_max_ms'])}"
              if slowest["runs"] > 1 else "")
    dist = slowest["distribution"]
    cells = [f"{key[0]} {key[1]}" if key[0] != key[1] else key[1], key[2], key[3], key[4],
             "-" if dist == C.NO_DISTRIBUTION else dist, fmt_ms(slowest["median_ms"]), spread]
    for ratio, _, _ in RATIOS:
        row = worst(rows, ratio)
        cells.append(fmt_ratio(row[ratio] if row else None))
    cells.append(f"{slowest['gbps']:.1f}")
    by_dist = {r["distribution"]: r for r in rows}
    cells += [fmt_ms(by_dist[d]["median_ms"]) if d in by_dist else "" for d in distributions]
    return cells


def format_table(rows: Sequence[dict]) -> str:
    """One line per (shape, format, dtype, case): the slowest distribution's median ms (its
    run spread), each ratio's worst over the distributions, the slowest one's effective
    GB/s, then every distribution's median side by side (when a case ran under more than
    one)."""
    groups = group_rows(rows)
    several = any(len({r["distribution"] for r in g}) > 1 for g in groups.values())
    distributions = list(dict.fromkeys(
        r["distribution"] for r in rows if r["distribution"] != C.NO_DISTRIBUTION)) \
        if several else []
    header = (["shape", "format", "dtype", "case", "worst dist" if several else "distribution",
               "median ms", "run min-max ms"]
              + [h for _, h, _ in RATIOS] + ["GB/s"] + [f"{d} ms" for d in distributions])
    lines = [_table_line(key, g, distributions) for key, g in groups.items()]
    keys = list(groups)
    breaks = [i > 0 and keys[i][:4] != keys[i - 1][:4] for i in range(len(keys))]
    return align(header, lines, left=5, breaks=breaks)


def summarize(rows: Sequence[dict]) -> List[dict]:
    """For each (format, case) of our kernels and each ratio: the worst value over the rows
    and the row that produced it."""
    out = []
    ours = [r for r in rows if r["case"] in C.OUR_CASES]
    keys = list(dict.fromkeys((r["format"], r["case"]) for r in ours))
    for fmt, case in sorted(keys, key=lambda k: (C.LAYOUTS.index(k[0]), C.CASES.index(k[1]))):
        subset = [r for r in ours if (r["format"], r["case"]) == (fmt, case)]
        for ratio, _, _ in RATIOS:
            row = worst(subset, ratio)
            if row is not None:
                out.append({"format": fmt, "case": case, "ratio": ratio, "worst": row[ratio],
                            "shape_name": row["shape_name"], "shape": row["shape"],
                            "dtype": row["dtype"], "distribution": row["distribution"],
                            "median_ms": row["median_ms"], "count": len(subset)})
    return out


def _summary_label(entry: dict, fuzz: bool) -> str:
    if fuzz:
        return entry["shape_name"]
    dtype = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16",
             "float64": "fp64"}.get(entry["dtype"], entry["dtype"])
    return f"{entry['shape_name']} {dtype} {entry['distribution']}"


def format_summary(summary: Sequence[dict], fuzz: bool = False) -> str:
    """The worst ratio of each kind per (format, case), with the case that produced it."""
    keys = list(dict.fromkeys((e["format"], e["case"]) for e in summary))
    lines = []
    for fmt, case in keys:
        cells = {e["ratio"]: f"{fmt_ratio(e['worst'])} ({_summary_label(e, fuzz)})"
                 for e in summary if (e["format"], e["case"]) == (fmt, case)}
        count = next(e["count"] for e in summary if (e["format"], e["case"]) == (fmt, case))
        lines.append([fmt, case, str(count)] + [cells.get(r, "") for r, _, _ in RATIOS])
    header = ["format", "case", "rows"] + [f"worst {h}" for _, h, _ in RATIOS]
    return align(header, lines, left=2)


def write_csv(path: Path, rows: Sequence[dict], fields: Sequence[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                             for k, v in row.items()})


def _finite(value):
    """NaN (a ratio with no denominator in this run) as ``null``: strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, payload: dict) -> None:
    with open(path, "w") as f:
        json.dump(_finite(payload), f, indent=1, allow_nan=False)
        f.write("\n")


def worst_rows(rows: Sequence[dict]) -> List[dict]:
    """Per (shape, format, dtype, case), the row of the slowest distribution."""
    return [max(g, key=lambda r: r["median_ms"]) for g in group_rows(rows).values()]


def _bars(ax, sub: Sequence[dict], groups: list, cases: Sequence[str]) -> None:
    import matplotlib.pyplot as plt

    width = 0.8 / max(1, len(cases))
    cmap = plt.get_cmap("tab20")
    for i, case in enumerate(cases):
        values, low, high = [], [], []
        for g in groups:
            match = [r for r in sub if (r["shape_name"], r["shape"], r["format"]) == g
                     and r["case"] == case]
            r = match[0] if match else None
            clone_ms = r["median_ms"] / r["ratio_clone"] if r else 1.0
            values.append(r["ratio_clone"] if r else math.nan)
            # run spread (depthwise conv: allocator-bimodal) as an error bar
            low.append(max(0.0, r["ratio_clone"] - r["run_min_ms"] / clone_ms) if r else 0.0)
            high.append(max(0.0, r["run_max_ms"] / clone_ms - r["ratio_clone"]) if r else 0.0)
        xs = [j + (i - (len(cases) - 1) / 2) * width for j in range(len(groups))]
        ax.bar(xs, values, width, label=case, color=cmap((2 * i) % 20 + (2 * i) // 20 % 2),
               yerr=[low, high], error_kw={"elinewidth": 0.8, "capsize": 1.5})


def plot(rows: Sequence[dict], path: Path, title: str) -> None:
    """Bars of the ratio to ``x.clone()`` per case (its slowest distribution), grouped by
    shape/format, one panel per dtype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = worst_rows(rows)
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    cases = [c for c in C.CASES if c != "clone" and any(r["case"] == c for r in rows)]
    fig, axes = plt.subplots(len(dtypes), 1, figsize=(16, 4.2 * len(dtypes)), squeeze=False)
    for ax, dtype in zip(axes[:, 0], dtypes):
        sub = [r for r in rows if r["dtype"] == dtype]
        groups = list(dict.fromkeys((r["shape_name"], r["shape"], r["format"]) for r in sub))
        _bars(ax, sub, groups, cases)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([(f"{n}\n" if n != s else "") + f"{s}\n{f}" for n, s, f in groups],
                           fontsize=8)
        ax.set_ylabel("time / x.clone()")
        ax.set_title(f"{title} — {dtype}, slowest weight distribution", fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

