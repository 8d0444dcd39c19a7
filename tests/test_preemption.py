"""Preemption signals and the restart policy, without a cluster (the real thing runs in tests/test_slurm.py)."""

from __future__ import annotations

import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from launch import slurm_runtime
from pipeline import run_folder
from pipeline.resume import Preempted, PreemptionHandler


class _Strategy:
    def __init__(self) -> None:
        self.collectives = 0

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: A002 (Lightning's name)
        self.collectives += 1
        return decision


def _trainer(world_size: int, saved: list[Path]) -> SimpleNamespace:
    return SimpleNamespace(world_size=world_size, strategy=_Strategy(), is_global_zero=True, global_step=7,
                           save_checkpoint=saved.append)


@pytest.mark.parametrize("signum, requeues", [(signal.SIGUSR1, True), (signal.SIGTERM, False)])
def test_ranks_agree_every_n_steps_and_only_usr1_requeues_itself(tmp_path: Path, signum: int, requeues: bool) -> None:
    saved: list[Path] = []
    requeued: list[bool] = []
    handler = PreemptionHandler(tmp_path / "preempt.ckpt", requeue=lambda: requeued.append(True) or True,
                                check_every_n_steps=3)
    trainer = _trainer(2, saved)
    for _ in range(6):
        handler.on_train_batch_end(trainer)
    assert trainer.strategy.collectives == 2  # one all-reduce per 3 batches, not per batch
    handler._on_signal(signum, None)
    handler.on_train_batch_end(trainer)  # batch 7: no check yet, training goes on
    handler.on_train_batch_end(trainer)
    assert not saved
    with pytest.raises(Preempted, match=signal.Signals(signum).name):
        handler.on_train_batch_end(trainer)  # batch 9: every rank stops here
    assert saved == [tmp_path / "preempt.ckpt"] and handler.preempted
    assert bool(requeued) is requeues  # on TERM Slurm requeues the job itself


def test_single_rank_checks_every_batch(tmp_path: Path) -> None:
    saved: list[Path] = []
    handler = PreemptionHandler(tmp_path / "p.ckpt", requeue=lambda: True, check_every_n_steps=50)
    handler._on_signal(signal.SIGTERM, None)
    with pytest.raises(Preempted):
        handler.on_train_batch_end(_trainer(1, saved))
    assert saved


def test_preemptions_never_count_failures_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    monkeypatch.setenv("MKF_MAX_RESTARTS", "1")
    run = tmp_path / "cell"
    for _ in range(5):  # preempted five times: still allowed to run
        assert slurm_runtime.begin_attempt(run) is None
        run_folder.record_attempt(run, "preempted", signal="SIGTERM")
    assert slurm_runtime.begin_attempt(run) is None  # this attempt is then killed without a word ...
    assert slurm_runtime.begin_attempt(run) is None  # ... and counted as failure 1 by the next one
    counts = run_folder.read_attempts(run)
    assert (counts["preemptions"], counts["failures"]) == (5, 1)
    run_folder.record_attempt(run, "failed", reason="RuntimeError: boom")
    refusal = slurm_runtime.begin_attempt(run)  # 2 failures > max_restarts 1
    assert refusal and "failed 2 times" in refusal
    assert run_folder.run_state(run) == "pending"  # the refusal is recorded by the caller (mark_failed)
