"""`mkf sweep sync`: upload the offline W&B runs of every cell once the user is back online (and save the sweep's
dashboard if an offline `mkf sweep dashboard` left it pending); the report's W&B run (:func:`log_report`)."""

from __future__ import annotations

import subprocess
import sys
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from launch.views.dashboard import REPORT_FIGURE_KEY, REPORT_RESULTS_KEY, read_record, save_pending
from pipeline.results.run_folder import offline_wandb_runs

if TYPE_CHECKING:
    from launch.core.plan import SweepPlan


def offline_runs(plan: SweepPlan) -> list[Path]:
    """Every cell's offline run directory (one per cell: restarts continue the same run id), and the report's."""
    cells = [p for c in plan.cells for p in offline_wandb_runs(c.run_dir)]
    return sorted(cells + [p for p in plan.output_dir.glob("wandb/offline-run-*") if p.is_dir()])


def sync_sweep(plan: SweepPlan, dry_run: bool = False, console: Console | None = None) -> int:
    """Upload the offline runs with `wandb sync`, then save the dashboard left pending (the runs it shows exist)."""
    console = console or Console()
    runs = offline_runs(plan)
    if not runs:
        console.print(f"no offline W&B runs under {plan.output_dir}/cells (was wandb.enabled set?)")
    for run in runs:
        console.print(f"{'would sync' if dry_run else 'syncing'} {run}")
    if dry_run:
        _print_pending(plan.output_dir, console)
        return 0
    # wandb's own CLI does the upload (auth, retries, resume of the same run id)
    code = subprocess.run([sys.executable, "-m", "wandb", "sync", *map(str, runs)]).returncode if runs else 0
    if code == 0:
        save_pending(plan.output_dir, console)
    return code


def _print_pending(sweep_dir: Path, console: Console) -> None:
    for entry in read_record(sweep_dir):
        if entry["status"] == "pending":
            console.print(f"would save the pending W&B workspace {entry['name']!r} ({entry['project']})")


def log_report(sweep_dir: Path, figure: Path, rows: list[dict[str, Any]], key: str = REPORT_FIGURE_KEY,
               summary: list[dict[str, Any]] | None = None,
               tables: dict[str, list[dict[str, Any]]] | None = None) -> str | None:
    """Log the report figure (under ``key``) and the results table to W&B when the sweep's cells log there; returns
    the run's directory. ``summary`` (mean/CI over seeds) and ``tables`` (e.g. the matrix) are logged as tables.

    The report run joins the sweep's group (job_type "report"), so the figure sits beside the cells' runs; a
    partial report logged again while the sweep runs adds a step to the same run id (the curve fills in).
    """
    from pipeline.config import load_cell_config
    from pipeline.training.loggers import wandb_mode

    configs = sorted(sweep_dir.glob("cells/*/config.yaml"))
    if not configs:
        return None
    cfg = load_cell_config(configs[0])
    if not cfg.wandb.enabled:
        return None
    import wandb

    w = cfg.wandb
    group = w.group or sweep_dir.name
    run = wandb.init(project=w.project, entity=w.entity, group=group, job_type="report", name=f"{group} report",
                     id=f"report-{zlib.crc32(str(sweep_dir.resolve()).encode()):08x}", resume="allow",
                     mode=wandb_mode(w), dir=str(sweep_dir))  # type: ignore[arg-type]
    columns = sorted({k for r in rows for k in r})
    logged = {key: wandb.Image(str(figure)),
              REPORT_RESULTS_KEY: wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])}
    for name, table in {"summary": summary or [], **(tables or {})}.items():
        if table:
            names = list(table[0])
            logged[name] = wandb.Table(columns=names, data=[[t.get(c) for c in names] for t in table])
    run.log(logged)
    directory = run.settings.sync_dir
    run.finish()
    return str(directory)
