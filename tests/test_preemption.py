"""Preemption signals and the restart policy through real fits, real ranks and real loader workers (the cluster
itself: tests/test_slurm.py and tests/test_slurm_preempt_workers.py)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch.multiprocessing as mp

from datamodules import build_datamodule
from launch.worker import slurm_task
from pipeline.config import CellConfig
from pipeline.results import run_folder
from pipeline.training.resume import Preempted, PreemptionHandler, checkpoint_step
from pipeline.training.train import train_cell
from tests.conftest import cell_config
from tests.test_checkpoint_policy import free_port, join_ranks, leave_ranks, two_rank_cell


@pytest.fixture
def own_signals() -> Iterator[None]:
    """Handlers are installed in this (pytest's) process: put pytest's back afterwards."""
    saved = {s: signal.getsignal(s) for s in slurm_task.PREEMPTION_SIGNALS}
    yield
    for s, h in saved.items():
        signal.signal(s, h)
    slurm_task._early_signal.clear()


class _SignalSelf(L.Callback):
    """Sends this process a real signal after the optimizer step ``step`` (on the given rank only)."""

    def __init__(self, step: int, signum: int, rank: int = 0) -> None:
        self.step, self.signum, self.rank = step, signum, rank

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            os.kill(os.getpid(), self.signum)


class _Saves(L.Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.steps.append(trainer.global_step)


def _disagreeing_rank(rank: int, world: int, port: int, cfg: CellConfig, out: str) -> None:
    join_ranks(rank, world, port)
    requeued: list[int] = []
    handler = PreemptionHandler(Path(cfg.run_dir) / "checkpoints" / "preempt.ckpt",
                                requeue=lambda: requeued.append(rank) or True, check_every_n_steps=3)
    handler.install()
    saves = _Saves()
    outcome = "finished"
    try:  # only rank 1 gets USR1, after step 4; the ranks agree at steps 3, 6, ...
        train_cell(cfg, callbacks=[handler, saves, _SignalSelf(4, signal.SIGUSR1, rank=1)])
    except Preempted as exc:
        outcome = str(exc)
    finally:
        leave_ranks()
    Path(out, f"rank{rank}.json").write_text(json.dumps({
        "outcome": outcome, "signal": handler.signum, "requeued": requeued, "saves": saves.steps}))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_only_rank_1_signalled_both_ranks_stop_at_the_same_step_with_one_checkpoint(tmp_path: Path) -> None:
    cfg = two_rank_cell(tmp_path / "cell", data={"batch_size": 32})  # 8 steps per rank
    mp.spawn(_disagreeing_rank, args=(2, free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["outcome"] == r1["outcome"] == "checkpointed at step 6 on SIGUSR1", (r0, r1)
    assert r0["signal"] == r1["signal"] == signal.SIGUSR1  # rank 0 learnt which signal rank 1 got
    assert r0["requeued"] == [0] and r1["requeued"] == []  # USR1: the job requeues itself, from rank 0 only
    assert r0["saves"] == r1["saves"] == [6]  # one checkpoint, written collectively, at the agreed step
    checkpoints = sorted(p.name for p in (tmp_path / "cell" / "checkpoints").iterdir())
    assert checkpoints == ["preempt.ckpt"], checkpoints
    assert checkpoint_step(tmp_path / "cell" / "checkpoints" / "preempt.ckpt") == 6


def test_term_checkpoints_at_the_next_step_and_is_left_to_slurm_to_requeue(tmp_path: Path,
                                                                          own_signals: None) -> None:
    requeued: list[bool] = []
    handler = PreemptionHandler(tmp_path / "cell" / "checkpoints" / "preempt.ckpt",
                                requeue=lambda: requeued.append(True) or True, check_every_n_steps=50)
    with pytest.raises(Preempted, match="checkpointed at step 3 on SIGTERM"):  # one rank: checked every step
        train_cell(cell_config(tmp_path / "cell"), callbacks=[handler, _SignalSelf(2, signal.SIGTERM)])
    assert not requeued and handler.preempted


def test_signal_while_data_and_model_are_built_stops_before_the_first_step(tmp_path: Path,
                                                                           own_signals: None) -> None:
    """Slurm's TERM may come while the cell still imports and builds: recorded, not fatal, and a preemption."""
    slurm_task.record_early_signals()
    os.kill(os.getpid(), signal.SIGTERM)  # before the handler exists: this process would die by default
    callbacks, _ = slurm_task.slurm_extras(tmp_path / "cell")
    with pytest.raises(Preempted, match="stopped before training .* on SIGTERM"):
        train_cell(cell_config(tmp_path / "cell"), callbacks=callbacks)
    assert not (tmp_path / "cell" / "checkpoints" / "preempt.ckpt").exists()  # nothing trained: nothing to save


def test_loader_workers_survive_term_and_usr1(fashion_root: Path, tmp_path: Path, own_signals: None) -> None:
    """Slurm signals every process of the step: real DataLoader workers that get TERM and USR1 keep serving
    batches, also when the signal comes right after the fork, before ``worker_init_fn`` ran (torch's own worker
    TERM handler is in place then; the training thread's blocked mask, inherited, is what saves them)."""
    dm = build_datamodule("fashion_mnist", split={"kind": "random_halves", "seed": 0}, half="A", batch_size=16,
                          max_train_samples=256, max_val_samples=64, num_workers=2)
    dm.setup()
    handler = PreemptionHandler(tmp_path / "p.ckpt", signals=slurm_task.PREEMPTION_SIGNALS)
    handler.install()
    handler._block()  # what its setup() does for the fit
    try:
        for _ in range(10):
            it = iter(dm.train_dataloader())
            for w in it._workers:  # type: ignore[attr-defined]
                os.kill(w.pid, signal.SIGTERM)  # at once: inside the fork-to-init window
                os.kill(w.pid, signal.SIGUSR1)
            assert sum(1 for _ in it) == 256 // 16  # a worker killed by the signal raises here
        it = iter(dm.train_dataloader())
        next(it)
        for w in it._workers:  # type: ignore[attr-defined]
            os.kill(w.pid, signal.SIGTERM)  # and long after worker_init_fn
        time.sleep(0.5)
        assert sum(1 for _ in it) == 256 // 16 - 1
        assert all(w.is_alive() for w in it._workers), "a worker died of TERM"  # type: ignore[attr-defined]
    finally:
        handler.teardown(None, None, "fit")  # type: ignore[arg-type]
    assert handler.signum is None  # the workers' signals never reached the training process


def test_preemptions_never_count_failures_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    monkeypatch.setenv("MKF_MAX_RESTARTS", "1")
    run = tmp_path / "cell"
    for _ in range(5):  # preempted five times: still allowed to run
        assert slurm_task.begin_attempt(run) is None
        run_folder.record_attempt(run, "preempted", signal="SIGTERM")
    assert slurm_task.begin_attempt(run) is None  # this attempt is then killed without a word ...
    assert slurm_task.begin_attempt(run) is None  # ... and counted as failure 1 by the next one
    counts = run_folder.read_attempts(run)
    assert (counts["preemptions"], counts["failures"]) == (5, 1)
    run_folder.record_attempt(run, "failed", reason="RuntimeError: boom")
    refusal = slurm_task.begin_attempt(run)  # 2 failures > max_restarts 1
    assert refusal and "failed 2 times" in refusal
    assert run_folder.run_state(run) == "pending"  # the refusal is recorded by the caller (mark_failed)
