"""Where a cell stands, read from files alone, so `mkf sweep status` works from any shell and after crashes."""

from __future__ import annotations

import os
from pathlib import Path

from launch.sweep import Cell, SweepPlan
from pipeline.train import LAST_CKPT, read_result

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
    exit_file = log_path(plan, cell, ".exit")
    if exit_file.is_file() and exit_file.read_text().strip() not in ("", "0"):
        return "failed"
    if (Path(cell.run_dir) / "checkpoints" / LAST_CKPT).is_file():
        return "interrupted"
    return "pending"
