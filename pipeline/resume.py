"""Surviving interruptions: atomic checkpoints, mid-epoch data position, RNG state, and preemption signals.

The contract: a job killed or preempted at any moment resumes from the newest *valid* checkpoint and, for the
same seed, ends with the same weights as a run that was never interrupted. Scheduler specifics (how to requeue)
are injected by the launcher, so this module knows signals and checkpoints, not Slurm.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.cloud_io import _atomic_save
from lightning.pytorch.plugins.io import TorchCheckpointIO

from datamodules.samplers import ResumePosition


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temp file, then rename: a crash mid-write never leaves a torn file to resume from."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        _atomic_save(checkpoint, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)


def is_valid_checkpoint(path: Path) -> bool:
    """Loadable as a Lightning checkpoint (memory-mapped, so checking costs no copy of the weights)."""
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:
        return False
    return isinstance(ckpt, dict) and "state_dict" in ckpt and "loops" in ckpt


def checkpoint_step(path: Path) -> int | None:
    """The ``global_step`` stored in a Lightning checkpoint, or None if it does not load (torn, missing)."""
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:
        return None
    if not (isinstance(ckpt, dict) and "state_dict" in ckpt and "loops" in ckpt):
        return None
    return int(ckpt.get("global_step", 0))


def newest_valid_checkpoint(candidates: list[Path]) -> Path | None:
    """The valid checkpoint among ``candidates`` that got furthest (highest stored global_step).

    Chosen by what the files hold, never by modification time: on shared filesystems ranks can see different
    mtimes, and every rank must resume from the same step. Ties go to the earlier candidate (the caller's order).
    """
    steps = [(step, -i, p) for i, p in enumerate(candidates) if p.is_file() and (step := checkpoint_step(p)) is not None]
    return max(steps)[2] if steps else None


class TrainingState(L.Callback):
    """Saves what Lightning's checkpoint lacks for an exact resume: the data position and the RNG states."""

    def __init__(self, position: ResumePosition) -> None:
        self.position = position
        self.batches_done = 0
        self.epoch = 0
        self.batches_per_epoch = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.batches_done, self.epoch = 0, trainer.current_epoch  # not called when resuming mid-epoch

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        # counted at the start, so a checkpoint written by any callback at this batch's end includes it
        self.batches_done += 1
        self.batches_per_epoch = int(trainer.num_training_batches)

    def state_dict(self) -> dict[str, Any]:
        epoch, done = self.epoch, self.batches_done
        if self.batches_per_epoch and done >= self.batches_per_epoch:  # saved at an epoch's end
            epoch, done = epoch + 1, 0
        own = _rng_states()
        # Lightning writes rank 0's callback state only, but every rank calls this (collectively) when a checkpoint
        # is saved: gather each rank's generators so that each rank restores its own streams (drop path on its
        # GPU, its loader's augmentations), not rank 0's
        ranks = _gather(own)
        return {"epoch": epoch, "batches_done": done, **own, "ranks": ranks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.batches_done = state["epoch"], state["batches_done"]
        self.position.set(state["epoch"], state["batches_done"])
        rank = _rank()
        ranks = state.get("ranks") or []
        _set_rng_states(ranks[rank] if rank < len(ranks) else state)


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _gather(own: dict[str, Any]) -> list[dict[str, Any]]:
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [own]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, own)
    return gathered


def _rng_states() -> dict[str, Any]:
    return {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": _own_cuda_rng(),
        # plain lists: checkpoints must load with torch.load(weights_only=True)
        "numpy_rng": _numpy_state(),
        "python_rng": random.getstate(),
    }


def _set_rng_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch_rng"])
    _restore_own_cuda_rng(state["cuda_rng"])
    name, keys, pos, has_gauss, gauss = state["numpy_rng"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python_rng"])


def _own_cuda_rng() -> list[torch.Tensor]:
    """[state of this process's current CUDA device], or [] without CUDA."""
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_rng_state(torch.cuda.current_device())]


def _restore_own_cuda_rng(states: list[torch.Tensor]) -> None:
    """Set the current device's generator from a saved [state]; never indexes devices this node lacks.

    Older checkpoints hold every device's state (get_rng_state_all); their first entry is the saving rank's device
    0, the best available match, and no IndexError on a node with fewer GPUs.
    """
    if states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states[0], torch.cuda.current_device())


def _numpy_state() -> list[Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return [name, keys.tolist(), pos, has_gauss, gauss]


class Preempted(Exception):
    """Training stopped on a preemption signal right after checkpointing; the cell is not finished."""


class PreemptionHandler(L.Callback):
    """On a preemption signal: checkpoint at a batch boundary every rank agrees on, requeue if asked, stop.

    Two signals mean "you are being preempted": USR1, which Slurm sends ``--signal=USR1@grace`` seconds before the
    time limit (the job must requeue itself: ``requeue`` is called), and TERM, which a real preemption
    (``PreemptMode=REQUEUE``), ``scontrol requeue`` or a drained node sends before KILL (Slurm requeues the job
    itself, so ``requeue`` is not called). The signal handler only records the signal; the checkpoint is written
    between steps (never mid-update). Ranks agree on the stopping step through one boolean all-reduce every
    ``check_every_n_steps`` batches (every batch when there is a single rank, where the check costs nothing):
    on GPUs a per-step collective would stall the pipeline, and the grace time is far longer than N steps.
    """

    def __init__(self, checkpoint_path: Path, requeue: Callable[[], bool],
                 signals: tuple[int, ...] = (signal.SIGUSR1, signal.SIGTERM), requeue_on: tuple[int, ...] = (
                     signal.SIGUSR1,), check_every_n_steps: int = 1) -> None:
        self.checkpoint_path = checkpoint_path
        self.requeue = requeue
        self.signals = signals
        self.requeue_on = requeue_on
        self.check_every_n_steps = max(1, check_every_n_steps)
        self.signum: int | None = None  # the first preemption signal received
        self.preempted = False
        self.requeued = False
        self._batches = 0

    @property
    def signalled(self) -> bool:
        return self.signum is not None

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum

    def _install(self) -> None:
        for signum in self.signals:
            signal.signal(signum, self._on_signal)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._install()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning installs its own SIGTERM handler after `setup` (it broadcasts from inside the handler and
        # stops at the end of the same batch, on each rank separately); ours replaces it for the fit
        self._install()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._batches += 1
        if trainer.world_size > 1 and self._batches % self.check_every_n_steps:
            return
        if not trainer.strategy.reduce_boolean_decision(self.signalled, all=False):
            return
        trainer.save_checkpoint(self.checkpoint_path)
        self.preempted = True
        signum = self.signum if self.signum is not None else signal.SIGUSR1  # a rank that got no signal itself
        if trainer.is_global_zero and signum in self.requeue_on:
            self.requeued = self.requeue()
        name = signal.Signals(signum).name
        # raise rather than should_stop: no validation or epoch-end checkpoint may follow the preemption point
        raise Preempted(f"checkpointed at step {trainer.global_step} on {name}")
