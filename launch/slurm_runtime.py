"""What `mkf train` does differently inside a Slurm job step: requeue on USR1, cap restarts, wire the ranks.

Lightning's SLURMEnvironment reads ranks and the master address from Slurm's variables; its own auto-requeue
is turned off because it checkpoints inside the signal handler (possibly mid-step). Ours checkpoints at the next
batch boundary (pipeline.resume.PreemptionHandler) and then calls :func:`requeue_self`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.plugins.environments import SLURMEnvironment

from launch.cell_state import FAILED_FILE
from pipeline.resume import PreemptionHandler
from pipeline.train import PREEMPT_CKPT


def in_slurm_step() -> bool:
    """True inside `srun` of a batch job (not on a login node, not in a bare `salloc` shell)."""
    return "SLURM_JOB_ID" in os.environ and "SLURM_PROCID" in os.environ and "SLURM_STEP_ID" in os.environ


def job_id() -> str:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ["SLURM_JOB_ID"]


def restarts() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def max_restarts() -> int:
    return int(os.environ.get("MKF_MAX_RESTARTS") or 3)


def mark_failed(run_dir: Path, reason: str) -> None:
    """Record why a cell gave up, so `mkf sweep status` says 'failed' and a re-run resubmits it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / FAILED_FILE).write_text(json.dumps({"reason": reason, "job": job_id(), "restarts": restarts(),
                                                   "time": time.time()}) + "\n")


def make_requeue(run_dir: Path) -> Any:
    def requeue() -> bool:
        if restarts() >= max_restarts():
            mark_failed(run_dir, f"preempted after {restarts()} restarts (limit {max_restarts()}); not requeued")
            return False
        return subprocess.run(["scontrol", "requeue", job_id()], capture_output=True).returncode == 0

    return requeue


def slurm_extras(run_dir: Path) -> tuple[list[L.Callback], list[Any]]:
    """Callbacks and plugins for a training step inside Slurm."""
    handler = PreemptionHandler(run_dir / "checkpoints" / PREEMPT_CKPT, requeue=make_requeue(run_dir))
    return [handler], [SLURMEnvironment(auto_requeue=False)]
