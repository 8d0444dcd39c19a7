"""What a cell costs, recorded as it trains: one entry per attempt in ``cost.json``, summed into result.json.

A cost table is only as good as what it is fitted to (pipeline.results.costs), so every cell records what it
actually spent, split the way an estimate is built: training seconds and images (the device's throughput at the
epoch's resolution), validation seconds and forwards (the live model plus, with an EMA, its copy), the loader's
wait share, peak memory, and the device time the attempt held.

**Measured once.** The training-side counts (batches, images, seconds waiting for a batch) are the
:class:`~pipeline.training.monitoring.TrainingMonitor`'s running totals; this callback adds only what the monitor
does not see: epoch and validation spans, taken at epoch and validation boundaries. On CUDA the device is
synchronised at those boundaries (a few times per epoch, never per step), so a span's host time is the device's.

**Attempts.** Each start of the cell is one attempt, identified by its start time and process. Rank 0 rewrites
its entry in ``cost.json`` (atomically) when a checkpoint is saved, when training stops on a preemption or an
error, and when the cell finishes; a resumed attempt appends its own entry, and result.json's ``cost`` is the sum
of all of them (:func:`pipeline.results.costs.sum_attempts`). An attempt killed without warning keeps its figures
up to its last checkpoint, which is what the resumed run builds on (the work after that checkpoint is lost twice:
spent, and not recorded).

**Device time.** ``gpu_hours`` = the attempt's wall time (from the start of ``train_cell`` to the result) x the
ranks it ran on; on a CPU ``cpu_core_hours`` = wall time x the process's thread budget (``torch.get_num_threads()``)
x ranks. Loader workers are listed (``workers``) but not counted as cores: on a GPU node they come with the
allocation, and on a CPU they share the same cores.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from pipeline.results.costs import COST_FILE, device_type, sum_attempts
from pipeline.results.run_folder import write_json_atomic
from pipeline.schedule import progressive_resolution
from pipeline.training.monitoring import TrainingMonitor, _peak_host_memory_gb


def read_cost_file(run_dir: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads((run_dir / COST_FILE).read_text())
    except (OSError, ValueError):
        return {"attempts": []}
    return data if isinstance(data, dict) and isinstance(data.get("attempts"), list) else {"attempts": []}


class CostRecorder(L.Callback):
    """The attempt's cost: spans of training epochs and validation, with the monitor's counts (see module doc)."""

    def __init__(self, run_dir: Path, monitor: TrainingMonitor, *, started: float, image_size: int,
                 val_image_size: int, progressive: dict[str, Any] | None = None, ema: bool = False,
                 workers: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.monitor = monitor
        self.started = started  # wall clock (time.time()) when train_cell began this attempt
        self.image_size, self.val_image_size = image_size, val_image_size
        self.progressive = progressive
        self.ema = ema
        self.workers = workers
        self.attempt = f"{started:.3f}-{os.getpid()}"
        self.status = "running"
        self.by_resolution: dict[int, dict[str, float]] = {}  # train resolution -> closed epochs' seconds, images
        self.val = {"s": 0.0, "images": 0, "passes": 0, "sanity_s": 0.0}
        self._epoch: tuple[float, int, float, int] | None = None  # (start, resolution, images, wait) when opened
        self._val_in_epoch = 0.0
        self._val_start: float | None = None
        self._fit_start: float | None = None
        self._fit_s = 0.0
        self._steps_start: int | None = None
        self._steps_end = 0
        self._device = "cpu"
        self._world = 1
        self._cuda: torch.device | None = None

    # -- clocks ----------------------------------------------------------------------------------------------
    def _sync(self) -> None:
        if self._cuda is not None:
            torch.cuda.synchronize(self._cuda)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        root = trainer.strategy.root_device
        self._cuda = root if root.type == "cuda" else None
        self._device = torch.cuda.get_device_name(root) if self._cuda is not None else "cpu"
        self._world = trainer.world_size
        self._fit_start = time.perf_counter()
        if self._cuda is not None:
            torch.cuda.reset_peak_memory_stats(self._cuda)
        self._write(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after a checkpoint was restored: the step this attempt starts from, and -- resumed mid-epoch, where
        # Lightning calls no on_train_epoch_start -- the epoch already under way
        self._steps_start = trainer.global_step
        self._open_epoch(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._open_epoch(trainer)

    def _open_epoch(self, trainer: L.Trainer) -> None:
        self._sync()
        size = progressive_resolution(self.progressive, trainer.current_epoch, self.image_size)
        totals = self.monitor.totals
        self._epoch = (time.perf_counter(), size, totals["images"], totals["wait_s"])
        self._val_in_epoch = 0.0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_epoch()

    def _close_epoch(self, keep_open: bool = False) -> None:
        """Add the open epoch's training seconds (its span less its validation) and images to its resolution."""
        if self._epoch is None:
            return
        start, size, images, wait = self._epoch
        now = time.perf_counter()
        totals = self.monitor.totals
        entry = self.by_resolution.setdefault(size, {"train_s": 0.0, "images": 0, "wait_s": 0.0})
        entry["train_s"] += max(0.0, now - start - self._val_in_epoch)
        entry["images"] += totals["images"] - images
        entry["wait_s"] += totals["wait_s"] - wait
        self._epoch = (now, size, totals["images"], totals["wait_s"]) if keep_open else None
        self._val_in_epoch = 0.0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync()
        self._val_start = time.perf_counter()

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            first = batch[0] if isinstance(batch, list | tuple) else batch
            self.val["images"] += int(first.shape[0]) if hasattr(first, "shape") else 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_start is None:
            return
        self._sync()
        span = time.perf_counter() - self._val_start
        self._val_start = None
        if trainer.sanity_checking:
            self.val["sanity_s"] += span
            return
        self.val["s"] += span
        self.val["passes"] += 1
        if self._epoch is not None:
            self._val_in_epoch += span

    # -- when the record is written --------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._write(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_epoch()
        self._end_fit(trainer)
        self._write(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close_epoch()
        self._end_fit(trainer)
        self.status = "preempted" if type(exception).__name__ == "Preempted" else "failed"
        self._write(trainer)

    def _end_fit(self, trainer: L.Trainer) -> None:
        if self._fit_start is not None:
            self._fit_s += time.perf_counter() - self._fit_start
            self._fit_start = None
        self._steps_end = trainer.global_step

    def finish(self, trainer: L.Trainer) -> dict[str, Any]:
        """The finished cell's cost (every attempt summed): written to cost.json, returned for result.json."""
        self.status = "finished"
        return sum_attempts(self._write(trainer)["attempts"])

    def entry(self, trainer: L.Trainer | None = None) -> dict[str, Any]:
        """This attempt's figures so far (an open epoch counted up to now)."""
        self._close_epoch(keep_open=self._epoch is not None)
        fit_s = self._fit_s + (time.perf_counter() - self._fit_start if self._fit_start is not None else 0.0)
        wall = time.time() - self.started
        threads = torch.get_num_threads()
        gpu = self._cuda is not None
        steps = trainer.global_step if trainer is not None else self._steps_end
        return {
            "attempt": self.attempt, "status": self.status, "started_at": round(self.started, 3),
            "updated_at": round(time.time(), 3), "device": self._device, "device_type": device_type(self._device),
            "devices": self._world, "threads": threads, "workers": self.workers,
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "wall_s": round(wall, 3), "fit_s": round(fit_s, 3),
            "train_s": round(sum(e["train_s"] for e in self.by_resolution.values()), 3),
            "val_s": round(self.val["s"], 3), "sanity_val_s": round(self.val["sanity_s"], 3),
            "train_images": int(sum(e["images"] for e in self.by_resolution.values())) * self._world,
            "wait_s": round(sum(e["wait_s"] for e in self.by_resolution.values()), 3),
            "by_resolution": {str(size): {"train_s": round(e["train_s"], 3), "images": int(e["images"]) * self._world,
                                          "wait_s": round(e["wait_s"], 3)}
                              for size, e in sorted(self.by_resolution.items())},
            "val_images": int(self.val["images"]) * self._world, "val_passes": int(self.val["passes"]),
            "val_forwards": int(self.val["images"]) * self._world * (2 if self.ema else 1),
            "val_resolution": self.val_image_size,
            "steps": [self._steps_start, steps],
            "peak_device_memory_gb": (round(torch.cuda.max_memory_allocated(self._cuda) / 2**30, 3) if gpu else None),
            "peak_host_rss_gb": round(_peak_host_memory_gb(), 3),
            "gpu_hours": round(wall * self._world / 3600, 6) if gpu else None,
            "cpu_core_hours": None if gpu else round(wall * threads * self._world / 3600, 6),
        }

    def _write(self, trainer: L.Trainer | None) -> dict[str, Any]:
        """Replace this attempt's entry in cost.json (rank 0 only); earlier attempts' entries stay."""
        data = read_cost_file(self.run_dir)
        entry = self.entry(trainer)
        if trainer is not None and not trainer.is_global_zero:
            return {"attempts": [*data["attempts"], entry]}
        data["attempts"] = [a for a in data["attempts"] if a.get("attempt") != self.attempt] + [entry]
        write_json_atomic(self.run_dir / COST_FILE, data)
        return data
