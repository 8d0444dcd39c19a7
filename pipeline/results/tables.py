"""Results: every cell's result.json -> ``results.csv`` (one row per cell) and ``summary.csv`` (mean, std, 95% CI).

Relative top-1 = a cell's top-1 / the top-1 of its *reference*: the base cell of the same arch and seed trained on
the cell's target dataset (its id is in the cell's labels, written by the sweep planner). 1.0 means "transferring
these units cost nothing". The summary aggregates over seeds per (arch, source arch, unit kind, source -> target,
variant, depth): n, mean, sample std and a Student-t 95% confidence interval of the mean.

Each row also carries the cell's ``transfer_signal`` summary (result.json; pipeline.transfer.signal) and its
validation size, so :func:`indistinguishable` can mark groups whose variants agree within the validation noise
while their transferred units are silent (summary.csv's ``note`` column).

The figures per experiment kind live in :mod:`pipeline.results.figures`; :mod:`pipeline.results.report`
puts tables and figures together.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from datamodules.errors import UserError

COLUMNS = ("cell_id", "stage", "arch", "source_arch", "unit_kind", "source", "target", "source_role", "variant",
           "depth", "seed", "top1", "top5", "reference_id", "reference_top1", "relative_top1", "trainable_params",
           "frozen_params", "steps", "wall_time_s", "val_samples", "signal_logit_change", "signal_block_change",
           "signal_layer_scale", "audit")
GROUP = ("arch", "source_arch", "unit_kind", "source", "target", "source_role", "variant", "depth")
SUMMARY_COLUMNS = (*GROUP, "n", "mean", "std", "ci95_low", "ci95_high", "note", "audit")
SILENT_NOTE = "variants indistinguishable: the transferred units are silent"
# a transferred unit is *silent* when replacing it by random weights moves the model's logits by less than this
# (relative L2 change on a fixed validation batch; see pipeline.transfer.signal): 1% is orders of magnitude above
# what ConvNeXt's 1e-6 layer scale lets through and orders below what a block that learned changes
SILENT_BELOW = 0.01
MANIFEST = "manifest.json"  # written by launch.core.plan (read here as plain JSON: pipeline never imports launch)


def read_manifest(sweep_dir: Path) -> dict[str, Any]:
    path = sweep_dir / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is not valid JSON; re-plan the sweep (`mkf sweep plan`)") from None


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per finished cell under ``sweep_dir/cells``, with relative top-1 filled in where the reference ran."""
    root = Path(sweep_dir)
    cells = root / "cells"
    if not cells.is_dir():
        raise UserError(f"{root} has no cells/ folder; pass a sweep output directory (e.g. results/demo)")
    planned = _planned_cells(root)
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
            "arch": result["arch"], "source_arch": labels.get("source_arch"), "unit_kind": labels.get("unit_kind"),
            "source": labels.get("source"), "target": labels.get("target"), "source_role": labels.get("source_role"),
            "variant": labels.get("variant"), "depth": labels.get("depth"), "seed": result.get("seed"),
            "top1": result.get("top1"), "top5": result.get("top5"), "reference_id": labels.get("reference"),
            "trainable_params": result.get("trainable_params"), "frozen_params": result.get("frozen_params"),
            "steps": result.get("steps"), "wall_time_s": result.get("wall_time_s"),
            "val_samples": result.get("val_samples"), **_signal_columns(result.get("transfer_signal")),
        })
        if planned is not None:  # a cell of a shared store: this sweep's names for it, not its first trainer's
            cell = planned.get(rows[-1]["cell_id"])
            if cell is None:
                rows.pop()  # in the folder but not in this sweep's plan
                continue
            rows[-1].update({key: cell.get(field) for key, field in _MANIFEST_FIELDS.items()})
    return add_relative(rows)


# row column -> the manifest cell's field (launch.core.plan.Cell)
_MANIFEST_FIELDS = {"stage": "stage", "variant": "variant", "depth": "depth", "unit_kind": "unit_kind",
                    "source": "source", "target": "target", "source_arch": "source_arch", "reference_id": "reference"}


def _planned_cells(root: Path) -> dict[str, dict[str, Any]] | None:
    """Cell id -> the sweep's manifest entry, or None without a manifest (a folder of run dirs only).

    A cell in a shared store was trained once, for whichever sweep got there first, and its result.json carries
    that sweep's labels: Fig. 3's ``manmade`` is reduced_sources' ``manmade_100``. The report names it as its own
    sweep planned it.
    """
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("kind") == "catalog":
        return None
    return {c["id"]: c for c in manifest.get("cells") or [] if isinstance(c, dict) and "id" in c}


def _signal_columns(signal: Any) -> dict[str, Any]:
    """The summary of result.json's ``transfer_signal`` (written by pipeline.transfer.signal) as flat columns."""
    signal = signal if isinstance(signal, dict) else {}
    return {"signal_logit_change": signal.get("logit_change"), "signal_block_change": signal.get("block_change_max"),
            "signal_layer_scale": signal.get("layer_scale_mean")}


def add_relative(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill reference_top1 / relative_top1 from the rows' own base cells; sort for reading."""
    top1 = {r["cell_id"]: r["top1"] for r in rows}
    base_b = {(r["arch"], r["seed"]): r["cell_id"] for r in rows if r["variant"] == "base-B"}
    for r in rows:
        if not r.get("reference_id") and r["stage"] == "transfer":  # results of sweeps planned before references
            r["reference_id"] = base_b.get((r["arch"], r["seed"]))
        ref = top1.get(r.get("reference_id")) if r.get("reference_id") else None
        r["reference_top1"] = ref
        r["relative_top1"] = (r["top1"] / ref) if ref and r["top1"] is not None else None
    rows.sort(key=lambda r: (r["arch"], r["stage"] != "base", str(r.get("source")), str(r.get("target")),
                             r["variant"] or "", r["depth"] or 0, r["seed"] or 0))
    return rows


def t_quantile(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (scipy)."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def summarize(rows: list[dict[str, Any]], value: str = "relative_top1") -> list[dict[str, Any]]:
    """Mean, std and 95% CI of relative top-1 (or ``value``, another column: ``top1`` when relative top-1 is
    undefined) over seeds, per (arch, source arch, unit kind, pair, variant, depth)."""
    groups: dict[tuple[Any, ...], list[float]] = defaultdict(list)
    for r in rows:
        if r["stage"] == "transfer" and r.get(value) is not None:
            groups[tuple(r.get(k) for k in GROUP)].append(r[value])
    out = []
    for key, values in groups.items():
        n = len(values)
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if n > 1 else 0.0
        half = t_quantile(n - 1) * std / math.sqrt(n) if n > 1 else 0.0
        out.append({**dict(zip(GROUP, key, strict=True)), "n": n, "mean": mean, "std": std if n > 1 else None,
                    # no interval from one seed: summary.csv leaves it empty rather than [mean, mean]
                    "ci95_low": mean - half if n > 1 else None, "ci95_high": mean + half if n > 1 else None})
    out.sort(key=lambda s: tuple(str(s[k]) if k != "depth" else (s[k] or 0) for k in GROUP))
    return out


def indistinguishable(rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Groups whose variants cannot be told apart *because* the transferred units carry no signal.

    A group is one (arch, source arch, unit kind, target): every variant and depth trained on that target. It is
    marked when both hold:

    * **agree within the validation noise**: the spread (max - min) of the group's mean relative top-1 over its
      (variant, depth, source) rows is at most the 95% noise band of one measurement, 1.96 x the binomial standard
      error of top-1 on the validation set, sqrt(p (1 - p) / n_val) / p (p = the reference's top-1, n_val its
      validation images), or the widest 95% CI half-width over seeds in the group when that is wider;
    * **silent**: every cell of the group that recorded a signal moved its logits by less than
      :data:`SILENT_BELOW` when its transferred units were replaced by random ones, and at least one did.

    Either alone says little: variants agree when transfer costs nothing, and silent units can still be the
    point of an experiment; together they say that no frozen filter could have changed a prediction.
    Returns one dict per marked group: its key columns, spread, noise band, largest signal and the note.
    """
    by_group: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for s in summary:
        by_group[(s["arch"], s["source_arch"], s["unit_kind"], s["target"])].append(s)
    cells: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["stage"] == "transfer" and r["relative_top1"] is not None:
            cells[(r["arch"], r["source_arch"], r["unit_kind"], r["target"])].append(r)
    marked = []
    for key, members in by_group.items():
        if len(members) < 2:
            continue  # one variant: nothing to tell apart
        signals = [r["signal_logit_change"] for r in cells[key] if r.get("signal_logit_change") is not None]
        if not signals or max(signals) >= SILENT_BELOW:
            continue
        refs = [r for r in cells[key] if r.get("reference_top1")]
        n_val = [r["val_samples"] for r in cells[key] if r.get("val_samples")]
        noise = 0.0
        if refs and n_val:
            p = statistics.fmean(r["reference_top1"] for r in refs)
            noise = 1.96 * math.sqrt(max(p * (1 - p), 0.0) / statistics.median(n_val)) / p if p > 0 else 0.0
        noise = max([noise, *(s["ci95_high"] - s["mean"] for s in members if s["ci95_high"] is not None)])
        means = [s["mean"] for s in members]
        spread = max(means) - min(means)
        if spread <= noise:
            marked.append({"arch": key[0], "source_arch": key[1], "unit_kind": key[2], "target": key[3],
                           "variants": len(members), "spread": spread, "noise": noise, "signal_max": max(signals),
                           "note": SILENT_NOTE})
    return marked


def mark_summary(summary: list[dict[str, Any]], marked: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Put each marked group's note into the ``note`` column of its summary rows (summary.csv)."""
    keys = {(m["arch"], m["source_arch"], m["unit_kind"], m["target"]) for m in marked}
    for s in summary:
        s["note"] = SILENT_NOTE if (s["arch"], s["source_arch"], s["unit_kind"], s["target"]) in keys else ""
    return summary


def marked_lines(marked: list[dict[str, Any]]) -> list[str]:
    """One human line per marked group (summary.md, the figure's footer, the terminal)."""
    return [f"{m['note']} ({m['arch']}{' <- ' + m['source_arch'] if m['source_arch'] not in (None, m['arch']) else ''}"
            f"{', ' + m['unit_kind'] if m['unit_kind'] else ''} -> {m['target']}: {m['variants']} variants within "
            f"{m['spread']:.4f} of each other, noise band {m['noise']:.4f}; randomising the units moved the logits "
            f"by at most {m['signal_max']:.2g})" for m in marked]


def write_csv(rows: list[dict[str, Any]], path: str | Path, columns: tuple[str, ...] = COLUMNS) -> Path:
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: r.get(k) for k in columns} for r in rows)
    return path
