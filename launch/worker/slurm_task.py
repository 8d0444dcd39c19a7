"""What `mkf train` does inside a Slurm job step: preemption (USR1 and TERM), periodic checkpoints, the restart
policy, and the ranks' wiring.

Lightning's SLURMEnvironment reads ranks and the master address from Slurm's variables; its own auto-requeue
is turned off because it checkpoints inside the signal handler (possibly mid-step). Ours checkpoints at a batch
boundary all ranks agree on (:class:`pipeline.training.resume.PreemptionHandler`); on USR1 (time limit near) the job
requeues itself, on TERM (a real preemption, ``scontrol requeue``, a drained node) Slurm requeues it.

Restart policy: every attempt is recorded in the run directory's ``attempts.json``
(:mod:`pipeline.results.run_folder`). Preemptions never count against a cell; failures do: a crash, a killed rank, or an
attempt that ended without recording anything (SIGKILL, node failure). A cell with more than ``max_restarts``
failures is marked failed instead of training again.
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.results import run_folder

if TYPE_CHECKING:
    import lightning as L

    from pipeline.config import CellConfig

DEFAULT_MAX_RESTARTS = 3


def in_slurm_step() -> bool:
    """True inside `srun` of a batch job (not on a login node, not in a bare `salloc` shell)."""
    return "SLURM_JOB_ID" in os.environ and "SLURM_PROCID" in os.environ and "SLURM_STEP_ID" in os.environ


def job_id() -> str:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ["SLURM_JOB_ID"]


def is_rank_zero() -> bool:
    return os.environ.get("SLURM_PROCID", "0") == "0"


def restarts() -> int:
    """Slurm's own requeue count of this job (preemptions included)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def max_restarts() -> int:
    return int(os.environ.get("MKF_MAX_RESTARTS") or DEFAULT_MAX_RESTARTS)


def checkpoint_interval() -> timedelta | None:
    """The profile's periodic checkpoint (``checkpoint_every_min``): a hard kill loses at most this much."""
    seconds = float(os.environ.get("MKF_CHECKPOINT_EVERY_S") or 0)
    return timedelta(seconds=seconds) if seconds > 0 else None


def preempt_check_steps() -> int:
    return int(os.environ.get("MKF_PREEMPT_CHECK_STEPS") or 1)


def mark_failed(run_dir: Path, reason: str) -> None:
    """Record why a cell gave up, so `mkf sweep status` says 'failed' and a re-run resubmits it."""
    run_folder.mark_failed(run_dir, reason, job=job_id(), slurm_restarts=restarts())


def begin_attempt(run_dir: Path) -> str | None:
    """Account for the previous attempt and start this one (rank 0): see :func:`launch.worker.lifecycle.begin_attempt`."""
    from launch.worker import lifecycle

    return lifecycle.begin_attempt(run_dir, max_restarts(), slurm_restart_count=restarts())


def make_requeue(run_dir: Path) -> Any:
    from launch.worker.lifecycle import requeue_self

    return requeue_self


PREEMPTION_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
_early_signal: list[int] = []


def _record_early(signum: int, frame: Any) -> None:
    if not _early_signal:
        _early_signal.append(signum)


def record_early_signals() -> None:
    """Record, not die on, a preemption signal from the start of the step until the trainer's handler exists.

    Slurm may send TERM while the cell still imports torch or builds its data and model (tens of seconds on a cold
    node). With the default action the job dies, counted as a failure, with no checkpoint; recorded, the cell
    stops as a preemption before its first step. Torch-free, so it can run first thing.
    """
    for signum in PREEMPTION_SIGNALS:
        signal.signal(signum, _record_early)


def slurm_extras(run_dir: Path) -> tuple[list[L.Callback], list[Any]]:
    """Callbacks and plugins for a training step inside Slurm; the preemption handler (first) is installed."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from pipeline.training.resume import PreemptionHandler

    ckpt_dir = run_dir / run_folder.CHECKPOINT_DIR
    interval = checkpoint_interval()
    # the time-based last.ckpt (so even a KILL without warning loses at most `interval`) is decided on the same
    # every-N-steps agreement as a preemption: no per-step collective (ModelCheckpoint(train_time_interval=)
    # broadcasts rank 0's clock on every training batch)
    from launch.worker import lifecycle

    def preempting(signum: int) -> None:  # rank 0, before the checkpoint is written (a slow write is no failure)
        lifecycle.preempting(run_dir, signal.Signals(signum).name)

    handler = PreemptionHandler(ckpt_dir / run_folder.PREEMPT_CKPT, requeue=make_requeue(run_dir),
                                signals=PREEMPTION_SIGNALS, check_every_n_steps=preempt_check_steps(),
                                interval_s=interval.total_seconds() if interval is not None else None,
                                on_preempt=preempting)
    handler.install(earlier=_early_signal[0] if _early_signal else None)
    return [handler], [SLURMEnvironment(auto_requeue=False)]


def train_in_slurm(cfg: CellConfig, report: Any = print) -> int:
    """Train one cell inside a Slurm step under the restart policy; returns the process exit code."""
    record_early_signals()  # before the imports below (torch, Lightning, timm: seconds)
    from datamodules.errors import UserError
    from pipeline.training.resume import Preempted
    from pipeline.training.train import train_cell

    run_dir = Path(cfg.run_dir)
    if run_folder.read_result(run_dir) is not None:
        return 0
    if is_rank_zero():
        refusal = begin_attempt(run_dir)
        if refusal:
            mark_failed(run_dir, refusal)
            report(f"mkf: {run_dir}: {refusal}; cell marked failed")
            return 1
    from launch.core.exits import EXIT_REQUEUE_FAILED
    from launch.worker import lifecycle

    try:
        callbacks, plugins = slurm_extras(run_dir)  # imports Lightning; installs the preemption handler
        handler = callbacks[0]
        train_cell(cfg, callbacks=callbacks, plugins=plugins)
    except Preempted as exc:
        signame = signal.Signals(handler.signum).name if handler.signum else "signal"  # type: ignore[attr-defined]
        if is_rank_zero():  # recorded as preempted already, before the checkpoint (lifecycle.preempting)
            flag = os.environ.get("MKF_PREEMPT_FLAG")
            if flag:  # tells the bundle loop of the batch script to stop here (the task is being requeued)
                Path(flag).touch()
        requeued = handler.requeued  # type: ignore[attr-defined]
        report(f"mkf: {exc}; " + ("requeued" if requeued else "left to Slurm to requeue" if signame == "SIGTERM"
                                  else "NOT requeued: scontrol requeue failed"))
        if signame == "SIGUSR1" and not requeued:
            # the time-limit warning, and our own requeue was refused: the task must end FAILED, never COMPLETED,
            # so that nothing waiting on it (afterok) starts on an unfinished cell; a rerun resubmits it
            return EXIT_REQUEUE_FAILED
        return 0
    except UserError as exc:  # bad input fails the same way every time: no retry
        if is_rank_zero():
            lifecycle.failed(run_dir, str(exc), bad_input=True)
        raise
    except BaseException as exc:
        if is_rank_zero():
            lifecycle.failed(run_dir, f"{type(exc).__name__}: {exc}")
        raise
    if is_rank_zero():
        lifecycle.finished(run_dir)
    return 0
