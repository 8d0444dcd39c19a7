"""`mkf bench train`: what Lightning costs per training step, against a plain PyTorch loop doing the same work.

Both sides train the same architecture from the same initial weights on the same real Fashion-MNIST batches
(already in memory, so the loader is not measured), with the same optimizer, schedule, loss and top-1 metric.
Runs alternate (plain, Lightning, plain, ...) so machine noise hits both alike; medians are compared.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from pipeline.config import ModelConfig, OptimConfig
from pipeline.training.classifier import ImageClassifier


class _Timer(L.Callback):
    """Wall time of the steps after ``warmup``, measured at batch boundaries like the plain loop's."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.end = time.perf_counter()


class _TimedCallbacks(L.Callback):
    """Forwards the hooks the monitoring callbacks use and adds up the wall time spent in them.

    On a shared machine the loop-vs-loop ratio moves by several % between runs; the time inside the monitoring
    hooks is what they cost, whatever the machine's load.
    """

    HOOKS = ("setup", "on_fit_start", "on_train_start", "on_train_epoch_start", "on_train_epoch_end",
             "on_train_batch_start", "on_train_batch_end")

    def __init__(self, callbacks: list[L.Callback]) -> None:
        self.callbacks, self.seconds = callbacks, 0.0
        for hook in self.HOOKS:
            setattr(self, hook, self._forward(hook))

    def _forward(self, hook: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            for callback in self.callbacks:
                getattr(callback, hook)(*args, **kwargs)
            self.seconds += time.perf_counter() - start
        return call


def _batches(batch_size: int, image_size: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from datamodules.loaders.memory import FashionMNISTDataModule, fashion_batch_transform

    dm = FashionMNISTDataModule(batch_size=batch_size, max_train_samples=batch_size * count)
    dm.setup()
    images, labels = dm.train_set.tensors  # type: ignore[union-attr]
    x = fashion_batch_transform(images, image_size, train=False)
    return [(x[i * batch_size:(i + 1) * batch_size], labels[i * batch_size:(i + 1) * batch_size]) for i in range(count)]


def _plain(module: ImageClassifier, batches: list[Any], total: int, warmup: int) -> float:
    """The loop a user would write by hand around the same module's pieces."""
    module.train()
    optimizer_cfg = module.configure_optimizers_plain(total)
    optimizer, scheduler = optimizer_cfg
    start = 0.0
    for step in range(total):
        if step == warmup:
            start = time.perf_counter()
        images, labels = batches[step % len(batches)]
        logits = module(images)
        loss = module.loss(logits, labels)
        module.train_top1(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - start


_MONITORING_S: list[float] = []  # seconds spent in the monitoring hooks, per Lightning run


def _lightning(module: ImageClassifier, batches: list[Any], total: int, warmup: int, log_every: int) -> float:
    """As a cell trains: a CSV logger and the monitoring callbacks (lr per group, throughput, data wait)."""
    import tempfile

    from lightning.pytorch.loggers import CSVLogger

    from pipeline.training.monitoring import monitoring_callbacks

    # the same ready-made batches as the plain loop, cycled (batch_size=None: no per-sample collation)
    loader = DataLoader([batches[step % len(batches)] for step in range(total)], batch_size=None)
    timer = _Timer(warmup)
    monitoring = _TimedCallbacks(monitoring_callbacks(batches[0][0].shape[0]))
    with tempfile.TemporaryDirectory() as logs:
        trainer = L.Trainer(max_steps=total, accelerator="cpu", devices=1, logger=CSVLogger(logs),
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            limit_val_batches=0, log_every_n_steps=log_every, callbacks=[timer, monitoring])
        trainer.fit(module, train_dataloaders=loader)
    _MONITORING_S.append(monitoring.seconds / total)
    return timer.end - timer.start


def bench_train(arch: str = "convnext_demo", batch_size: int = 128, steps: int = 60, warmup: int = 10,
                image_size: int = 32, repeats: int = 3, out_json: str | None = None,
                console: Console | None = None, log_every: int = 10) -> dict[str, Any]:
    """Plain loop vs Lightning; the Lightning side logs like a cell (CSV every ``log_every`` steps, monitoring)."""
    console = console or Console()
    batches = _batches(batch_size, image_size, count=8)
    total = warmup + steps
    model_cfg, optim_cfg = ModelConfig(arch=arch), OptimConfig(warmup_steps=5)
    L.seed_everything(0, verbose=False)
    init = ImageClassifier(model_cfg, optim_cfg, num_classes=10).state_dict()
    times: dict[str, list[float]] = {"plain": [], "lightning": []}
    _MONITORING_S.clear()
    for _ in range(repeats):
        for name, run in (("plain", _plain), ("lightning", _lightning)):
            module = ImageClassifier(model_cfg, optim_cfg, num_classes=10)
            module.load_state_dict(init)
            args = (log_every,) if name == "lightning" else ()
            times[name].append(run(module, batches, total, warmup, *args))
    plain, light = statistics.median(times["plain"]), statistics.median(times["lightning"])
    result = {
        "arch": arch, "batch_size": batch_size, "image_size": image_size, "timed_steps": steps,
        "threads": torch.get_num_threads(), "plain_ms_per_step": 1000 * plain / steps,
        "lightning_ms_per_step": 1000 * light / steps, "overhead": light / plain - 1, "log_every_n_steps": log_every,
        "runs_s": times,
        "monitoring_ms_per_step": 1000 * statistics.median(_MONITORING_S),
        "monitoring_share_of_step": statistics.median(_MONITORING_S) / (light / steps),
    }
    table = Table(title=f"training step, {arch}, batch {batch_size}, {image_size}px, {steps} steps x {repeats} "
                        f"(Lightning: CSV log + monitoring every {log_every} steps)")
    table.add_column("loop")
    table.add_column("ms/step", justify="right")
    table.add_column("images/s", justify="right")
    for name, t in (("plain PyTorch", plain), ("Lightning", light)):
        table.add_row(name, f"{1000 * t / steps:.2f}", f"{batch_size * steps / t:,.0f}")
    console.print(table)
    console.print(f"Lightning / plain = {light / plain:.3f}  (overhead {100 * (light / plain - 1):+.1f}%, target <= 5%)")
    console.print(f"monitoring hooks (LearningRateMonitor + TrainingMonitor): {result['monitoring_ms_per_step']:.3f} "
                  f"ms/step = {100 * result['monitoring_share_of_step']:.2f}% of a Lightning step")
    if out_json:
        Path(out_json).write_text(json.dumps(result, indent=2) + "\n")
    return result
