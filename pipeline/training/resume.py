"""Surviving interruptions: atomic checkpoints, mid-epoch data position, RNG state, and preemption signals.

The contract: a job killed or preempted at any moment resumes from the newest *valid* checkpoint and, for the
same seed, ends with the same weights as a run that was never interrupted. Scheduler specifics (how to requeue)
are injected by the launcher, so this module knows signals and checkpoints, not Slurm.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn

from datamodules.errors import UserError
from datamodules.loaders.samplers import ResumePosition


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temp file beside the target, then rename: a crash mid-write never leaves a torn file
    to resume from.

    ``torch.save`` streams into the temp file itself, on the run folder's own filesystem: no second full copy of the
    checkpoint in memory (Lightning's ``_atomic_save`` serialises into a BytesIO first, then writes it through
    fsspec, which may stage it in ``$TMPDIR``: twice the RAM and three passes of I/O, and a tmpfs /tmp counted
    against the job's memory could OOM it at the worst moment). A write killed midway leaves ``.<name>.tmp-<pid>``,
    which the next attempt deletes (launch.worker.lifecycle.clean_partial_writes).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename durable: fsync the directory that holds the renamed entry (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class EpochCheckpoint(ModelCheckpoint):
    """``last.ckpt`` at every epoch's end (the resume point between epochs); ``best.ckpt`` only when the cell
    keeps its checkpoints. After the final epoch nothing is written unless they are kept: the cell's weights and
    result follow at once and its checkpoints would be deleted again (trainer.keep_checkpoints), a write of 3-4x
    the weights for nothing. A crash in that gap resumes from the previous epoch's last.ckpt, as exactly."""

    def __init__(self, dirpath: Path, keep: bool) -> None:
        super().__init__(dirpath=dirpath, filename="best", monitor="val/top1" if keep else None, mode="max",
                         save_top_k=1 if keep else 0, save_last=True, enable_version_counter=False)
        self.keep = keep

    def _final(self, trainer: L.Trainer) -> bool:
        steps_done = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        return steps_done or trainer.current_epoch + 1 >= (trainer.max_epochs or 1)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.keep or not self._final(trainer):
            super().on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.keep or not self._final(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.keep:  # Lightning saves last.ckpt once more when training ends (Lightning >= 2.5)
            super().on_train_end(trainer, pl_module)


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
    """Saves what Lightning's checkpoint lacks for an exact resume: the data position and each rank's RNG states.

    It also gives every rank its own random streams (drop path, Mixup/CutMix, random erasing, augmentation in the
    training process): ``seed_everything(seed)`` before the build makes model init and data identical on every
    rank, and then every rank drew the *same* masks and boxes. At fit start (not on a resume, which restores each
    rank's saved streams instead) rank r > 0 reseeds with ``seed + r``; rank 0 keeps the stream the build left, so
    a one-rank run is bit-identical to what it was before ranks were seeded apart.
    """

    def __init__(self, position: ResumePosition, seed: int | None = None, world_size: int | None = None) -> None:
        self.position = position
        self.seed = seed
        # a checkpoint resumes only on the world size that wrote it: the epoch's split between ranks, the global
        # batch and the LR schedule all follow from it, so another size would repeat some samples and skip others
        self.world_size = world_size
        self.batches_done = 0
        self.epoch = 0
        self.batches_per_epoch = 0
        self.restored = False  # set by load_state_dict: the RNG states came from a checkpoint

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after the checkpoint's callback states were loaded and before the loaders' iterators (worker seeds) exist
        if self.seed is not None and not self.restored and trainer.global_rank > 0:
            seed_rank(self.seed, trainer.global_rank)

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
        return {"epoch": epoch, "batches_done": done, **own, "ranks": ranks, "world_size": len(ranks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("world_size") or len(state.get("ranks") or []) or None
        if saved is not None and self.world_size is not None and saved != self.world_size:
            raise UserError(f"the cell's checkpoint was written by {saved} ranks but this attempt has "
                            f"{self.world_size}: a resume must keep the world size (the epoch's split between "
                            "ranks and the global batch follow from it); rerun with the same devices x nodes, or "
                            "delete the run folder's checkpoints/ to restart the cell")
        self.restored = True
        self.epoch, self.batches_done = state["epoch"], state["batches_done"]
        self.position.set(state["epoch"], state["batches_done"])
        rank = _rank()
        ranks = state.get("ranks") or []
        _set_rng_states(ranks[rank] if rank < len(ranks) else state)


def seed_rank(seed: int, rank: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device) with ``seed + rank``."""
    L.seed_everything(seed + rank, workers=True, verbose=False)


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
    """The cell's checkpoint policy: preemption, periodic step and time checkpoints, decided between optimizer steps.

    Preemption: two signals mean "you are being preempted": USR1, which Slurm sends ``--signal=USR1@grace``
    seconds before the time limit (the job must requeue itself: ``requeue`` is called), and TERM, which a real
    preemption (``PreemptMode=REQUEUE``), ``scontrol requeue`` or a drained node sends before KILL (Slurm requeues
    the job itself, so ``requeue`` is not called). The signal handler only records the signal; ``preempt.ckpt``
    is written between optimizer steps (never mid-update, never inside a gradient-accumulation window, whose
    accumulated gradient a checkpoint does not hold).

    Periodic checkpoints go to ``last_path`` (the file resume reads), never to a versioned ``last-v1.ckpt``:
    every ``every_n_steps`` optimizer steps (all ranks count the same steps: no collective needed) and, when
    ``interval_s`` is set, once that much wall time has passed (each rank's own clock: agreed on).

    Agreement: what only one rank may know (a signal, its clock) is agreed on through ONE all-reduce (max) of
    ``[signalled, time due]`` every ``check_every_n_steps`` optimizer steps; ordinary steps have no collective and
    no host sync (GPU pipelines stall on both; the grace time is far longer than N steps). With one rank the
    check is local and runs every step. Lightning's own SIGTERM handling is switched off for the fit while this
    handler owns signals: it broadcasts from inside the signal handler (a deadlock when only some ranks got the
    signal), stops each rank on its own, and broadcasts a "SIGTERM?" flag from rank 0 on every training batch.
    """

    def __init__(self, checkpoint_path: Path, requeue: Callable[[], bool] | None = None,
                 signals: tuple[int, ...] = (signal.SIGUSR1, signal.SIGTERM), requeue_on: tuple[int, ...] = (
                     signal.SIGUSR1,), check_every_n_steps: int = 1, last_path: Path | None = None,
                 every_n_steps: int | None = None, interval_s: float | None = None,
                 on_preempt: Callable[[int], None] | None = None) -> None:
        self.checkpoint_path = checkpoint_path
        self.on_preempt = on_preempt  # rank 0, once stopping is agreed and before the checkpoint is written
        self.requeue = requeue
        self.signals = signals
        self.requeue_on = requeue_on
        self.check_every_n_steps = max(1, check_every_n_steps)
        self.last_path = last_path
        self.every_n_steps = every_n_steps or 0
        self.interval_s = interval_s if interval_s and interval_s > 0 else None
        self.signum: int | None = None  # the first preemption signal received
        self.preempted = False
        self.requeued = False
        self.checks = 0  # agreements made (each one collective when there are several ranks)
        self._step_at_batch_start = 0
        self._last_save = time.monotonic()
        self._blocked = False

    @property
    def signalled(self) -> bool:
        return self.signum is not None

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum

    def install(self, earlier: int | None = None) -> None:
        """Handle the preemption signals from now on: called by the launcher before data and model are built (a
        signal then is recorded, not fatal, and stops the cell before its first step), again at setup and at
        train start. ``earlier``: a signal the launcher's own early handler recorded before this one existed."""
        if earlier is not None and self.signum is None:
            self.signum = earlier
        for signum in self.signals:
            signal.signal(signum, self._on_signal)

    def _block(self) -> None:
        """Block the signals in the main thread for the fit; a check reads them from the pending set.

        Loader workers are forked from this thread and inherit its mask: torch's worker installs its own TERM
        handler (which dies on a TERM not sent by its parent) before ``worker_init_fn`` can ignore TERM, and a
        Slurm TERM in that window killed the worker (measured: 23 of 30 workers signalled right after the fork
        died). With the signals blocked, the pending TERM is discarded once the worker ignores it.
        """
        if threading.current_thread() is threading.main_thread():
            signal.pthread_sigmask(signal.SIG_BLOCK, self.signals)
            self._blocked = True

    def _poll(self) -> None:
        """Take a signal left pending by the blocked mask (one that no unblocked thread received)."""
        if not self._blocked:
            return
        pending = signal.sigpending() & set(self.signals)
        for signum in self.signals:
            if signum in pending:
                signal.sigtimedwait([signum], 0)  # consume it
                if self.signum is None:
                    self.signum = signum

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._blocked:
            self._poll()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self.signals)
            self._blocked = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.signals:
            return
        self.install()
        self._block()
        # Lightning registers its SIGTERM handler (composed with ours) after `setup`, and its training loop
        # broadcasts a SIGTERM flag on every batch: both replaced by this handler's agreement (see the class doc)
        connector = trainer._signal_connector
        connector.register_signal_handlers = lambda: None  # type: ignore[method-assign]
        epoch_loop = trainer.fit_loop.epoch_loop
        if hasattr(epoch_loop, "_broadcast_sigterm_tensor"):  # Lightning >= 2.5.1
            epoch_loop._broadcast_sigterm_tensor = lambda: None  # type: ignore[method-assign]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_save = time.monotonic()
        if self.signals:
            self.install()  # in case anything (a logger's service, a library) replaced ours meanwhile
            # a signal during data loading or model building: stop before the first step (one collective per fit)
            if self._agree(trainer, time_due=False)[0]:
                self._stop(trainer, save=False)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if step == self._step_at_batch_start:  # inside a gradient-accumulation window: no optimizer step yet
            return
        preempt = time_due = False
        if self.signals or self.interval_s:
            time_due = self.interval_s is not None and time.monotonic() - self._last_save >= self.interval_s
            if trainer.world_size == 1 or step % self.check_every_n_steps == 0:
                preempt, time_due = self._agree(trainer, time_due)
            else:
                time_due = False  # only an agreed decision may checkpoint: every rank must save collectively
        if preempt:
            self._stop(trainer, save=True)
        if self.last_path is not None and (time_due or (self.every_n_steps and step % self.every_n_steps == 0)):
            trainer.save_checkpoint(self.last_path)
            self._last_save = time.monotonic()

    # -- during validation: a long pass must not outlast the grace period unheard ---------------------------------
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Agree on how many validation batches every rank will see (ranks may hold one more or one fewer): the
        checks below are collectives, so only batches every rank reaches may hold one."""
        self._val_checks = 0
        in_fit = trainer.state.fn == TrainerFn.FITTING
        if not self.signals or not in_fit or trainer.sanity_checking:  # a fit's own passes (a checkpoint resumes it)
            self._val_common = 0
            return
        batches = trainer.num_val_batches
        mine = int(sum(batches) if isinstance(batches, list) else batches)
        if trainer.world_size > 1:
            count = torch.tensor([float(mine)], device=trainer.strategy.root_device)
            torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MIN)
            mine = int(count.item())
        self._val_common = mine

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        """A preemption signal during validation: checkpoint the training state (the last optimizer step is
        complete) and stop, instead of finishing a pass that may outlast the grace period (KillWait then kills
        the job and the attempt counts as a failure). Checked every ``check_every_n_steps`` batches."""
        common = getattr(self, "_val_common", 0)
        if not common or batch_idx >= common:
            return
        if trainer.world_size > 1 and (batch_idx + 1) % self.check_every_n_steps:
            return
        if self._agree(trainer, time_due=False)[0]:
            self._stop(trainer, save=True)

    def _agree(self, trainer: L.Trainer, time_due: bool) -> tuple[bool, bool]:
        """(any rank signalled, any rank's clock due): one all-reduce (max) of one flag per signal and the clock's.

        Every rank learns *which* signal arrived, also a rank that got none itself: rank 0 must requeue on a USR1
        that only rank 5 got, and must not on a TERM (Slurm requeues the job itself then).
        """
        self.checks += 1
        self._poll()
        if trainer.world_size == 1:
            return self.signalled, time_due
        flags = torch.tensor([float(self.signum == s) for s in self.signals] + [float(time_due)],
                             device=trainer.strategy.root_device)
        # torch's all_reduce itself: Lightning's strategy.reduce adds a barrier (a second collective)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        *got, due = flags.tolist()
        seen = [s for s, flag in zip(self.signals, got, strict=True) if flag > 0]
        if seen and self.signum is None:  # TERM before USR1: when Slurm itself requeues, the cell must not
            self.signum = next((s for s in seen if s not in self.requeue_on), seen[0])
        return bool(seen), due > 0

    def _stop(self, trainer: L.Trainer, save: bool) -> None:
        signum = self.signum if self.signum is not None else signal.SIGUSR1
        if self.on_preempt is not None and trainer.is_global_zero:
            self.on_preempt(signum)  # recorded first: a checkpoint that outlasts KillWait is still a preemption
        if save:
            trainer.save_checkpoint(self.checkpoint_path)
        self.preempted = True
        if trainer.is_global_zero and signum in self.requeue_on and self.requeue is not None:
            self.requeued = self.requeue()
        name = signal.Signals(signum).name
        step = trainer.global_step
        where = f"checkpointed at step {step}" if save else f"stopped before training (step {step})"
        # raise rather than should_stop: no validation or epoch-end checkpoint may follow the preemption point
        raise Preempted(f"{where} on {name}")
