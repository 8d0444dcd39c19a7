"""`mkf sweep sync`: upload the offline W&B runs of every cell once the user is back online."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.console import Console

from launch.sweep import SweepPlan


def offline_runs(plan: SweepPlan) -> list[Path]:
    """Every cell's offline run directory (one per cell: restarts continue the same run id)."""
    return sorted(p for c in plan.cells for p in Path(c.run_dir).glob("wandb/offline-run-*") if p.is_dir())


def sync_sweep(plan: SweepPlan, dry_run: bool = False, console: Console | None = None) -> int:
    console = console or Console()
    runs = offline_runs(plan)
    if not runs:
        console.print(f"no offline W&B runs under {plan.output_dir}/cells (was wandb.enabled set?)")
        return 0
    for run in runs:
        console.print(f"{'would sync' if dry_run else 'syncing'} {run}")
    if dry_run:
        return 0
    # wandb's own CLI does the upload (auth, retries, resume of the same run id)
    return subprocess.run([sys.executable, "-m", "wandb", "sync", *map(str, runs)]).returncode
