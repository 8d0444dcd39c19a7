"""The per-arch schedule of `mkf sweep plan`: the learning rate a cell really trains at, its optimizer steps and
the EMA's horizon, with a one-line warning where they cannot work together.

A recipe is published for its own budget (ConvNeXt: 4e-3 at a global batch of 4096, 300 epochs, an EMA of decay
0.9999). Run at another budget, two of its rules quietly stop working: linear LR scaling takes the LR down with
the batch (4e-3 x 64 / 4096 = 6.25e-5, too small to grow ConvNeXt's 1e-6 layer scales in a short run, so its
blocks stay silent and every variant scores the same), and an EMA whose horizon 1 / (1 - decay) exceeds the run
averages mostly its initial weights. This table says so before anything is spent.

Torch-free (login node): the numbers come from each plan template's resolved config, through the same functions
the trainer uses (:mod:`pipeline.schedule`): the global batch is ``data.batch_size x devices x num_nodes x
accumulate_grad_batches``, or ``trainer.global_batch_size`` with the accumulation derived; the effective LR
``optim.lr x global / optim.base_batch_size`` under ``lr_scaling: linear`` (tests/test_schedule_view.py compares
the two on a real cell); optimizer steps per epoch = ceil(batches per rank / accumulation), where a rank's batches
are its share of the training images over the batch, whole batches only (datamodules' loaders), capped by
``limit_train_batches`` and ``max_steps``; a reduced source (``data.subset``, ``steps: full``) trains the full
set's steps; warmup from ``warmup_fraction`` / ``warmup_epochs`` / ``warmup_steps``; the EMA's decay after its
``adjust`` rule. Training images come from the shards' ``index.json`` when it is on
this machine, else from configs/costs.yaml's dataset table (halved for a class-split half), reduced by
``data.subset`` / ``max_train_samples``; a dataset in neither is "unknown". ``devices: auto`` counts as one device
per node (a Slurm profile's GPUs multiply the global batch at run time, and with it the LR).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from launch.core.console import console
from pipeline.schedule import (
    budget_length,
    ema_decay,
    ema_horizon,
    resolve_batch,
    scaled_lr,
    steps_per_epoch,
    warmup_steps,
)

LR_CUT = 0.1  # warn when scaling leaves less than this share of the recipe's LR
WARMUP_CUT = 0.2  # warn when warmup takes more than this share of a cell's steps


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
    full_epochs: int | None = None  # under trainer.budget: the recipe's full length (epochs is the budget's)
    warnings: list[str] = field(default_factory=list)

    @property
    def ema_horizon(self) -> float | None:
        """Optimizer steps the EMA averages over: 1 / (1 - decay) updates, one every ``every_n_steps`` steps."""
        return ema_horizon(self.ema_decay, self.ema_every) if self.ema_decay else None



def _costs_entry(data: dict[str, Any]) -> tuple[float, dict[str, Any]] | None:
    from launch.planning.cost import _dataset, load_costs

    try:
        table = load_costs()
    except Exception:  # a broken cost table is the cost estimate's error to report, not this table's
        return None
    _, entry = _dataset(data, table)
    return (float(entry["train_images"]), entry) if entry else None


def train_images(data: dict[str, Any]) -> int | None:
    """Training images one epoch of a cell reads (see module doc), or None when no source on this machine knows."""
    from launch.planning.cost import train_images as reduce

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
    batch = int(data.get("batch_size", 128))
    try:
        accumulate, global_batch = resolve_batch(batch, world, int(trainer.get("accumulate_grad_batches", 1)),
                                                 trainer.get("global_batch_size"))
    except Exception:  # noqa: BLE001  (a batch the devices cannot make up: the cell says so at run time)
        accumulate, global_batch = 1, batch * world
    lr = scaled_lr(optim, global_batch)
    images = train_images(data)
    epochs, max_steps = int(trainer.get("max_epochs", 1) or 0), int(trainer.get("max_steps", -1) or -1)
    per_epoch = steps = None
    limit = trainer.get("limit_train_batches", 1.0)
    subset = data.get("subset") or {}
    full_per_epoch = None
    if images is not None:
        per_epoch = steps_per_epoch(images, world, batch, accumulate, limit)
        full = train_images({**data, "subset": None}) if subset and subset.get("steps", "full") == "full" else None
        if full is not None:  # a reduced source trains the full set's optimizer steps
            full_per_epoch = steps_per_epoch(full, world, batch, accumulate, limit)
    full_epochs, stretch = None, 1.0
    budget = trainer.get("budget")
    if budget:  # a shorter run of the recipe: the trainer's own arithmetic (pipeline.schedule.budget_length)
        try:
            length = budget_length(epochs, max_steps, budget, full_per_epoch or per_epoch)
            full_epochs, epochs, max_steps, stretch = epochs, length.max_epochs, length.max_steps, length.stretch
        except Exception:  # noqa: BLE001  (an impossible budget: the cell config check reports it)
            pass
    if per_epoch is not None:
        steps = (full_per_epoch or per_epoch) * epochs if epochs > 0 else None
    if max_steps > 0:
        steps = max_steps if steps is None else min(steps, max_steps)
    warmup = warmup_steps(optim, steps, per_epoch, stretch) if steps is not None else None
    if warmup is None and optim.get("warmup_fraction") is None and optim.get("warmup_epochs") is None:
        warmup = int(optim.get("warmup_steps") or 0)
    ema = model.get("ema") or {}
    out = Schedule(arch=model["arch"], stage=stage, dataset=dataset, base_lr=float(optim["lr"]), effective_lr=lr,
                   lr_scaling=optim.get("lr_scaling", "none"), base_batch=int(optim.get("base_batch_size", 256)),
                   global_batch=global_batch, world_size=world, accumulate=accumulate, devices_auto=devices_auto,
                   train_images=images, steps_per_epoch=per_epoch, epochs=epochs, max_steps=max_steps, steps=steps,
                   ema_decay=ema_decay(ema, global_batch, epochs) if ema else None,
                   ema_every=int(ema.get("every_n_steps", 1) or 1),
                   warmup_steps=warmup, full_epochs=full_epochs)
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
    if s.warmup_steps is not None and s.steps is not None and s.warmup_steps >= s.steps - 1 and s.steps > 1:
        out.append(f"{s.arch}: warmup {s.warmup_steps:,} steps >= {s.steps:,} steps per cell: the LR never peaks; "
                   "lower optim.warmup_epochs / warmup_steps, or use optim.warmup_fraction")
    elif s.warmup_steps is not None and s.steps and s.warmup_steps > WARMUP_CUT * s.steps:
        out.append(f"{s.arch}: warmup {s.warmup_steps:,} of {s.steps:,} steps per cell "
                   f"({s.warmup_steps / s.steps:.0%} of the run): a recipe's warmup epochs kept in a shorter run; "
                   "set optim.warmup_fraction (the recipe's share, e.g. 20 of 300 epochs = 0.0667)")
    return out


def _key(name: str) -> tuple[str, str, str]:
    stage, arch, dataset = (name.split("|") + ["", "", ""])[:3]
    return stage, arch, dataset


def schedules(plan: Any) -> list[Schedule]:
    """The schedule of every template of ``plan`` (a launch.core.plan.SweepPlan), in arch order."""
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
               s.steps_per_epoch, s.epochs, s.full_epochs, s.ema_horizon, s.devices_auto)
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
        of = f" of {s.full_epochs}" if s.full_epochs else ""  # a budget: 16 of 90 epochs
        steps = _fmt(s.steps) + (f" ({_fmt(s.steps_per_epoch)} x {s.epochs}{of} ep" if s.steps_per_epoch else "")
        steps += (f", max {s.max_steps:,})" if s.max_steps > 0 else ")") if s.steps_per_epoch else ""
        lr = f"{s.base_lr:.3g} -> {s.effective_lr:.3g}" + (" (linear)" if s.lr_scaling == "linear" else "")
        horizon = "off" if s.ema_horizon is None else f"{s.ema_horizon:,.0f}"
        table.add_row(s.arch, ",".join(sorted({m.stage for m in members})),
                      ",".join(sorted({m.dataset for m in members})), lr, batch, steps, horizon)
        for line in s.warnings:
            if f"warning: {line}" not in lines:
                lines.append(f"warning: {line}")
    for line in stage_mismatches(every):
        lines.append(f"warning: {line}")
    if any(s.devices_auto for s in every):
        lines.append("* devices: auto counted as 1 per node; a Slurm profile's GPUs change the accumulation under "
                     "trainer.global_batch_size, else they multiply the global batch (and under linear scaling the "
                     "LR) at run time")
    return table, lines


def stage_mismatches(every: list[Schedule]) -> list[str]:
    """Cells of one arch trained on one dataset in different stages (base B and the transfer cells measured
    against it) must train alike: the same optimizer steps and warmup share. Otherwise relative top-1 compares a
    longer run with a shorter one, and the audit's comparison check fails after the sweep has run."""
    out = []
    by_key: dict[tuple[str, str], list[Schedule]] = {}
    for s in every:
        by_key.setdefault((s.arch, s.dataset), []).append(s)
    for (arch, dataset), members in sorted(by_key.items()):
        stages = {m.stage: m for m in members}
        if len(stages) < 2 or any(m.steps is None for m in stages.values()):
            continue
        steps = {m.steps for m in stages.values()}
        shares = {round((m.warmup_steps or 0) / m.steps, 4) for m in stages.values() if m.steps}
        if len(steps) > 1 or len(shares) > 1:
            what = ", ".join(f"{st} {m.steps:,} steps ({m.epochs} ep, warmup {m.warmup_steps or 0})"
                             for st, m in sorted(stages.items()))
            out.append(f"{arch} on {dataset}: stages train differently ({what}); a comparison's cells must train "
                       "alike: give every stage the same trainer.max_epochs / max_steps (drop the per-stage "
                       "override)")
    return out


def print_schedule(plan: Any) -> None:
    """`mkf sweep plan`'s schedule table and its warnings (called from launch.views.plan.print_plan)."""
    table, lines = schedule_table(plan)
    console.print(table)
    for line in lines:
        console.print(line, markup=False, highlight=False)
