"""The grid: a sweep's archs x variants x depths x seeds expanded into content-addressed cells.

A sweep has two stages. ``base`` cells train one model per (arch, dataset, seed) under the base training config;
``transfer`` cells train on a pair's *target*, each built from a registered variant (:mod:`launch.core.variants`):
units copied from the source's base (or an external source), from the target's own base, or from nothing (the
random-frozen and init controls). The reference for a cell's relative top-1 is the base of the same arch and
seed trained on the target, recorded in the cell's labels (``reference``) by id.

Cells are **content-addressed**: a cell's id hashes its resolved config (bases referenced by id, not path) and
its variant, so re-planning yields the same ids, a re-run finds the cells it already finished, and two entries
that describe the same training run (one arch listed with two unit kinds plans its base cells once; BnB of a
target shared by many sources) become one cell with one run directory. The id hashes only what changes the
training run: not the W&B section (project, group, tags, names), the labels or the run directory, so two sweeps
that differ only there share their cells.

Planning is torch-free (unit counts come from :mod:`pipeline.models.unit_counts`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from datamodules.errors import UserError
from launch.core.plan import Cell, SweepPlan, deep_merge
from launch.core.variants import Variant, get_variant
from launch.planning.depths import depth_grid
from launch.planning.schema import TRAIN_SECTIONS, ArchSpec, SweepConfig
from pipeline.config import CellConfig, MappingConfig, to_dict
from pipeline.models.unit_counts import known_arch, unit_count


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
            train = deep_merge(self.sweep.train.model_dump(), stage_spec)
            recipe_train = self.sweep.recipe_train(recipe)
            config = to_dict(CellConfig())
            for section in TRAIN_SECTIONS:
                config[section] = deep_merge(config[section], recipe_train.get(section) or {})
                config[section] = deep_merge(config[section], train.get(section) or {})
            config["model"]["arch"] = arch
            config["data"] = deep_merge(config["data"], self.datasets[dataset])
            if self.sweep.budget is not None:  # every cell of a comparison at the same budget
                config["trainer"]["budget"] = {k: v for k, v in self.sweep.budget.items() if v is not None}
            if self.sweep.progressive is not None:
                config["data"]["progressive"] = dict(self.sweep.progressive)
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
                        "freeze": sweep.freeze, "reinit": sweep.reinit, "mapping": None}
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
                    transfer["mapping"] = deep_merge(to_dict(MappingConfig()), entry.mapping or {})
            overrides["transfer"] = transfer
        cell = Cell("", "transfer", entry.arch, variant.name, depth, seed, unit_kind, depends, "", "",
                    source=source_label, target=target, source_arch=source_arch, reference=reference,
                    template=self.template("transfer", entry.arch, target, entry.recipe), overrides=overrides)
        self.add(cell, variant.name)


def plan_grid(sweep: SweepConfig) -> SweepPlan:
    """Expand the sweep into cells at the depths it names (an adaptive sweep: its start grid): base cells first,
    then every transfer cell (each after its base). :func:`launch.planning.planner.plan_sweep` adds the rounds an
    adaptive sweep has refined since."""
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
    return planner.plan
