"""Where a cell stands, read from files alone, so `mkf sweep status` works from any shell and after crashes.

The run directory's own files (result, failure, checkpoints, attempts) are read through the torch-free
``pipeline.results.run_folder``; this module adds what only the launcher knows: the local executor's pid and exit files.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.results import run_folder
from pipeline.results.run_folder import FAILED_FILE, read_attempts  # noqa: F401  (re-exported for the launchers)

if TYPE_CHECKING:
    from launch.core.plan import Cell, SweepPlan

STATES = ("finished", "running", "interrupted", "failed", "pending")


def log_path(plan: SweepPlan, cell: Cell, suffix: str = ".log") -> Path:
    return plan.output_dir / "logs" / f"{cell.id}{suffix}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cell_state(plan: SweepPlan, cell: Cell) -> str:
    """finished | running | interrupted (has a checkpoint to resume) | failed | pending."""
    state = run_folder.run_state(cell.run_dir)
    if state == "finished":
        return state
    logs = os.path.join(plan.output_dir, "logs", cell.id)  # plain strings: status checks thousands of cells
    pid = _read(logs + ".pid")
    if pid and pid.isdigit() and _alive(int(pid)):
        return "running"
    if claimed_here(cell.run_dir):  # trained by another sweep's process on this host (a shared store)
        return "running"
    if state == "failed":  # gave up inside a job (e.g. the crash limit)
        return state
    if _read(logs + ".exit") not in (None, "", "0"):
        return "failed"
    return state


def claimed_here(run_dir: str) -> bool:
    """Whether a live process of this host holds the cell's claim (:mod:`launch.store.claims`); other hosts' claims are
    the executors' views to tell (Slurm's squeue), not one squeue call per cell here."""
    from launch.store.claims import claim_holder

    holder = claim_holder(run_dir)
    if not holder or holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    return _alive(holder["pid"])


def clear_failure(plan: SweepPlan, cell: Cell) -> None:
    """Forget a previous failure before the cell is run again (its checkpoints are kept for resuming): a cell marked
    failed (its restart limit reached) starts a fresh failure count, or a rerun could never train it again."""
    if run_folder.read_failure(cell.run_dir) is not None:
        run_folder.reset_failures(cell.run_dir, "mkf sweep run asked for the failed cell again")
    run_folder.clear_failed(cell.run_dir)
    log_path(plan, cell, ".exit").unlink(missing_ok=True)


def last_metric(cell: Cell) -> str:
    """The cell's final top-1, else the newest val/top1 or train/loss in its CSV log (a running cell's progress)."""
    return run_folder.last_metric(cell.run_dir)
