"""`mkf report`: a sweep's tables and figure (:mod:`pipeline.results.report`), the relative top-1 table on the
terminal, and the figure and tables logged to the sweep's W&B group when a W&B run exists for it.

Every report leaves ``report.json`` beside its files: when it was written and which cells it drew. On Slurm the
report is a stage of its own (report jobs ``afterany`` the arrays, see launch/execution/slurm/executor.py), so
`mkf sweep status` compares that list with the cells finished now (:func:`report_state`) to say whether the
report on disk is current or which cells it is missing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from launch.core.console import console
from launch.views.dashboard import REPORT_FIGURE_KEY
from launch.views.plan import PLAN_TABLE_MAX


def report(sweep_dir: str | Path, partial: bool = False) -> tuple[list[Path], bool]:
    """Write and print the sweep's report; (files written, whether the protocol audit passed)."""
    from launch.views.audit import audit_sweep
    from pipeline.results.audit import audit
    from pipeline.results.report import write_report

    root = Path(sweep_dir)
    audited = audit(root) if (root / "manifest.json").is_file() else None
    rows, files = write_report(sweep_dir, partial=partial, audit_report=audited)
    write_report_state(Path(sweep_dir), rows, partial)
    table = Table(title=f"relative top-1 ({sweep_dir})")
    for col in ("arch", "variant", "source->target", "depth", "seed", "top-1", "reference", "relative"):
        table.add_column(col, justify="right" if col not in ("arch", "variant", "source->target") else "left")
    shown = [r for r in rows if r["stage"] == "transfer"] if len(rows) > PLAN_TABLE_MAX else rows
    for r in shown[:PLAN_TABLE_MAX * 4]:
        table.add_row(r["arch"], r["variant"] or "", f"{r['source']}->{r['target']}" if r["stage"] == "transfer"
                      else str(r["target"] or ""), "" if r["depth"] is None else str(r["depth"]), str(r["seed"]),
                      f"{r['top1']:.4f}", f"{r['reference_top1']:.4f}" if r["reference_top1"] else "",
                      f"{r['relative_top1']:.3f}" if r["relative_top1"] is not None else "")
    console.print(table)
    from pipeline.results.tables import indistinguishable, marked_lines, summarize

    for line in marked_lines(indistinguishable(rows, summarize(rows))):  # said where the user looks, too
        console.print(line, markup=False, highlight=False)
    for f in files:
        console.print(f"wrote {f}")
    passed = audited is None or audit_sweep(root, verbose=not audited.passed, report=audited)
    figure = next((f for f in files if f.suffix == ".png"), None)
    if figure is None:
        console.print("no figure yet: no transfer cell has finished with its reference base")
        return files, passed
    import csv

    from launch.views.wandb_sync import log_report

    tables = {}
    for path in files:  # summary.csv and the kind's tables (matrix.csv, retention.csv)
        if path.suffix == ".csv" and path.name != "results.csv":
            with path.open(newline="") as f:
                tables[path.stem] = list(csv.DictReader(f))
    logged = log_report(Path(sweep_dir), figure, rows, key=REPORT_FIGURE_KEY, tables=tables)
    if logged:
        console.print(f"logged the figure to W&B ({logged})")
    return files, passed


REPORT_STATE = "report.json"


def write_report_state(sweep_dir: Path, rows: list[dict[str, Any]], partial: bool) -> None:
    """Record what this report drew (written after its files, atomically)."""
    state = {"time": time.time(), "partial": partial, "cells": sorted({str(r["cell_id"]) for r in rows}),
             "job": os.environ.get("SLURM_JOB_ID")}
    tmp = sweep_dir / f".{REPORT_STATE}.tmp"
    tmp.write_text(json.dumps(state) + "\n")
    os.replace(tmp, sweep_dir / REPORT_STATE)


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def report_targets(targets: list[str] | str, partial: bool = False) -> tuple[list[Path], bool]:
    """Report sweep files, folders of them, or a sweep's or catalog run's output folder: every sweep's own
    figure, from its own folder (`mkf sweep report`, and `mkf report` of a catalog folder: its report job).
    Returns the files and whether every sweep's protocol audit passed."""
    from launch.planning.catalog import parts, resolve_targets

    files: list[Path] = []
    passed = True
    for part in parts(resolve_targets(targets)):
        written, ok = report(part.output_dir, partial=partial)
        files.extend(written)
        passed = passed and ok
    return files, passed


def report_folder(folder: str | Path, partial: bool = False) -> tuple[list[Path], bool]:
    """`mkf report DIR`: a sweep's output folder, or a catalog run's folder (its report job: every sweep in it)."""
    from launch.planning.catalog import is_catalog_dir

    if is_catalog_dir(folder):  # a catalog run's report job
        return report_targets(str(folder), partial=partial)
    return report(folder, partial=partial)


def report_state(plan: Any) -> list[str]:
    """Lines for `mkf sweep status`: is the report current (it drew every cell finished now), which report jobs
    are queued. Files only (no Slurm call, no torch): one stat per cell."""
    from pipeline.results.run_folder import RESULT_FILE

    root = Path(plan.output_dir)
    finished = {c.id for c in plan.cells if os.path.isfile(os.path.join(c.run_dir, RESULT_FILE))}
    lines = []
    try:
        state = json.loads((root / REPORT_STATE).read_text())
    except (OSError, ValueError):
        state = None
    if state is None:
        lines.append(f"report: none yet ({len(finished)} of {len(plan.cells)} cells finished); "
                     f"`mkf report {root} --partial` draws them")
    else:
        drawn = set(state.get("cells") or [])
        new = finished - drawn
        when = _ago(time.time() - float(state.get("time") or 0))
        if not new:
            complete = len(finished) == len(plan.cells)
            lines.append(f"report: current ({len(drawn)} of {len(plan.cells)} cells, written {when}"
                         + ("" if complete else ", partial") + ")")
        else:
            lines.append(f"report: stale, {len(new)} cells finished since it was written ({when}, {len(drawn)} "
                         f"drawn); `mkf report {root} --partial` refreshes it")
    try:
        jobs = json.loads((root / "slurm" / "stages.json").read_text()).get("reports") or []
    except (OSError, ValueError):
        jobs = []
    written = float(state.get("time") or 0) if state else 0.0
    waiting = [j for j in jobs if float(j.get("submitted") or 0) > written]
    if waiting:
        lines.append("report jobs submitted since: " + ", ".join(f"{j['job_id']} (after {j['scope']})"
                                                                   for j in waiting))
    return lines
