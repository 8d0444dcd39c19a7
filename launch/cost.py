"""Cost before submit: cells per stage and estimated GPU-hours, from an editable table (``configs/costs.yaml``).

A user should see what a config costs before spending it. Each cell's cost is read from its resolved config:
training images (the dataset's size from the table, halved for a class-split half, reduced by ``data.subset`` /
``max_train_samples`` / ``trainer.limit_train_batches``) x epochs (or ``trainer.max_steps`` x global batch) over
the arch's images/s on the chosen GPU, scaled by (reference size / image size)^2. Anything the table does not
know becomes one "not in configs/costs.yaml; add it" line in the estimate, never a crash.
"""

from __future__ import annotations

import copy
import functools
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from configs import config_path
from datamodules.errors import UserError

COSTS_FILE = config_path("costs.yaml")


@dataclass
class Estimate:
    gpu: str
    cells: Counter[str] = field(default_factory=Counter)  # stage -> cells
    gpu_hours: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # stage -> hours
    unknown: Counter[str] = field(default_factory=Counter)  # "what is missing" -> cells affected

    @property
    def total_hours(self) -> float:
        return sum(self.gpu_hours.values())

    def lines(self) -> list[str]:
        out = []
        for stage, n in self.cells.items():
            out.append(f"{stage:>8}: {n:,} cells, ~{_hours(self.gpu_hours.get(stage, 0.0))} ({self.gpu})")
        out.append(f"   total: {sum(self.cells.values()):,} cells, ~{_hours(self.total_hours)} ({self.gpu})"
                   + (" (cells with unknown costs not counted)" if self.unknown else ""))
        out += [f"  cost unknown for {n:,} cells: {what} not in configs/costs.yaml; add it"
                for what, n in sorted(self.unknown.items())]
        return out


def _hours(hours: float) -> str:
    if hours >= 100:
        return f"{hours:,.0f} GPU-hours"
    if hours >= 0.1:
        return f"{hours:.1f} GPU-hours"
    if hours * 60 >= 1:
        return f"{hours * 60:.1f} GPU-minutes"
    return f"{hours * 3600:.2g} GPU-seconds"


def load_costs(path: str | Path | None = None) -> dict[str, Any]:
    """The cost table (a fresh copy: callers may edit it), parsed once per file version.

    `sweep plan` of the catalog asks for it once per arch and stage; parsing the YAML each time was most of the
    plan's 2 s."""
    path = Path(path) if path else COSTS_FILE
    if not path.is_file():
        raise UserError(f"cost table {path} does not exist; restore configs/costs.yaml")
    stat = path.stat()
    return copy.deepcopy(_parse_costs(str(path.resolve()), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _parse_costs(path_name: str, mtime_ns: int, size: int) -> dict[str, Any]:
    path = Path(path_name)
    try:
        table = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise UserError(f"{path} is not valid YAML; fix the syntax") from None
    unknown = sorted(set(table) - {"gpu", "reference_image_size", "throughput", "datasets"})
    if unknown:
        raise UserError(f"unknown key {unknown[0]} in {path}; valid keys: gpu, reference_image_size, throughput, "
                        "datasets")
    return table


def _dataset(data: dict[str, Any], table: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    names = [data.get("shards"), data.get("root"), data.get("dataset")]
    known = table.get("datasets") or {}
    for name in names:
        if name and name in known:
            return name, known[name]
    return f"dataset {next(n for n in names if n)!r}", None


def train_images(data: dict[str, Any], entry: dict[str, Any]) -> float:
    """Training images one epoch of a cell reads."""
    images = float(entry["train_images"])
    if data.get("split"):
        images /= 2  # one half of a class split
    subset = data.get("subset") or {}
    if subset.get("fraction") is not None:
        images *= subset["fraction"]
    elif subset.get("per_class") is not None:
        classes = entry.get("classes") or 0
        images = min(images, subset["per_class"] * classes / (2 if data.get("split") else 1))
    if data.get("max_train_samples"):
        images = min(images, data["max_train_samples"])
    return images


def cell_gpu_hours(config: dict[str, Any], table: dict[str, Any], gpu: str) -> tuple[float | None, str | None]:
    """(GPU-hours, None) for a cell, or (None, what the table is missing)."""
    arch = config["model"]["arch"]
    rate = ((table.get("throughput") or {}).get(gpu) or {}).get(arch)
    if not rate:
        return None, f"arch {arch} (throughput.{gpu})"
    data, trainer = config["data"], config["trainer"]
    name, entry = _dataset(data, table)
    if entry is None:
        return None, name
    images = train_images(data, entry)
    limit = trainer.get("limit_train_batches", 1.0)
    devices = trainer.get("devices") if isinstance(trainer.get("devices"), int) else 1
    batch = data.get("batch_size", 128) * devices * trainer.get("num_nodes", 1)
    if isinstance(limit, float):
        images *= limit
    elif isinstance(limit, int):
        images = min(images, limit * batch)
    seen = images * trainer.get("max_epochs", 1)
    if trainer.get("max_steps", -1) > 0:
        seen = min(seen, trainer["max_steps"] * batch)
    scale = (data.get("image_size", 224) / table.get("reference_image_size", 224)) ** 2
    return seen * scale / rate / 3600, None


def estimate(plan: Any, costs_file: str | Path | None = None, gpu: str | None = None) -> Estimate:
    """The cost of every cell of ``plan`` (a :class:`launch.sweep.SweepPlan`), per stage."""
    table = load_costs(costs_file)
    gpu = gpu or table.get("gpu", "a100")
    est = Estimate(gpu)
    per_template: dict[str, tuple[float | None, str | None]] = {}  # cost depends only on the shared template
    for cell in plan.cells:
        est.cells[cell.stage] += 1
        if cell.template is not None and cell.template in plan.templates:
            if cell.template not in per_template:
                per_template[cell.template] = cell_gpu_hours(plan.templates[cell.template], table, gpu)
            hours, missing = per_template[cell.template]
        else:
            hours, missing = cell_gpu_hours(plan.configs[cell.id], table, gpu)
        if missing:
            est.unknown[missing] += 1
        else:
            est.gpu_hours[cell.stage] += hours or 0.0
    return est
