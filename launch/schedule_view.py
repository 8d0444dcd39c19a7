"""The per-arch schedule of `mkf sweep plan`: the learning rate a cell really trains at, its optimizer steps and
the EMA's horizon, with a one-line warning where they cannot work together.

A recipe is published for its own budget (ConvNeXt: 4e-3 at a global batch of 4096, 300 epochs, an EMA of decay
0.9999). Run at another budget, two of its rules quietly stop working: linear LR scaling takes the LR down with
the batch (4e-3 x 64 / 4096 = 6.25e-5, too small to grow ConvNeXt's 1e-6 layer scales in a short run, so its
blocks stay silent and every variant scores the same), and an EMA whose horizon 1 / (1 - decay) exceeds the run
averages mostly its initial weights. This table says so before anything is spent.

Torch-free (login node): the numbers come from each plan template's resolved config. The rules mirror the
trainer: the global batch is ``data.batch_size x devices x num_nodes x accumulate_grad_batches``
(pipeline.training.train), the effective LR ``optim.lr x global / optim.base_batch_size`` under
``lr_scaling: linear`` (ImageClassifier.scaled_lr; tests/test_schedule_view.py compares the two on a real
cell), optimizer steps per epoch = ceil(batches per rank / accumulation), where a rank's batches are its share
of the training images over the batch, whole batches only (datamodules' loaders), capped by
``limit_train_batches`` and ``max_steps``. Training images come from the shards' ``index.json`` when it is on
this machine, else from configs/costs.yaml's dataset table (halved for a class-split half), reduced by
``data.subset`` / ``max_train_samples``; a dataset in neither is "unknown". ``devices: auto`` counts as one device
per node (a Slurm profile's GPUs multiply the global batch at run time, and with it the LR).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from launch.console import console

LR_CUT = 0.1  # warn when scaling leaves less than this share of the recipe's LR


@dataclass
class Schedule:
    """One template's schedule (a (stage, arch, dataset, recipe) of the plan)."""

    arch: str
    stage: str
    dataset: str
    base_lr: float
    effective_lr: float
    lr_scaling: str
    base_batch: int
    global_batch: int
    world_size: int
    accumulate: int
    devices_auto: bool
    train_images: int | None
    steps_per_epoch: int | None
    epochs: int
    max_steps: int
    steps: int | None  # optimizer steps of one cell; None = unknown
    ema_decay: float | None
    ema_every: int
    warmup_steps: int | None
    warnings: list[str] = field(default_factory=list)

    @property
    def ema_horizon(self) -> float | None:
        """Optimizer steps the EMA averages over: 1 / (1 - decay) updates, one every ``every_n_steps`` steps."""
        return self.ema_every / (1.0 - self.ema_decay) if self.ema_decay else None


def effective_lr(optim: dict[str, Any], global_batch: int) -> float:
    """ImageClassifier.scaled_lr, torch-free: ``lr x global_batch / base_batch_size`` under linear scaling."""
    if optim.get("lr_scaling") == "linear" and global_batch:
        return float(optim["lr"]) * global_batch / int(optim["base_batch_size"])
    return float(optim["lr"])


def _costs_entry(data: dict[str, Any]) -> tuple[float, dict[str, Any]] | None:
    from launch.cost import _dataset, load_costs

    try:
        table = load_costs()
    except Exception:  # a broken cost table is the cost estimate's error to report, not this table's
        return None
    _, entry = _dataset(data, table)
    return (float(entry["train_images"]), entry) if entry else None


def train_images(data: dict[str, Any]) -> int | None:
    """Training images one epoch of a cell reads (see module doc), or None when no source on this machine knows."""
    from launch.cost import train_images as reduce

    shards = data.get("shards")
    if shards and (Path(shards) / "index.json").is_file():
        try:
            index = json.loads((Path(shards) / "index.json").read_text())
            sets = index["sets"]
            name = data.get("half", "B") if data.get("split") and data.get("half") in sets else "all"
            if name in sets and (name != "all" or not data.get("split")):
                entry = {"train_images": sets[name]["train"]["samples"], "classes": len(sets[name]["classes"])}
                return int(reduce({**data, "split": None}, entry))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # an index this table cannot read: fall back to the cost table
    known = _costs_entry(data)
    return int(reduce(data, known[1])) if known else None


def schedule(template: dict[str, Any], stage: str = "", dataset: str = "") -> Schedule:
    """The schedule of one resolved cell config (or plan template)."""
    data, optim, trainer, model = template["data"], template["optim"], template["trainer"], template["model"]
    devices = trainer.get("devices", "auto")
    devices_auto = not isinstance(devices, int)
    world = (devices if isinstance(devices, int) else 1) * int(trainer.get("num_nodes", 1))
    accumulate = int(trainer.get("accumulate_grad_batches", 1))
    batch = int(data.get("batch_size", 128))
    global_batch = batch * world * accumulate
    lr = effective_lr(optim, global_batch)
    images = train_images(data)
    epochs, max_steps = int(trainer.get("max_epochs", 1) or 0), int(trainer.get("max_steps", -1) or -1)
    per_epoch = steps = None
    if images is not None:
        per_rank = images // world
        batches = per_rank // batch if per_rank >= batch else 1
        limit = trainer.get("limit_train_batches", 1.0)
        if isinstance(limit, float):
            batches = max(1, int(batches * limit))
        elif isinstance(limit, int):
            batches = min(batches, limit)
        per_epoch = math.ceil(batches / accumulate)
        steps = per_epoch * epochs if epochs > 0 else None
    if max_steps > 0:
        steps = max_steps if steps is None else min(steps, max_steps)
    warmup = optim.get("warmup_steps") or 0
    if optim.get("warmup_epochs") is not None:
        warmup = round(optim["warmup_epochs"] * per_epoch) if per_epoch else None
    ema = model.get("ema") or {}
    out = Schedule(arch=model["arch"], stage=stage, dataset=dataset, base_lr=float(optim["lr"]), effective_lr=lr,
                   lr_scaling=optim.get("lr_scaling", "none"), base_batch=int(optim.get("base_batch_size", 256)),
                   global_batch=global_batch, world_size=world, accumulate=accumulate, devices_auto=devices_auto,
                   train_images=images, steps_per_epoch=per_epoch, epochs=epochs, max_steps=max_steps, steps=steps,
                   ema_decay=ema.get("decay") if ema else None, ema_every=int(ema.get("every_n_steps", 1) or 1),
                   warmup_steps=warmup)
    out.warnings = warnings(out)
    return out


def warnings(s: Schedule) -> list[str]:
    """One line per rule the schedule breaks (what it means and what to change)."""
    out = []
    if s.effective_lr < LR_CUT * s.base_lr:
        out.append(f"{s.arch}: lr {s.base_lr:g} scaled to {s.effective_lr:.3g} (global batch {s.global_batch} of "
                   f"{s.base_batch}), < 1/10 of the recipe's: layer-scaled blocks may stay silent; raise "
                   "trainer.accumulate_grad_batches or set optim.lr_scaling: none")
    horizon = s.ema_horizon
    if horizon is not None and s.steps is not None and horizon > s.steps:
        out.append(f"{s.arch}: EMA horizon {horizon:,.0f} steps > {s.steps:,} steps per cell: val_ema/* averages "
                   f"mostly the init; set model.ema.decay <= {max(0.0, 1 - 10 * s.ema_every / s.steps):.4g} "
                   "(a tenth of the run) or drop model.ema")
    if s.warmup_steps is not None and s.steps is not None and s.warmup_steps >= s.steps > 1:
        out.append(f"{s.arch}: warmup {s.warmup_steps:,} steps >= {s.steps:,} steps per cell: the LR never peaks; "
                   "lower optim.warmup_epochs / warmup_steps")
    return out


def _key(name: str) -> tuple[str, str, str]:
    stage, arch, dataset = (name.split("|") + ["", "", ""])[:3]
    return stage, arch, dataset


def schedules(plan: Any) -> list[Schedule]:
    """The schedule of every template of ``plan`` (a launch.sweep.SweepPlan), in arch order."""
    out = [schedule(t, *(_key(k)[0], _key(k)[2])) for k, t in plan.templates.items()]
    return sorted(out, key=lambda s: (s.arch, s.stage, s.dataset))


def _fmt(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,}"


def schedule_table(plan: Any) -> tuple[Table, list[str]]:
    """(the per-arch table, its warning lines). Templates with the same numbers share a row (stages, datasets
    joined), so a sweep of many datasets stays a few rows per arch."""
    rows: dict[tuple[Any, ...], list[Schedule]] = {}
    every = schedules(plan)
    for s in every:
        key = (s.arch, s.effective_lr, s.base_lr, s.global_batch, s.world_size, s.accumulate, s.steps,
               s.steps_per_epoch, s.epochs, s.ema_horizon, s.devices_auto)
        rows.setdefault(key, []).append(s)
    table = Table(title=f"sweep {plan.name}: schedule per arch (what each cell trains at)")
    for col in ("arch", "stage", "datasets", "lr (recipe -> effective)", "global batch", "steps/cell",
                "EMA horizon"):
        table.add_column(col, justify="left" if col in ("arch", "stage", "datasets") else "right")
    lines: list[str] = []
    for members in rows.values():
        s = members[0]
        batch = f"{s.global_batch:,}" + (f" ({s.global_batch // s.world_size // s.accumulate} x {s.world_size}"
                                         + ("*" if s.devices_auto else "") + f" x {s.accumulate})")
        steps = _fmt(s.steps) + (f" ({_fmt(s.steps_per_epoch)} x {s.epochs} ep" if s.steps_per_epoch else "")
        steps += (f", max {s.max_steps:,})" if s.max_steps > 0 else ")") if s.steps_per_epoch else ""
        lr = f"{s.base_lr:.3g} -> {s.effective_lr:.3g}" + (" (linear)" if s.lr_scaling == "linear" else "")
        horizon = "off" if s.ema_horizon is None else f"{s.ema_horizon:,.0f}"
        table.add_row(s.arch, ",".join(sorted({m.stage for m in members})),
                      ",".join(sorted({m.dataset for m in members})), lr, batch, steps, horizon)
        for line in s.warnings:
            if f"warning: {line}" not in lines:
                lines.append(f"warning: {line}")
    if any(s.devices_auto for s in every):
        lines.append("* devices: auto counted as 1 per node; a Slurm profile's GPUs multiply the global batch "
                     "(and under linear scaling the LR) at run time")
    return table, lines


def print_schedule(plan: Any) -> None:
    """`mkf sweep plan`'s schedule table and its warnings (called from launch.sweep_view.print_plan)."""
    table, lines = schedule_table(plan)
    console.print(table)
    for line in lines:
        console.print(line, markup=False, highlight=False)
