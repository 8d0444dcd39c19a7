"""Sweeps: a YAML grid (archs x variants x depths x seeds) expanded into cells with deterministic ids.

A sweep has two stages. ``base`` cells train model A (half A of the split) and model B (half B) per arch and
seed; ``transfer`` cells each depend on one base cell and train on half B. A cell's id is a hash of its resolved
config (with its base referenced by id, not path), so re-planning the same sweep yields the same ids and a
re-run finds the cells it already finished.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from datamodules.errors import UserError
from pipeline.config import CellConfig, DataConfig, WandbConfig, dump_yaml, from_dict, load_yaml, to_dict
from pipeline.layer_plan import UNIT_KINDS, plan_units
from pipeline.models import check_arch, create_model

MANIFEST = "manifest.json"
STAGES = ("base", "transfer")
# variant -> (half of the base model, mode, direction)
VARIANTS: dict[str, tuple[str, str, str]] = {
    "AnB": ("A", "frozen", "first"),
    "BnB": ("B", "frozen", "first"),
    "AnB+": ("A", "finetune", "first"),
    "BnB+": ("B", "finetune", "first"),
    "reverse": ("A", "frozen", "last"),
}
TRAIN_SECTIONS = ("model", "optim", "trainer")


@dataclass
class ArchEntry:
    arch: str
    unit_kind: str = "depthwise"  # depthwise | pointwise | block


@dataclass
class SweepConfig:
    """A sweep YAML. ``train`` holds model/optim/trainer defaults; ``stages.base`` / ``stages.transfer`` override them."""

    name: str = "sweep"
    output_dir: str = "results/sweep"
    seeds: list[int] = field(default_factory=lambda: [0])
    data: dict[str, Any] = field(default_factory=dict)  # a cell's data section, without `half`
    archs: list[dict[str, Any]] = field(default_factory=list)
    depths: str | list[int] = "all"  # all = 1..L for each arch, or an explicit list
    variants: list[str] = field(default_factory=lambda: ["AnB", "BnB"])
    train: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    slurm: dict[str, Any] = field(default_factory=dict)  # {profiles: {base: NAME, transfer: NAME}}


@dataclass
class Cell:
    """One row of the manifest: what to train, where, and which cell must finish first."""

    id: str
    stage: str
    arch: str
    variant: str  # base-A / base-B for base cells
    depth: int | None
    seed: int
    unit_kind: str
    depends_on: list[str]
    run_dir: str
    config_path: str

    @property
    def label(self) -> str:
        depth = "" if self.depth is None else f" n={self.depth}"
        return f"{self.arch} {self.variant}{depth} seed={self.seed}"


@dataclass
class SweepPlan:
    name: str
    output_dir: Path
    cells: list[Cell]
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def by_id(self) -> dict[str, Cell]:
        return {c.id: c for c in self.cells}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def cell_id(config: dict[str, Any]) -> str:
    """A short hash of a resolved cell config (canonical JSON, run_dir excluded)."""
    body = {k: v for k, v in config.items() if k != "run_dir"}
    return hashlib.sha1(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:12]


@functools.cache
def unit_count(arch: str, unit_kind: str) -> int:
    """How many transfer units of a kind an architecture has (cached: planning builds each model once).

    The model is built on the meta device (shapes only, no memory, no init): planning a sweep over
    convnext_base takes a second, not four.
    """
    try:
        with torch.device("meta"):
            model = create_model(arch, num_classes=2)
    except (NotImplementedError, RuntimeError):  # an architecture that cannot be built without real tensors
        model = create_model(arch, num_classes=2)
    return len(plan_units(model, unit_kind))


def load_sweep(path: str | Path) -> SweepConfig:
    raw = load_yaml(path)
    sweep: SweepConfig = from_dict(SweepConfig, raw or {})
    _validate(sweep)
    return sweep


def _validate(sweep: SweepConfig) -> None:
    if any(ord(ch) < 32 for ch in sweep.output_dir):
        raise UserError(f"output_dir {sweep.output_dir!r} contains a control character (newline, tab...); rename it")
    if not sweep.archs:
        raise UserError("the sweep lists no archs; add e.g. `archs: [{arch: convnext_demo, unit_kind: depthwise}]`")
    for i, entry in enumerate(sweep.archs):
        arch = from_dict(ArchEntry, entry, f"archs[{i}].")
        check_arch(arch.arch)
        if arch.unit_kind not in UNIT_KINDS:
            raise UserError(f"archs[{i}].unit_kind {arch.unit_kind!r} is unknown; use one of {', '.join(UNIT_KINDS)}")
    unknown = [v for v in sweep.variants if v not in VARIANTS]
    if unknown:
        raise UserError(f"unknown variant {unknown[0]!r}; use any of {', '.join(VARIANTS)}")
    if isinstance(sweep.depths, str) and sweep.depths != "all":
        raise UserError(f"depths: {sweep.depths!r} is not valid; use `all` or a list of integers")
    extra = sorted(set(sweep.slurm) - {"profiles"})
    if extra or not set(sweep.slurm.get("profiles") or {}) <= set(STAGES):
        raise UserError(f"slurm section: use `slurm: {{profiles: {{base: NAME, transfer: NAME}}}}`, got {sweep.slurm}")
    if "half" in sweep.data:
        raise UserError("data.half is set per cell by the sweep; remove it from the sweep's data section")
    from_dict(DataConfig, sweep.data, "data.")
    bad_stage = sorted(set(sweep.stages) - set(STAGES))
    if bad_stage:
        raise UserError(f"unknown stage {bad_stage[0]!r} under stages; use {', '.join(STAGES)}")
    for where, section in [("train", sweep.train), *((f"stages.{k}", v) for k, v in sweep.stages.items())]:
        extra = sorted(set(section or {}) - set(TRAIN_SECTIONS))
        if extra:
            raise UserError(f"unknown key {where}.{extra[0]}; valid keys here: {', '.join(TRAIN_SECTIONS)}")
        from_dict(CellConfig, {k: v for k, v in (section or {}).items()}, f"{where}.")
        if "arch" in (section or {}).get("model", {}):
            raise UserError(f"{where}.model.arch is set by the sweep's archs list; remove it")


def _cell_config(sweep: SweepConfig, stage: str, arch: str, half: str, seed: int,
                 _cache: dict[tuple[Any, ...], str] | None = None) -> dict[str, Any]:
    """The resolved config of one cell (a fresh copy: callers fill in transfer, labels, paths)."""
    key = (id(sweep), stage, arch, half, seed)
    if _cache is not None and key in _cache:
        return json.loads(_cache[key])  # a JSON round trip copies faster than deepcopy
    train = _merge(sweep.train, sweep.stages.get(stage) or {})
    config = to_dict(CellConfig())
    for section in TRAIN_SECTIONS:
        config[section] = _merge(config[section], train.get(section) or {})
    config["model"]["arch"] = arch
    config["data"] = _merge(config["data"], {**sweep.data, "half": half})
    config["seed"] = seed
    config["wandb"] = to_dict(sweep.wandb)
    if _cache is not None:
        _cache[key] = json.dumps(config)
    return config


def plan_sweep(sweep: SweepConfig) -> SweepPlan:
    """Expand the sweep into cells: base cells first, each transfer cell after the base it copies from."""
    out = Path(sweep.output_dir)
    plan = SweepPlan(sweep.name, out, [])
    templates: dict[tuple[Any, ...], str] = {}  # thousands of transfer cells share a handful of templates

    def add(config: dict[str, Any], cid: str, stage: str, arch: ArchEntry, variant: str, depth: int | None,
            seed: int, depends_on: list[str]) -> str:
        run_dir = out / "cells" / cid
        config["run_dir"] = str(run_dir)
        config["labels"] = {"cell_id": cid, "sweep": sweep.name, "stage": stage, "arch": arch.arch,
                            "variant": variant, "depth": depth, "seed": seed, "unit_kind": arch.unit_kind}
        w = config["wandb"]
        w.update(group=w["group"] or sweep.name, job_type=stage,
                 name=f"{arch.arch} {variant}" + ("" if depth is None else f" n={depth}") + f" s{seed}",
                 tags=[*w["tags"], arch.arch, variant, arch.unit_kind, f"depth={depth}", f"seed={seed}"])
        plan.configs[cid] = config
        plan.cells.append(Cell(cid, stage, arch.arch, variant, depth, seed, arch.unit_kind, depends_on,
                               str(run_dir), str(out / "configs" / f"{cid}.yaml")))
        return cid

    transfers: list[tuple[ArchEntry, int, str, int, dict[str, str]]] = []
    for entry in sweep.archs:
        arch = ArchEntry(**entry)
        count = unit_count(arch.arch, arch.unit_kind)
        if count == 0:
            raise UserError(f"{arch.arch} has no {arch.unit_kind} units; pick another unit_kind for it")
        depths = list(range(1, count + 1)) if sweep.depths == "all" else list(sweep.depths)
        for d in depths:
            if not 1 <= d <= count:
                raise UserError(f"depth {d} is outside {arch.arch}'s {arch.unit_kind} units 1..{count}; fix depths")
        for seed in sweep.seeds:
            base: dict[str, str] = {}
            for half in ("A", "B"):
                config = _cell_config(sweep, "base", arch.arch, half, seed)
                base[half] = add(config, cell_id(config), "base", arch, f"base-{half}", None, seed, [])
            transfers += [(arch, seed, v, d, base) for v in sweep.variants for d in depths]
    for arch, seed, variant, depth, base in transfers:
        half, mode, direction = VARIANTS[variant]
        config = _cell_config(sweep, "transfer", arch.arch, "B", seed, templates)
        config["transfer"] = {"base": base[half], "unit_kind": arch.unit_kind, "depth": depth,
                              "direction": direction, "mode": mode, "mapping": None}
        cid = cell_id(config)  # hashed with the base's *id*; the path is filled in after
        config["transfer"]["base"] = str(out / "cells" / base[half])
        add(config, cid, "transfer", arch, variant, depth, seed, [base[half]])
    return plan


def write_plan(plan: SweepPlan) -> Path:
    """Write every cell's config YAML and the manifest (written last, atomically)."""
    (plan.output_dir / "configs").mkdir(parents=True, exist_ok=True)
    for cell in plan.cells:
        dump_yaml(plan.configs[cell.id], cell.config_path)
    manifest = {"name": plan.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "cells": [asdict(c) for c in plan.cells]}
    path = plan.output_dir / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(path)
    return path


def load_manifest(path: str | Path) -> SweepPlan:
    """A sweep directory (or its manifest.json) -> the plan that was written there."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise UserError(f"{path} does not exist; run `mkf sweep plan SWEEP.yaml` first")
    try:
        data = json.loads(path.read_text())
        cells = [Cell(**c) for c in data["cells"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is not a valid manifest ({exc}); re-plan the sweep") from None
    return SweepPlan(data["name"], path.parent, cells)


def resolve_plan(target: str | Path) -> SweepPlan:
    """`mkf sweep status|run` accept a sweep YAML (re-planned, cheap) or a sweep directory."""
    target = Path(target)
    if target.is_dir() or target.name == MANIFEST:
        return load_manifest(target)
    return plan_sweep(load_sweep(target))
