"""What a training run is doing, in W&B (and the CSV log): learning rates, throughput, data starvation, memory.

Everything is written on the steps Lightning's loggers write anyway (``trainer.log_every_n_steps``), straight to the
loggers: between those steps the callback only reads ``time.perf_counter`` twice per batch, so monitoring costs
nothing measurable per step (see ``mkf bench train``, which runs with these callbacks on).

Keys (``perf/`` in the history, ``params/`` in the run summary):

- ``lr-<Optimizer>/pg<N>``: learning rate of every parameter group (Lightning's ``LearningRateMonitor``)
- ``perf/step_time_s``: mean wall time per training batch over the last logging window
- ``perf/data_wait_share``: share of that time spent outside the training step (waiting for the next batch)
- ``perf/images_per_s_device`` and ``perf/images_per_s``: this rank's and all ranks' images per second
- ``perf/peak_device_memory_gb``: peak CUDA memory allocated so far (CUDA only); ``perf/peak_host_memory_gb``
  the process's peak resident memory
- ``perf/epoch_time_s``: wall time of each training epoch
- ``params/trainable``, ``params/frozen``: parameter counts, in the W&B run summary

The same clock readings also add up, for the whole attempt, into :attr:`TrainingMonitor.totals` (batches,
images, loader wait): what the cell's cost record (pipeline.training.cost) reports, measured once.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor


class TrainingMonitor(L.Callback):
    """Step time, data-wait share, images/s, peak memory and epoch time, logged on logger steps only.

    The window between two logged steps is timed on the host; on CUDA the device is synchronised once per
    logged step (not per step), so the window's time is the device's too.
    """

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self._window_start = 0.0
        self._last_end: float | None = None
        self._wait = 0.0
        self._batches = 0
        self._epoch_start = 0.0
        # the attempt's running totals (rank-local): batches, training images, seconds spent waiting for a batch
        self.totals = {"batches": 0, "images": 0, "wait_s": 0.0}

    # -- epochs ----------------------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        self._last_end = None  # the wait before an epoch's first batch includes loader start-up: not a step
        self._reset_window()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._emit(trainer, {"perf/epoch_time_s": time.perf_counter() - self._epoch_start})

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = getattr(pl_module, "model", pl_module)  # the network itself, not an EMA copy beside it
        params = list(model.parameters())
        counts = {"params/trainable": sum(p.numel() for p in params if p.requires_grad),
                  "params/frozen": sum(p.numel() for p in params if not p.requires_grad)}
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                experiment = getattr(logger, "experiment", None)
                summary = getattr(experiment, "summary", None)
                if summary is not None and hasattr(summary, "update"):  # W&B: the run summary, not a curve
                    summary.update(counts)

    # -- steps -----------------------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        now = time.perf_counter()
        if self._last_end is None:
            self._window_start = now
        else:
            self._wait += now - self._last_end
            self.totals["wait_s"] += now - self._last_end
        # counted as the batch starts: a callback that stops training at a batch's end (a preemption, after the
        # optimizer step the checkpoint holds) may end the fit before this callback's on_train_batch_end runs
        self.totals["batches"] += 1
        self.totals["images"] += _batch_images(args[1] if len(args) > 1 else None, self.batch_size)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._batches += 1
        if not trainer._logger_connector.should_update_logs:  # Lightning's own "loggers write now" rule
            self._last_end = time.perf_counter()
            return
        if torch.cuda.is_available() and trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # once per logged step: the window's host time becomes the device's
        now = time.perf_counter()
        elapsed = now - self._window_start
        if self._batches and elapsed > 0:
            per_device = self.batch_size * self._batches / elapsed
            metrics = {
                "perf/step_time_s": elapsed / self._batches,
                "perf/data_wait_share": min(1.0, self._wait / elapsed),
                "perf/images_per_s_device": per_device,
                "perf/images_per_s": per_device * trainer.world_size,
                "perf/peak_host_memory_gb": _peak_host_memory_gb(),
            }
            if torch.cuda.is_available() and trainer.strategy.root_device.type == "cuda":
                device = trainer.strategy.root_device
                metrics["perf/peak_device_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            self._emit(trainer, metrics)
        self._reset_window()
        self._last_end = self._window_start = time.perf_counter()

    def _reset_window(self) -> None:
        self._wait, self._batches = 0.0, 0

    @staticmethod
    def _emit(trainer: L.Trainer, metrics: dict[str, float]) -> None:
        # straight to the loggers (rank 0 only): self.log would cost ~1 ms of Python per key and sync nothing useful
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)


def _batch_images(batch: Any, default: int) -> int:
    """Images in a training batch, from its shape (host metadata: no device sync)."""
    first = batch[0] if isinstance(batch, list | tuple) and batch else batch
    shape = getattr(first, "shape", None)
    return int(shape[0]) if shape else default


def _peak_host_memory_gb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


def monitoring_callbacks(batch_size: int) -> list[L.Callback]:
    """Lightning's LearningRateMonitor (every param group, on logger steps) and our :class:`TrainingMonitor`."""
    return [LearningRateMonitor(logging_interval="step"), TrainingMonitor(batch_size)]
