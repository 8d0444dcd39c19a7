"""Results: collect every cell's result.json into a table, relative top-1, and the paper's Figure 3.

Relative top-1 = a transfer cell's top-1 / the top-1 of base B with the same arch and seed, so 1.0 means
"transferring n units from A costs nothing".
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from datamodules.errors import UserError

COLUMNS = ("cell_id", "stage", "arch", "unit_kind", "variant", "depth", "seed", "top1", "top5", "base_b_top1",
           "relative_top1", "trainable_params", "frozen_params", "steps", "wall_time_s")
VARIANT_STYLE = {  # colours/markers follow Yosinski et al.'s figure: A-based dark, B-based light
    "AnB": ("#c0392b", "o"), "AnB+": ("#e67e22", "^"), "BnB": ("#2c3e50", "s"), "BnB+": ("#5dade2", "v"),
    "reverse": ("#27ae60", "D"),
}


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per finished cell under ``sweep_dir/cells``, with relative top-1 filled in for transfer cells."""
    root = Path(sweep_dir)
    cells = root / "cells"
    if not cells.is_dir():
        raise UserError(f"{root} has no cells/ folder; pass a sweep output directory (e.g. results/demo)")
    rows = []
    for path in sorted(cells.glob("*/result.json")):
        try:
            result = json.loads(path.read_text())
        except ValueError:
            continue  # a result being written right now; the next report picks it up
        if result.get("status") != "finished":
            continue
        labels = result.get("labels") or {}
        rows.append({
            "cell_id": labels.get("cell_id", path.parent.name), "stage": labels.get("stage", "base"),
            "arch": result["arch"], "unit_kind": labels.get("unit_kind"), "variant": labels.get("variant"),
            "depth": labels.get("depth"), "seed": result.get("seed"), "top1": result.get("top1"),
            "top5": result.get("top5"), "trainable_params": result.get("trainable_params"),
            "frozen_params": result.get("frozen_params"), "steps": result.get("steps"),
            "wall_time_s": result.get("wall_time_s"),
        })
    base_b = {(r["arch"], r["seed"]): r["top1"] for r in rows if r["variant"] == "base-B"}
    for r in rows:
        ref = base_b.get((r["arch"], r["seed"]))
        r["base_b_top1"] = ref
        r["relative_top1"] = (r["top1"] / ref) if ref and r["top1"] is not None else None
    rows.sort(key=lambda r: (r["arch"], r["stage"] != "base", r["variant"] or "", r["depth"] or 0, r["seed"] or 0))
    return rows


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    with Path(path).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: r.get(k) for k in COLUMNS} for r in rows)


def curves(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[tuple[int, float, float]]]]:
    """arch -> variant -> [(depth, mean relative top-1 over seeds, std)] for the transfer cells."""
    points: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in rows:
        if r["stage"] == "transfer" and r["relative_top1"] is not None:
            points[(r["arch"], r["variant"], r["depth"])].append(r["relative_top1"])
    out: dict[str, dict[str, list[tuple[int, float, float]]]] = defaultdict(lambda: defaultdict(list))
    for (arch, variant, depth), values in sorted(points.items()):
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        out[arch][variant].append((depth, statistics.fmean(values), std))
    return out


def plot_figure(rows: list[dict[str, Any]], out_stem: str | Path, title: str = "") -> list[Path]:
    """Figure 3 of the paper: relative top-1 vs transfer depth, a line per variant, a panel per arch (PNG + PDF)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = curves(rows)
    if not data:
        raise UserError("no finished transfer cells with a finished base-B cell yet; run the sweep first")
    archs = sorted(data)
    # a shared y-axis: flat depthwise curves and falling block curves read on one scale
    fig, axes = plt.subplots(1, len(archs), figsize=(4.2 * len(archs), 3.4), squeeze=False, sharey=True)
    for ax, arch in zip(axes[0], archs, strict=True):
        kinds = {r["unit_kind"] for r in rows if r["arch"] == arch}
        for variant, pts in sorted(data[arch].items()):
            color, marker = VARIANT_STYLE.get(variant, ("gray", "x"))
            xs, ys, es = zip(*pts, strict=True)
            ax.errorbar(xs, ys, yerr=es if any(es) else None, label=variant, color=color, marker=marker,
                        capsize=2, lw=1.5, ms=5)
        ax.axhline(1.0, color="gray", ls="--", lw=0.8)
        ax.set_title(f"{arch} ({', '.join(sorted(k for k in kinds if k))} units)")
        ax.set_xlabel("transferred units n")
        ax.set_ylabel("top-1 relative to base B")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_stem = Path(out_stem)
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=150)
    plt.close(fig)
    return paths


def write_report(sweep_dir: str | Path) -> tuple[list[dict[str, Any]], list[Path]]:
    """results.csv + figure.png/.pdf in ``sweep_dir``; returns the rows and the files written."""
    root = Path(sweep_dir)
    rows = collect(root)
    if not rows:
        raise UserError(f"{root} has no finished cells yet; run `mkf sweep run` first")
    if not curves(rows):
        raise UserError(f"{root} has no finished transfer cell with its base-B cell yet; run the sweep first")
    write_csv(rows, root / "results.csv")
    figures = plot_figure(rows, root / "figure", title=root.name)
    return rows, [root / "results.csv", *figures]
