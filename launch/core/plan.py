"""The plan as plain data: cells (what to train, where, after which cell) and the sweep plan that holds them.

A :class:`SweepPlan` is what the planner (:mod:`launch.planning.planner`) returns and the other rooms read: the
executors run its cells, the views print it, the store tells each cell's state from its run directory. A cell's
config is stored as a shared template plus the cell's overrides and built when read (:class:`CellConfigs`).

**The cell store.** A cell's run directory is ``<store>/<id>`` (sweep key ``store:``, default
``<output_dir>/cells``). Sweeps pointing at one store share every cell they both plan: a cell finished by one is
finished for all (``cell_state`` reads the run directory), and :mod:`launch.store.claims` claims a cell atomically
before it trains, so two sweeps running at once never train it twice. A sweep with an outside store keeps a readable
view of its cells in its own folder: ``cells/<id>`` links into the store (:func:`write_plan`).

`mkf sweep plan` writes one file, the manifest (every cell's resolved config inside). A cell's YAML is written only
when the cell is about to run or be submitted (:func:`materialize_configs`): writing 10,000 small files costs
seconds on a network disk. Torch-free.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from datamodules.errors import UserError
from launch.core.variants import VARIANTS
from pipeline.config import YAML_DUMPER

MANIFEST = "manifest.json"


@dataclass
class Cell:
    """One row of the manifest: what to train, where, and which cell must finish first."""

    id: str
    stage: str
    arch: str
    variant: str  # base-<dataset> for base cells
    depth: int | None
    seed: int
    unit_kind: str  # "" for cells that transfer no units (base cells, depthless variants)
    depends_on: list[str]
    run_dir: str
    config_path: str
    source: str | None = None  # dataset role or external source the units come from ("none": no transfer)
    target: str | None = None  # dataset role the cell trains on (a base cell: its dataset)
    source_arch: str | None = None  # arch of the model the units come from (cross-arch when != arch)
    reference: str | None = None  # id of the base cell whose top-1 is this cell's 1.0
    template: str | None = None  # key of the shared (stage, arch, dataset) config this cell's config starts from
    overrides: dict[str, Any] | None = None  # what the cell sets on top of it: transfer, model.init
    sweeps: list[str] = field(default_factory=list)  # the sweeps that plan this cell (several in a catalog)

    @property
    def label(self) -> str:
        depth = "" if self.depth is None else f" n={self.depth}"
        pair = f" {self.source}->{self.target}" if self.stage == "transfer" and self.source else ""
        return f"{self.arch} {self.variant}{depth}{pair} seed={self.seed}"


class CellConfigs(Mapping[str, dict[str, Any]]):
    """Cell id -> resolved cell config, built on first access from the cell's template and overrides.

    Thousands of cells share a handful of templates (one per stage, arch and dataset), so a plan stores those
    plus each cell's few overrides; a config is assembled only when something reads it.
    """

    def __init__(self, plan: SweepPlan, explicit: dict[str, dict[str, Any]] | None = None) -> None:
        self.plan = plan
        self.cache: dict[str, dict[str, Any]] = dict(explicit or {})
        self._cells: dict[str, Cell] | None = None

    def _by_id(self) -> dict[str, Cell]:
        if self._cells is None or len(self._cells) != len(self.plan.cells):
            self._cells = self.plan.by_id()
        return self._cells

    def __getitem__(self, cid: str) -> dict[str, Any]:
        if cid not in self.cache:
            cell = self._by_id()[cid]
            if cell.template is None:
                raise KeyError(cid)
            self.cache[cid] = build_config(self.plan, cell)
        return self.cache[cid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id())

    def __len__(self) -> int:
        return len(self.plan.cells)


@dataclass
class SweepPlan:
    name: str
    output_dir: Path
    cells: list[Cell]
    configs: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    kind: str = "depth_curve"
    report: dict[str, Any] = field(default_factory=dict)
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    wandb_group: str | None = None
    store: Path | None = None  # where the cells' run dirs live (None: output_dir/cells)
    sweeps: list[dict[str, str]] = field(default_factory=list)  # a catalog: its sweeps (name, output_dir, kind)

    def __post_init__(self) -> None:
        if not isinstance(self.configs, CellConfigs):
            self.configs = CellConfigs(self, dict(self.configs))

    def by_id(self) -> dict[str, Cell]:
        return {c.id: c for c in self.cells}

    @property
    def store_dir(self) -> Path:
        return self.store if self.store is not None else self.output_dir / "cells"


def build_config(plan: SweepPlan, cell: Cell) -> dict[str, Any]:
    """A cell's resolved config: its template, its overrides, its seed, run dir, labels and W&B names."""
    config = json.loads(json.dumps(plan.templates[cell.template]))  # type: ignore[index]
    config = deep_merge(config, cell.overrides or {})
    config["seed"] = cell.seed
    config["run_dir"] = cell.run_dir
    transfer = config.get("transfer")
    if transfer and transfer["base"] in cell.depends_on:
        transfer["base"] = str(Path(cell.run_dir).parent / transfer["base"])
    sweep = cell.sweeps[0] if cell.sweeps else plan.name  # a catalog cell: the first sweep that plans it
    config["labels"] = {"cell_id": cell.id, "sweep": sweep, "stage": cell.stage, "arch": cell.arch,
                        "variant": cell.variant, "depth": cell.depth, "seed": cell.seed,
                        "unit_kind": cell.unit_kind, "source": cell.source, "target": cell.target,
                        "source_arch": cell.source_arch, "reference": cell.reference,
                        "source_role": VARIANTS[cell.variant].source if cell.variant in VARIANTS else None}
    w = config["wandb"]
    depth = "" if cell.depth is None else f" n={cell.depth}"
    w.update(group=w["group"] or sweep, job_type=cell.stage, name=f"{cell.arch} {cell.variant}{depth} s{cell.seed}",
             tags=[*w["tags"], cell.arch, cell.variant, *([cell.unit_kind] if cell.unit_kind else []),
                   f"depth={cell.depth}", f"seed={cell.seed}"])
    return config


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` on top: mappings are merged key by key, anything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def manifest_dict(plan: SweepPlan) -> dict[str, Any]:
    """The plan as JSON: cells (each with its template key and overrides) and the shared templates."""
    return {"name": plan.name, "kind": plan.kind, "report": plan.report,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "templates": plan.templates,
            "store": None if plan.store is None else str(plan.store),
            **({"sweeps": plan.sweeps} if plan.sweeps else {}),
            "cells": [dict(c.__dict__) for c in plan.cells]}


def write_plan(plan: SweepPlan, view: bool = True) -> Path:
    """Write the manifest (one file, atomically): every cell with its resolved config. No cell YAMLs yet.

    With an outside store and ``view``, ``cells/<id>`` in the sweep's folder links to the cell's run dir in the
    store (relative links, so the two folders can move together): the readable view `mkf report`, `mkf filters`
    and a person use. `mkf sweep plan` leaves the links to `run` (9,000 links cost seconds of system time).
    """
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    path = plan.output_dir / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest_dict(plan), separators=(",", ":")) + "\n")
    tmp.replace(path)
    if plan.store is not None and view:
        link_view(plan)
    return path


def link_view(plan: SweepPlan) -> int:
    """``output_dir/cells/<id>`` -> ``<store>/<id>`` for every cell of an outside store; returns links made."""
    view = plan.output_dir / "cells"
    if view.resolve() == plan.store_dir.resolve():
        return 0
    view.mkdir(parents=True, exist_ok=True)
    have = set(os.listdir(view))
    rel = os.path.relpath(plan.store_dir.absolute(), view.absolute())
    made = 0
    for cell in plan.cells:
        if cell.id not in have:
            os.symlink(os.path.join(rel, os.path.basename(cell.run_dir)), view / cell.id, target_is_directory=True)
            made += 1
    return made


def materialize_configs(plan: SweepPlan, cells: Sequence[Cell]) -> int:
    """Write the config YAML of each of ``cells`` (the ones about to run or be submitted); returns how many it
    wrote. Each is written atomically (a temp file, then a rename: a task starting meanwhile reads the old file or
    the new one, never a half-written or empty one), and a config whose bytes would not change is not touched, so a
    second `mkf sweep run` never rewrites the file a queued or running task is about to read. The executors call
    this only for the cells they start or submit now (never for a cell a live task runs)."""
    import yaml

    (plan.output_dir / "configs").mkdir(parents=True, exist_ok=True)
    written = 0
    for cell in cells:
        text = yaml.dump(plan.configs[cell.id], Dumper=YAML_DUMPER, sort_keys=False)
        path = Path(cell.config_path)
        try:
            if path.read_text() == text:
                continue
        except OSError:
            pass
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
        written += 1
    return written


_CELL_FIELDS = {f.name for f in fields(Cell)}


def load_manifest(path: str | Path) -> SweepPlan:
    """A sweep directory (or its manifest.json) -> the plan that was written there (configs included)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise UserError(f"{path} does not exist; run `mkf sweep plan SWEEP.yaml` first")
    try:
        data = json.loads(path.read_text())
        cells = [Cell(**{k: v for k, v in c.items() if k in _CELL_FIELDS}) for c in data["cells"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is not a valid manifest ({exc}); re-plan the sweep") from None
    store = data.get("store")
    return SweepPlan(data["name"], path.parent, cells, kind=data.get("kind", "depth_curve"),
                     report=data.get("report") or {}, templates=data.get("templates") or {},
                     store=Path(store) if store else None, sweeps=data.get("sweeps") or [])
