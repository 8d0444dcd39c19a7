"""Sweeps: datasets by role, transfers as source -> target pairs, archs x variants x depths x seeds -> cells.

A sweep has two stages. ``base`` cells train one model per (arch, dataset, seed) under the base training config;
``transfer`` cells train on a pair's *target*, each built from a registered variant (:mod:`launch.variants`):
units copied from the source's base (or an external source), from the target's own base, or from nothing (the
random-frozen and init controls). The reference for a cell's relative top-1 is the base of the same arch and
seed trained on the target, recorded in the cell's labels (``reference``) by id.

Cells are **content-addressed**: a cell's id hashes its resolved config (bases referenced by id, not path) and
its variant, so re-planning yields the same ids, a re-run finds the cells it already finished, and two entries
that describe the same training run (one arch listed with two unit kinds plans its base cells once; BnB of a
target shared by many sources) become one cell with one run directory. The id hashes only what changes the
training run: not the W&B section (project, group, tags, names), the labels or the run directory, so two sweeps
that differ only there share their cells.

**The cell store.** A cell's run directory is ``<store>/<id>`` (sweep key ``store:``, default
``<output_dir>/cells``). Sweeps pointing at one store share every cell they both plan: a cell finished by one is
finished for all (``cell_state`` reads the run directory), and :mod:`launch.store` claims a cell atomically before
it trains, so two sweeps running at once never train it twice. A sweep with an outside store keeps a readable
view of its cells in its own folder: ``cells/<id>`` links into the store (:func:`write_plan`).

Planning is torch-free (unit counts come from :mod:`pipeline.models.unit_counts`), and ``plan`` writes one file, the
manifest (every cell's resolved config inside). A cell's YAML is written only when the cell is about to run or be
submitted (:func:`materialize_configs`): writing 10,000 small files costs seconds on a network disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from datamodules.errors import UserError
from launch.adaptive import depth_grid, with_rounds
from launch.sweep_schema import STAGES, TRAIN_SECTIONS, ArchSpec, SweepConfig, load_sweep, parse_sweep
from launch.variants import VARIANTS, Variant, get_variant
from pipeline.config import CellConfig, MappingConfig, dump_yaml, to_dict
from pipeline.models.unit_counts import known_arch, unit_count

MANIFEST = "manifest.json"
__all__ = ["MANIFEST", "STAGES", "VARIANTS", "Cell", "SweepConfig", "SweepPlan", "load_manifest",
           "load_sweep", "materialize_configs", "parse_sweep", "plan_sweep", "resolve_plan", "unit_count",
           "write_plan"]


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
    config = _merge(config, cell.overrides or {})
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


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _check_arch(arch: str) -> None:
    if not known_arch(arch):  # only an arch outside the unit-count table costs a timm import
        from pipeline.models.zoo import check_arch

        check_arch(arch)


class _Planner:
    """Builds cells into a plan, deduplicating identical ones (same id = same training run).

    A cell's id hashes what makes its training run different, computed cheaply: the hash of
    its template (every shared key but the W&B section) plus its seed, overrides and variant.
    """

    def __init__(self, sweep: SweepConfig) -> None:
        self.sweep = sweep
        self.out = str(Path(sweep.output_dir))
        self.store = str(Path(sweep.store)) if sweep.store else f"{self.out}/cells"
        self.plan = SweepPlan(sweep.name, Path(sweep.output_dir), [], kind=sweep.kind,
                              report=sweep.report.model_dump(), store=Path(sweep.store) if sweep.store else None)
        self.datasets = sweep.dataset_sections()
        self.wandb = to_dict(sweep.wandb_config())
        self.template_hash: dict[str, str] = {}
        self.ids: set[str] = set()
        self.bases: dict[tuple[str, str | None, str, int], str] = {}  # (arch, recipe, dataset, seed) -> base id
        self.arch_recipes = sweep.arch_recipes()
        self.transfer_cells: list[Cell] = []

    def template(self, stage: str, arch: str, dataset: str, recipe: str | None = None) -> str:
        """The shared config of (stage, arch, dataset, recipe): defaults < recipe < sweep train < stages.<stage>."""
        key = f"{stage}|{arch}|{dataset}" + (f"|{recipe}" if recipe else "")
        if key not in self.template_hash:
            stage_spec = getattr(self.sweep.stages, stage).model_dump()
            train = _merge(self.sweep.train.model_dump(), stage_spec)
            recipe_train = self.sweep.recipe_train(recipe)
            config = to_dict(CellConfig())
            for section in TRAIN_SECTIONS:
                config[section] = _merge(config[section], recipe_train.get(section) or {})
                config[section] = _merge(config[section], train.get(section) or {})
            config["model"]["arch"] = arch
            config["data"] = _merge(config["data"], self.datasets[dataset])
            del config["run_dir"], config["labels"], config["seed"], config["wandb"]
            self.template_hash[key] = json.dumps(config, sort_keys=True, default=str)  # W&B is not the run
            config["wandb"] = self.wandb
            self.plan.templates[key] = config
        return key

    def add(self, cell: Cell, variant: str | None) -> str:
        body = json.dumps([self.template_hash[cell.template], cell.seed, cell.overrides, variant],  # type: ignore[index]
                          sort_keys=True, default=str)
        cid = hashlib.sha1(body.encode()).hexdigest()[:12]
        if cid in self.ids:
            return cid  # the same training run, already planned (labels of its first appearance kept)
        self.ids.add(cid)
        cell.id = cid
        cell.run_dir = f"{self.store}/{cid}"
        cell.sweeps = [self.sweep.name]
        cell.config_path = f"{self.out}/configs/{cid}.yaml"
        (self.plan.cells if cell.stage == "base" else self.transfer_cells).append(cell)
        return cid

    def base(self, arch: str, dataset: str, seed: int, recipe: str | None) -> str:
        key = (arch, recipe, dataset, seed)
        if key not in self.bases:
            cell = Cell("", "base", arch, f"base-{dataset}", None, seed, "", [], "", "", target=dataset,
                        template=self.template("base", arch, dataset, recipe), overrides={})
            self.bases[key] = self.add(cell, None)
        return self.bases[key]

    def transfer(self, entry: ArchSpec, variant: Variant, source: str, target: str, depth: int | None,
                 seed: int) -> None:
        sweep = self.sweep
        overrides: dict[str, Any] = {}
        reference = self.base(entry.arch, target, seed, entry.recipe)
        source_arch = entry.source_arch or entry.arch
        source_recipe = entry.recipe if source_arch == entry.arch else self.arch_recipes.get(source_arch)
        depends: list[str] = []
        if variant.model_init is not None:
            overrides["model"] = {"init": dict(variant.model_init)}
        if variant.depthless:
            source_label, source_arch, unit_kind = "none", entry.arch, ""
        else:
            unit_kind = entry.unit_kind
            transfer = {"base": "", "base_file": None, "unit_kind": unit_kind, "depth": depth,
                        "direction": variant.direction, "mode": variant.mode, "init": variant.init,
                        "freeze": sweep.freeze, "mapping": None}
            if variant.source == "none":
                source_label, source_arch = "none", entry.arch
            else:
                source_label = source if variant.source == "source" else target
                if source_label in sweep.sources:
                    external = sweep.sources[source_label]
                    transfer.update(base=external.weights, base_file=external.file)
                else:
                    transfer["base"] = self.base(source_arch, source_label, seed, source_recipe)  # id; path in config
                    depends = [transfer["base"]]
                if entry.mapping is not None or source_arch != entry.arch:
                    transfer["mapping"] = _merge(to_dict(MappingConfig()), entry.mapping or {})
            overrides["transfer"] = transfer
        cell = Cell("", "transfer", entry.arch, variant.name, depth, seed, unit_kind, depends, "", "",
                    source=source_label, target=target, source_arch=source_arch, reference=reference,
                    template=self.template("transfer", entry.arch, target, entry.recipe), overrides=overrides)
        self.add(cell, variant.name)


def plan_sweep(sweep: SweepConfig) -> SweepPlan:
    """Expand the sweep into cells: base cells first, then every transfer cell (each after its base)."""
    planner = _Planner(sweep)
    variants = [get_variant(v) for v in sweep.variants]
    pairs = sweep.transfer_pairs()
    for i, entry in enumerate(sweep.archs):
        _check_arch(entry.arch)
        if entry.source_arch:
            _check_arch(entry.source_arch)
        count = unit_count(entry.arch, entry.unit_kind)
        if count == 0:
            raise UserError(f"archs[{i}]: {entry.arch} has no {entry.unit_kind} units; pick another unit_kind")
        depths = depth_grid(sweep.depths, entry.arch, entry.unit_kind, count)
        for d in depths:
            if not 1 <= d <= count:
                raise UserError(f"depth {d} is outside {entry.arch}'s {entry.unit_kind} units 1..{count}; fix depths")
        for seed in sweep.seeds:
            for pair in pairs:
                planner.base(entry.arch, pair.target, seed, entry.recipe)
                for variant in variants:
                    for depth in [None] if variant.depthless else depths:
                        planner.transfer(entry, variant, pair.source, pair.target, depth, seed)
    planner.plan.cells.extend(planner.transfer_cells)
    return with_rounds(sweep, planner.plan)  # an adaptive sweep under way: every round planned so far


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


def materialize_configs(plan: SweepPlan, cells: list[Cell]) -> int:
    """Write the config YAML of each of ``cells`` (the ones about to run or be submitted); returns how many."""
    (plan.output_dir / "configs").mkdir(parents=True, exist_ok=True)
    for cell in cells:
        dump_yaml(plan.configs[cell.id], cell.config_path)
    return len(cells)


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


def resolve_plan(target: str | Path) -> SweepPlan:
    """`mkf sweep status|run` accept a sweep YAML (re-planned, cheap) or a sweep directory."""
    target = Path(target)
    if target.is_dir() or target.name == MANIFEST:
        return load_manifest(target)
    return plan_sweep(load_sweep(target))
