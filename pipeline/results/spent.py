"""What a sweep's finished cells cost, summed per stage and per sweep, from the ``cost`` each result.json records.

Every finished cell writes what its own processes measured (:mod:`pipeline.training.cost`, summed over its attempts
by :func:`pipeline.results.costs.sum_attempts`): wall time of training and of validation, images, GPU-hours (or CPU
core-hours on a CPU) and the Slurm job ids it ran in. ``mkf sweep status`` and ``mkf sweep report`` add these up
here, so the planner's estimate (``mkf sweep plan``) can be read against what was spent. What Slurm billed for the
same jobs (start-up, idle GPUs, requeues included) is :mod:`launch.views.allocation`'s sacct line.

A cell shared by several sweeps of a catalog (one store) counts once per sweep in the per-sweep sums and once in the
total: it was trained once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Spent:
    """Sums over finished cells. Hours are None-free: a cell without the figure adds 0 and is counted in
    ``without_cost`` (a cell trained before costs were recorded, or by hand)."""

    cells: int = 0
    without_cost: int = 0
    gpu_hours: float = 0.0
    cpu_core_hours: float = 0.0
    train_s: float = 0.0
    val_s: float = 0.0
    wall_s: float = 0.0
    train_images: int = 0
    attempts: int = 0
    devices: set[str] = field(default_factory=set)
    slurm_job_ids: set[str] = field(default_factory=set)

    def add(self, cost: dict[str, Any] | None) -> None:
        self.cells += 1
        if not cost:
            self.without_cost += 1
            return
        self.gpu_hours += float(cost.get("gpu_hours") or 0.0)
        self.cpu_core_hours += float(cost.get("cpu_core_hours") or 0.0)
        for key in ("train_s", "val_s", "wall_s"):
            setattr(self, key, getattr(self, key) + float(cost.get(key) or 0.0))
        self.train_images += int(cost.get("train_images") or 0)
        self.attempts += int(cost.get("attempts") or 0)
        if cost.get("device_type") or cost.get("device"):
            self.devices.add(str(cost.get("device_type") or cost.get("device")))
        self.slurm_job_ids.update(str(j) for j in cost.get("slurm_job_ids") or [])

    def text(self) -> str:
        """``12 cells: 3.41 GPU-hours (train 2.9 h, val 0.4 h; 1,234,567 images; 14 attempts; A100)``."""
        hours = [f"{self.gpu_hours:,.2f} GPU-hours"] if self.gpu_hours else []
        if self.cpu_core_hours or not hours:
            hours.append(f"{self.cpu_core_hours:,.4f} CPU core-hours")
        detail = [f"train {_duration(self.train_s)}, val {_duration(self.val_s)}", f"{self.train_images:,} images",
                  f"{self.attempts:,} attempts"]
        if self.devices:
            detail.append(", ".join(sorted(self.devices)))
        missing = f"; {self.without_cost} recorded no cost" if self.without_cost else ""
        return f"{self.cells:,} cells: {' + '.join(hours)} ({'; '.join(detail)}){missing}"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:,.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def sum_costs(entries: Iterable[tuple[str, Iterable[str], dict[str, Any] | None]]) -> dict[str, dict[str, Spent]]:
    """(stage, sweeps, cost) per finished cell -> {"stage": {stage: Spent}, "sweep": {sweep: Spent},
    "total": {"total": Spent}}."""
    out: dict[str, dict[str, Spent]] = {"stage": {}, "sweep": {}, "total": {"total": Spent()}}
    for stage, sweeps, cost in entries:
        out["stage"].setdefault(stage, Spent()).add(cost)
        for name in sweeps:
            out["sweep"].setdefault(name, Spent()).add(cost)
        out["total"]["total"].add(cost)
    return out


def spent_lines(sums: dict[str, dict[str, Spent]], per_sweep: bool = True) -> list[str]:
    """The sums as lines: one per stage, one per sweep (when more than one), the total."""
    total = sums["total"]["total"]
    if not total.cells:
        return ["spent: no finished cell yet"]
    lines = [f"spent by finished cells (their result.json cost): {total.text()}"]
    lines += [f"  {stage:>8}: {s.text()}" for stage, s in sorted(sums["stage"].items())]
    if per_sweep and len(sums["sweep"]) > 1:
        lines += [f"  {name}: {s.text()}" for name, s in sorted(sums["sweep"].items())]
    return lines


def sweep_costs(sweep_dir: str | Path) -> dict[str, dict[str, Spent]]:
    """The sums over a sweep folder's finished cells (cells/*/result.json); stages as the sweep's manifest names
    them (a shared store's cell carries its first trainer's labels)."""
    root = Path(sweep_dir)
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    planned = {c["id"]: c for c in manifest.get("cells") or [] if isinstance(c, dict) and "id" in c}
    name = manifest.get("name") or root.name
    entries = []
    for path in sorted((root / "cells").glob("*/result.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being written right now
        if result.get("status") != "finished":
            continue
        labels = result.get("labels") or {}
        cell_id = labels.get("cell_id", path.parent.name)
        if planned and cell_id not in planned:
            continue  # in the store, not in this sweep's plan
        stage = (planned.get(cell_id) or {}).get("stage") or labels.get("stage") or "base"
        entries.append((stage, [name], result.get("cost")))
    return sum_costs(entries)


def spent_markdown(sweep_dir: str | Path) -> list[str]:
    """summary.md's section: what the sweep's cells cost, per stage."""
    lines = spent_lines(sweep_costs(sweep_dir), per_sweep=False)
    return ["", "## What it cost", "", *[f"- {line.strip()}" for line in lines], ""]
