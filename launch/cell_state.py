"""Where a cell stands, read from files alone, so `mkf sweep status` works from any shell and after crashes."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from launch.sweep import Cell, SweepPlan
from pipeline.train import LAST_CKPT, PREEMPT_CKPT, read_result

FAILED_FILE = "failed.json"  # written by launch.slurm_runtime.mark_failed

STATES = ("finished", "running", "interrupted", "failed", "pending")


def log_path(plan: SweepPlan, cell: Cell, suffix: str = ".log") -> Path:
    return plan.output_dir / "logs" / f"{cell.id}{suffix}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def cell_state(plan: SweepPlan, cell: Cell) -> str:
    """finished | running | interrupted (has a checkpoint to resume) | failed | pending."""
    if read_result(cell.run_dir) is not None:
        return "finished"
    pid_file = log_path(plan, cell, ".pid")
    if pid_file.is_file():
        try:
            if _alive(int(pid_file.read_text().strip())):
                return "running"
        except ValueError:
            pass
    if (Path(cell.run_dir) / FAILED_FILE).is_file():  # gave up inside a job (e.g. restart limit)
        return "failed"
    exit_file = log_path(plan, cell, ".exit")
    if exit_file.is_file() and exit_file.read_text().strip() not in ("", "0"):
        return "failed"
    if any((Path(cell.run_dir) / "checkpoints" / name).is_file() for name in (LAST_CKPT, PREEMPT_CKPT)):
        return "interrupted"
    return "pending"


def clear_failure(plan: SweepPlan, cell: Cell) -> None:
    """Forget a previous failure before the cell is run again (its checkpoints are kept for resuming)."""
    (Path(cell.run_dir) / FAILED_FILE).unlink(missing_ok=True)
    log_path(plan, cell, ".exit").unlink(missing_ok=True)


def last_metric(cell: Cell) -> str:
    """The cell's final top-1, else the newest val/top1 or train/loss in its CSV log (a running cell's progress)."""
    result = read_result(cell.run_dir)
    if result and result.get("top1") is not None:
        return f"top1 {result['top1']:.4f}"
    logs = sorted(Path(cell.run_dir).glob("logs/version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return ""
    with logs[-1].open(newline="") as f:
        rows = list(csv.DictReader(f))
    for key in ("val/top1", "train/loss"):
        values = [r[key] for r in rows if r.get(key)]
        if values:
            return f"{key.split('/')[1]} {float(values[-1]):.4f} @{rows[-1].get('step', '?')}"
    return ""
