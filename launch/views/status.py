"""What `mkf sweep status` prints: every cell's state (:mod:`launch.store.state`) joined with each executor's view
(Slurm's job and state), counts per stage and per sweep, each sweep's adaptive rounds and whether its report is
current. Files and one Slurm query only: torch-free.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from rich.table import Table

from datamodules.errors import UserError
from launch.core.console import console


def planner_alive(job_id: str) -> bool | None:
    """Whether Slurm still has the adaptive planner job (queued or running); None where Slurm cannot be asked."""
    import shutil

    if shutil.which("squeue") is None:
        return None
    from launch.execution.slurm.commands import ACTIVE_STATES, query_plain_jobs

    try:
        state = query_plain_jobs([job_id]).get(job_id)
    except Exception:  # noqa: BLE001  (a status line must never fail the status)
        return None
    return state is not None and state in ACTIVE_STATES


EXPECTED = ("`mkf sweep status` takes a sweep's output folder (the one holding manifest.json, written by "
            "`mkf sweep plan` or `run`), a sweep YAML, or a folder of sweep YAMLs")


def _cell_labels(folder: Path) -> dict[str, Any] | None:
    """The labels of a cell folder (result.json's, else config.yaml's), None where ``folder`` is not a cell's."""
    import json

    import yaml

    result = folder / "result.json"
    if result.is_file():
        try:
            data = json.loads(result.read_text())
        except ValueError:
            data = {}
        return {**(data.get("labels") or {}), "status": data.get("status"), "top1": data.get("top1")}
    config = folder / "config.yaml"
    if config.is_file():
        try:
            data = yaml.safe_load(config.read_text()) or {}
        except yaml.YAMLError:
            return None
        if isinstance(data, dict) and "run_dir" in data:  # a cell config, not a sweep file
            return dict(data.get("labels") or {})
    if (folder / "attempts.json").is_file() or (folder / "weights.safetensors").is_file():
        return {}
    return None


def _sweep_of(folder: Path) -> Path | None:
    """The sweep output folder a cell folder (``OUT/cells/ID``) or a cells folder (``OUT/cells``) belongs to."""
    for parent in (folder.parent.parent, folder.parent):
        if (parent / "manifest.json").is_file():
            return parent
    return None


def explain_folder(target: str | list[str]) -> None:
    """Raise a one-line UserError saying what a folder given to `mkf sweep status` is, when it is not a sweep:
    a cell folder (and which sweep it belongs to, and its own state), a sweep's cells/ folder, an empty or
    missing folder (and what was expected). Anything else is left to the sweep resolver."""
    targets = [target] if isinstance(target, str) else list(target)
    if len(targets) != 1:
        return
    folder = Path(targets[0])
    if not folder.exists():
        raise UserError(f"{folder} does not exist; {EXPECTED}")
    if not folder.is_dir() or (folder / "manifest.json").is_file():
        return
    labels = _cell_labels(folder)
    sweep = _sweep_of(folder.absolute())
    if labels is not None:
        what = " ".join(str(labels[k]) for k in ("arch", "variant") if labels.get(k))
        what += f" seed={labels['seed']}" if labels.get("seed") is not None else ""
        state = (f"finished, top-1 {labels['top1']:.4f}" if labels.get("status") == "finished"
                 and isinstance(labels.get("top1"), int | float) else "not finished")
        where = (f"its sweep is {sweep}: `mkf sweep status {sweep}`" if sweep else
                 f"its sweep is {labels['sweep']!r}: pass that sweep's output folder" if labels.get("sweep") else
                 "pass the output folder of the sweep that planned it")
        raise UserError(f"{folder} is a cell folder ({what + ', ' if what else ''}{state}), not a sweep; {where}")
    if folder.name == "cells" and sweep is not None:
        raise UserError(f"{folder} is the cells/ folder of the sweep {sweep}; `mkf sweep status {sweep}`")
    if not any(folder.iterdir()):
        raise UserError(f"{folder} is empty; {EXPECTED}")


def pair(cell: Any) -> str:
    """source -> target of a cell (its dataset for a base cell), with the source arch where it differs."""
    source_arch = f"{cell.source_arch}:" if cell.source_arch and cell.source_arch != cell.arch else ""
    if cell.stage == "transfer" and cell.source:
        return f"{source_arch}{cell.source} -> {cell.target}"
    return str(cell.target or "")


def print_status(target: str | list[str], only: list[str] | None = None, limit: int = 0) -> int:
    """Every cell's state joined with each executor's view (Slurm's job and state), then counts per stage, and
    per sweep for a catalog (a cell shared by several sweeps counts in each). A folder that is not a sweep (a
    cell's, an empty one) is explained in one line (:func:`explain_folder`)."""
    explain_folder(target)
    from launch.execution.registry import executors_used
    from launch.planning.catalog import parts, resolve_targets
    from launch.store.state import STATES, cell_state
    from pipeline.results.run_folder import last_metric, read_attempts

    plan = resolve_targets(target)
    views = [e.status(p) for p in {id(p): p for p in [plan, *parts(plan)]}.values() for e in executors_used(p)]
    table = Table(title=f"sweep {plan.name} ({plan.output_dir})")
    # source -> target after the first ten (tests and scripts read state, preempted and failed by position)
    columns = ["id", "stage", "arch", "variant", "depth", "seed", "state", "preempted", "failed", "metric",
               "source -> target"]
    columns += [c for v in views for c in v.columns]
    for col in columns:
        table.add_column(col, no_wrap=True, min_width=12 if col == "id" else None)
    counts: dict[str, Counter[str]] = {}
    per_sweep: dict[str, Counter[str]] = {}
    shown = 0
    for c in plan.cells:
        state = cell_state(plan, c)
        if state in ("pending", "interrupted") and any(c.id in v.running for v in views):
            state = "running"
        counts.setdefault(c.stage, Counter())[state] += 1
        for name in c.sweeps:
            per_sweep.setdefault(name, Counter())[state] += 1
        if only and state not in only:
            continue
        shown += 1
        if shown > limit > 0:
            continue
        attempts = read_attempts(c.run_dir)
        row = [c.id, c.stage, c.arch, c.variant, "" if c.depth is None else str(c.depth), str(c.seed), state,
               str(attempts["preemptions"]), str(attempts["failures"]), last_metric(c.run_dir), pair(c)]
        for v in views:
            row += v.rows.get(c.id, [""] * len(v.columns))
        table.add_row(*row)
    console.print(table)
    if shown > limit > 0:
        console.print(f"... {shown - limit} more cells not listed (--limit 0 lists all, --only STATE filters)")
    for stage, counter in counts.items():
        console.print(f"{stage:>8}: " + "  ".join(f"{s}: {counter[s]}" for s in STATES)
                      + f"  total: {sum(counter.values())}")
    total = sum(counts.values(), Counter())
    console.print("   total: " + "  ".join(f"{s}: {total[s]}" for s in STATES) + f"  total: {len(plan.cells)}")
    from launch.planning.adaptive import adaptive_status_lines
    from launch.views.report import report_state

    for p in parts(plan):  # each sweep's own round state and report
        prefix = f"{p.name}: " if p is not plan else ""
        for line in [*adaptive_status_lines(p, planner_alive=planner_alive), *report_state(p)]:
            console.print(prefix + line, markup=False, highlight=False)
    if len(per_sweep) > 1:
        width = max(map(len, per_sweep))
        console.print("per sweep (shared cells count in each):")
        order = [s["name"] for s in plan.sweeps] or list(per_sweep)
        for name, counter in sorted(per_sweep.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99):
            console.print(f"  {name:<{width}}  " + "  ".join(f"{s}: {counter[s]}" for s in STATES)
                          + f"  total: {sum(counter.values())}", markup=False, highlight=False)
    from launch.views.allocation import cost_lines

    for line in cost_lines(plan):  # what the finished cells recorded they cost; sacct's elapsed x GPUs on Slurm
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0
