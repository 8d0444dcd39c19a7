"""The checkpoint policy (pipeline.training.resume.PreemptionHandler) through real Lightning fits of real cells.

Two real gloo ranks (one process each, started like srun starts them) count the Python-level collectives of every
training step: ordinary steps must have none (a collective is a host sync and a stall on every GPU step), a check
step exactly one all-reduce. DDP's own gradient all-reduce runs in C++ and is not counted. One-rank fits check
that checkpoints land only after an optimizer step (never inside a gradient-accumulation window) and that the
periodic checkpoint is the ``last.ckpt`` resume reads (no unread ``last-v1.ckpt``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from launch.worker import slurm_task
from pipeline.config import CellConfig
from pipeline.training import resume
from pipeline.training.train import resume_checkpoint, train_cell
from tests.conftest import cell_config

COLLECTIVES = ("broadcast", "all_reduce", "reduce", "all_gather", "all_gather_into_tensor", "gather", "scatter",
               "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "barrier", "monitored_barrier",
               "all_gather_object", "broadcast_object_list", "gather_object", "scatter_object_list")


class CollectiveCounter(L.Callback):
    """Counts calls of torch.distributed's Python collectives, by training batch (outermost call only: an
    ``all_gather_object`` is one collective, not also the ``all_gather`` inside it)."""

    def __init__(self) -> None:
        self.phase = "setup"
        self.batches = 0
        self.step_of_batch: dict[str, int] = {}
        self.calls: list[tuple[str, str]] = []
        self._depth = 0

    def patch(self) -> None:
        for name in COLLECTIVES:
            if hasattr(dist, name):
                setattr(dist, name, self._wrap(name, getattr(dist, name)))

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self._depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.calls.append((self.phase, name))

        return counted

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.phase = f"batch{self.batches}"
        self.batches += 1

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.step_of_batch[self.phase] = trainer.global_step  # this runs before the policy's own batch end

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.phase = "validation"

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.phase = "epoch_end"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_ranks(rank: int, world: int, port: int) -> None:
    """This process is rank ``rank`` of ``world`` on one node, started externally (as srun does)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0", OMP_NUM_THREADS="1")
    for var in [v for v in os.environ if v.startswith("SLURM_")]:
        del os.environ[var]  # never mistaken for a Slurm step of the caller
    torch.set_num_threads(1)


def leave_ranks() -> None:
    """Destroy the process group Lightning made before the rank process exits: left to the interpreter's exit,
    gloo's threads are torn down unjoined and the process may abort ("terminate called without an active
    exception", seen once in CI), which fails the test for a reason that has nothing to do with it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def two_rank_cell(run_dir: Path, **sections: Any) -> CellConfig:
    cfg = cell_config(run_dir, **sections)
    cfg.trainer.devices, cfg.trainer.strategy = 2, "ddp"
    return cfg


def _count_rank(rank: int, world: int, port: int, cfg: CellConfig, out: str) -> None:
    join_ranks(rank, world, port)
    os.environ.update(MKF_PREEMPT_CHECK_STEPS="4", MKF_CHECKPOINT_EVERY_S="3600")
    counter = CollectiveCounter()
    counter.patch()
    callbacks, plugins = slurm_task.slurm_extras(Path(cfg.run_dir))  # what `mkf train` uses inside Slurm
    try:
        train_cell(cfg, callbacks=[counter, *callbacks], plugins=[p for p in plugins if not isinstance(
            p, L.pytorch.plugins.environments.SLURMEnvironment)])
    finally:
        leave_ranks()
    Path(out, f"rank{rank}.json").write_text(json.dumps({"calls": counter.calls, "steps": counter.step_of_batch}))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_ranks_have_no_collective_on_ordinary_steps_and_one_per_check(tmp_path: Path) -> None:
    cfg = two_rank_cell(tmp_path / "cell", data={"batch_size": 32})  # 512 samples / 2 ranks / 32 = 8 steps
    mp.spawn(_count_rank, args=(2, free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        steps = record["steps"]
        assert len(steps) == 8, steps
        per_batch = {phase: [name for p, name in record["calls"] if p == phase] for phase in steps}
        for phase, step in steps.items():
            expected = ["all_reduce"] if step % 4 == 0 else []  # the agreement of MKF_PREEMPT_CHECK_STEPS=4
            assert per_batch[phase] == expected, (rank, phase, step, per_batch)


class _SignalMidWindow(L.Callback):
    """Sends this process a real USR1 right after the first micro-batch of the third accumulation window."""

    def __init__(self, at_batch: int) -> None:
        self.at_batch = at_batch

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_idx == self.at_batch:
            os.kill(os.getpid(), signal.SIGUSR1)


class _SaveLog(L.Callback):
    """Where every checkpoint was written: (batch index in the epoch, global step)."""

    def __init__(self) -> None:
        self.batch_idx = -1
        self.saves: list[tuple[int, int]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.batch_idx = batch_idx

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.saves.append((self.batch_idx, trainer.global_step))


@pytest.fixture
def own_signals() -> Iterator[None]:
    """The handler installs USR1/TERM handlers in this (pytest's) process: put pytest's back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def test_checkpoints_only_at_accumulation_window_ends(tmp_path: Path, own_signals: None) -> None:
    """accumulate_grad_batches 3: periodic checkpoints every optimizer step and a preemption signalled in the
    middle of a window all land on window ends (the accumulated gradient is in no checkpoint)."""
    cfg = cell_config(tmp_path / "cell", trainer={"accumulate_grad_batches": 3, "checkpoint_every_n_steps": 1},
                      data={"batch_size": 32})
    log = _SaveLog()
    handler = resume.PreemptionHandler(tmp_path / "cell" / "checkpoints" / "preempt.ckpt",
                                       requeue=lambda: False, signals=(signal.SIGUSR1,), requeue_on=())
    with pytest.raises(resume.Preempted, match="SIGUSR1"):
        train_cell(cfg, callbacks=[handler, log, _SignalMidWindow(at_batch=6)])  # batch 6 opens window 3
    assert log.saves, "no checkpoint was written"
    for batch_idx, step in log.saves:
        assert (batch_idx + 1) % 3 == 0 and step == (batch_idx + 1) // 3, log.saves
    assert log.saves[-1] == (8, 3)  # the preemption checkpoint: at the end of the window it was signalled in
    assert resume.checkpoint_step(tmp_path / "cell" / "checkpoints" / "preempt.ckpt") == 3


class _CrashAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("crash")


def test_periodic_checkpoint_is_the_last_ckpt_resume_reads(tmp_path: Path) -> None:
    """After an epoch end has written last.ckpt, the periodic step checkpoint overwrites it (no last-v1.ckpt),
    and a crash resumes from the newest periodic step."""
    cfg = cell_config(tmp_path / "cell", trainer={"max_epochs": 2, "checkpoint_every_n_steps": 10})  # 8 steps/epoch
    with pytest.raises(RuntimeError, match="crash"):
        train_cell(cfg, callbacks=[_CrashAt(14)])  # last.ckpt at the epoch end (step 8), periodic at step 10
    ckpts = sorted(p.name for p in (tmp_path / "cell" / "checkpoints").iterdir())
    assert not [n for n in ckpts if n.startswith("last-v")], ckpts
    chosen = resume_checkpoint(tmp_path / "cell")
    assert chosen is not None and chosen.name == "last.ckpt" and resume.checkpoint_step(chosen) == 10
    result = train_cell(cfg)
    assert result["resumed_from"] == "last.ckpt" and result["steps"] == 16
    assert not (tmp_path / "cell" / "checkpoints").exists(), "finished: its checkpoints are not kept"
