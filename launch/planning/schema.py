"""The sweep YAML as pydantic models: every key, its choices and default, in one place; unknown keys are errors.

A sweep names its **datasets** by role (each a full cell ``data`` section, merged over the shared ``data``
defaults), optional external **sources** (weights no cell of the sweep trains, e.g. ``timm:convnext_tiny.fb_in1k``),
and **transfers** as source -> target pairs. The old format (one ``data`` section with a class ``split``, no
``datasets``) stays valid as shorthand for datasets ``A`` / ``B`` = the two halves and ``transfers: [A -> B]``.

Validation errors become one :class:`UserError` line naming the key path and the fix. Cell-level sections
(``data``, ``train``, ``stages``, ``wandb``, ``mapping``) are checked against the cell dataclasses of
:mod:`pipeline.config`, the single definition of a cell.

**Recipes.** An arch entry's ``recipe:`` names a file holding published training hyperparameters
(``configs/recipes/*.yaml``, shape ``train: {model, optim, trainer, augment}``). Recipes belong to arch entries
because they are per architecture family and one sweep mixes ResNets and ConvNeXts. The recipe applies to every
cell of that entry, both stages (a transfer cell retrains under the recipe its base was trained with); the source
base of a cross-arch entry trains under the recipe the sweep gives ``source_arch``'s own entries (none if it is not
listed). A cell's training sections are merged, later winning:

    cell defaults < the arch's recipe < the sweep's ``train`` < ``stages.<stage>``

A relative path is looked up next to the sweep file first, then among the shipped configs
(``recipes/convnext_in1k.yaml`` works from an installed package). The recipe's values are part of the cell's
resolved config, so they are part of its id: editing a recipe re-plans its cells as new ones.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from datamodules.errors import UserError
from launch.planning.depths import AdaptiveDepths, SequentialSpec
from pipeline.config import (
    BudgetConfig,
    CellConfig,
    DataConfig,
    MappingConfig,
    ProgressiveConfig,
    WandbConfig,
    from_dict,
    load_yaml,
)

STAGES = ("base", "transfer")
TRAIN_SECTIONS = ("model", "optim", "trainer", "augment")
UnitKind = Literal["depthwise", "pointwise", "both", "block"]
Kind = Literal["depth_curve", "retention", "matrix"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArchSpec(_Strict):
    """A target architecture; ``source_arch`` (+ ``mapping``) makes its transfers cross-architecture."""

    arch: str
    unit_kind: UnitKind = "depthwise"
    source_arch: str | None = None  # copy from a model of this arch (default: the same arch)
    mapping: dict[str, Any] | None = None  # transfer.mapping policy: {units, channels, kernel, seed}
    recipe: str | None = None  # a recipe file (train: {model, optim, trainer, augment}) under this entry's cells


class SourceSpec(_Strict):
    """An external source: weights no cell of this sweep trains (run dir, .safetensors file, timm:<model>[.<tag>])."""

    weights: str
    file: str | None = None  # timm: sources only: a local weights file for the tag (no network)


class TransferPair(_Strict):
    source: str  # a datasets role or a sources name
    target: str  # a datasets role (the target is trained on)


class TrainSpec(_Strict):
    model: dict[str, Any] = Field(default_factory=dict)
    optim: dict[str, Any] = Field(default_factory=dict)
    trainer: dict[str, Any] = Field(default_factory=dict)
    augment: dict[str, Any] = Field(default_factory=dict)


class RecipeFile(_Strict):
    """A recipe file: the training sections a sweep's ``train`` takes (no data: resolutions are the sweep's)."""

    train: TrainSpec


class StagesSpec(_Strict):
    base: TrainSpec = Field(default_factory=TrainSpec)
    transfer: TrainSpec = Field(default_factory=TrainSpec)


class SlurmSpec(_Strict):
    profiles: dict[Literal["base", "transfer", "prepare", "report"], str] = Field(default_factory=dict)


class ReportSpec(_Strict):
    """How ``mkf report`` draws the sweep (the figure itself follows ``kind``)."""

    band: Literal["ci95", "std"] = "ci95"  # the band around the mean over seeds
    retention_variant: str = "AnB"  # retention: the variant whose relative top-1 is retained
    retention_at: Literal["deepest", "mean"] = "deepest"  # retention: at the deepest depth, or averaged over depths


class CalibrationSpec(_Strict):
    """The comparisons `mkf sweep calibrate` trains at both the sweep's ``budget`` and the full length, to show
    that the short budget reproduces the full one before the rest of the sweep is trained short (docs/costs.md
    §6). A subset: a few archs and seeds carry the verdicts; the whole sweep at full length is what a budget saves.
    """

    archs: list[str] | None = None  # arch names of the sweep's archs entries (default: every entry)
    seeds: list[int] | None = None  # default: the sweep's seeds (two or more give the verdicts their own spread)
    depths: Literal["all", "sample"] | list[int] | None = None  # default: the sweep's depths


class SweepConfig(_Strict):
    """A sweep YAML (see docs/sweeps.md for a commented example)."""

    name: str = "sweep"
    kind: Kind = "depth_curve"  # the report: depth curves (Fig. 3/4) | retention (Fig. 5) | matrix (source x target)
    output_dir: str = "results/sweep"
    # the folder relative data paths (a dataset's shards / root) are read from: the one key to edit when your
    # shards live elsewhere (absolute paths and URLs are used as written); None = the current directory
    data_root: str | None = None
    # where cells live by content id (default: output_dir/cells); sweeps sharing a store train a shared cell once
    store: str | None = None
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    data: dict[str, Any] = Field(default_factory=dict)  # defaults merged under every dataset (old format: the split)
    datasets: dict[str, dict[str, Any]] | None = None  # role -> a cell data section
    sources: dict[str, SourceSpec] = Field(default_factory=dict)
    transfers: list[TransferPair] | None = None
    archs: list[ArchSpec] = Field(default_factory=list)
    # all = 1..L per arch and unit kind; sample = its first, middle and last unit (a smoke run's grid); a list; or
    # adaptive (see launch/planning/depths.py)
    depths: Literal["all", "sample"] | list[int] | AdaptiveDepths = "all"
    variants: list[str] = Field(default_factory=lambda: ["AnB", "BnB"])
    # what a frozen depthwise unit freezes: its kernel only (the authors' protocol) or kernel and bias
    freeze: Literal["kernel", "kernel_and_bias"] = "kernel"
    # the layers a transfer cell does not copy: a fresh draw per cell (Yosinski et al.) or base B's own init
    reinit: Literal["fresh", "paired"] = "fresh"
    train: TrainSpec = Field(default_factory=TrainSpec)
    stages: StagesSpec = Field(default_factory=StagesSpec)
    # a shorter run of every cell, bases and transfers alike ({epochs: N} or {steps: N}: trainer.budget), and
    # FFCV-style progressive resizing of every cell (data.progressive); see docs/costs.md §5
    budget: dict[str, Any] | None = None
    progressive: dict[str, Any] | None = None
    calibration: CalibrationSpec | None = None  # `mkf sweep calibrate`: is the budget faithful? (needs budget)
    # seeds after the first only while a point's comparison is undecided (needs 2+ seeds; trained in rounds)
    sequential_seeds: SequentialSpec | None = None
    wandb: dict[str, Any] = Field(default_factory=dict)
    slurm: dict[str, Any] = Field(default_factory=dict)  # {profiles: {base: NAME, transfer: NAME}} (a SlurmSpec)
    report: ReportSpec = Field(default_factory=ReportSpec)
    _recipes: dict[str, dict[str, Any]] = PrivateAttr(default_factory=dict)  # recipe as written -> its train

    # -- derived views, after validation ----------------------------------------------------------------------
    def dataset_sections(self) -> dict[str, dict[str, Any]]:
        """Role -> the data section its cells use (shared ``data`` defaults merged under each dataset), relative
        ``shards`` / ``root`` paths under ``data_root``."""
        if self.datasets is None:  # old format: the split's two halves
            shared = {k: v for k, v in self.data.items() if k != "prepare"}
            return {half: self._rooted({**shared, "half": half}) for half in ("A", "B")}
        return {role: self._rooted({k: v for k, v in _merge(self.data, section).items() if k != "prepare"})
                for role, section in self.datasets.items()}  # cells never see prepare

    def _rooted(self, section: dict[str, Any]) -> dict[str, Any]:
        if not self.data_root:
            return section
        for key in ("shards", "root"):
            value = section.get(key)
            if isinstance(value, str) and value and not (Path(value).is_absolute() or "://" in value
                                                          or value.startswith(("pipe:", "~"))):
                section[key] = str(Path(self.data_root).expanduser() / value)
        return section

    def prepare_specs(self) -> dict[str, Any]:
        """Role -> how its shards are made (a role's ``prepare:``, the arguments of `mkf data write`)."""
        from launch.planning.prepare import parse_prepare

        raw = ({half: self.data.get("prepare") for half in ("A", "B")} if self.datasets is None
               else {role: _merge(self.data, section).get("prepare") for role, section in self.datasets.items()})
        return {role: parse_prepare(role, spec) for role, spec in raw.items() if spec is not None}

    def transfer_pairs(self) -> list[TransferPair]:
        if self.transfers is not None:
            return self.transfers
        return [TransferPair(source="A", target="B")]

    def wandb_config(self) -> WandbConfig:
        """The cells' W&B section. Without ``wandb.project`` the project is ``masterkey-filters-<name>``: one W&B
        project per experiment, because W&B documents about 10,000 runs per project and the paper's catalog alone
        plans more cells than that (group, job type and tags still join the experiments in a dashboard)."""
        section = dict(self.wandb)
        if "project" not in section:
            section["project"] = f"{WandbConfig.project}-" + re.sub(r"[^A-Za-z0-9_.-]", "-", self.name)
        return from_dict(WandbConfig, section, "wandb.")

    def recipe_train(self, recipe: str | None) -> dict[str, Any]:
        """The training sections of an arch entry's recipe (loaded by :func:`parse_sweep`); {} without one."""
        if not recipe:
            return {}
        if recipe not in self._recipes:  # a SweepConfig built in code, not through parse_sweep / load_sweep
            raise UserError(f"recipe {recipe} was never loaded; build the sweep with parse_sweep or load_sweep")
        return self._recipes[recipe]

    def arch_recipes(self) -> dict[str, str | None]:
        """Arch -> the recipe its listed entries give it (for the source bases of cross-arch entries)."""
        return {entry.arch: entry.recipe for entry in self.archs}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _fields_at(loc: tuple[Any, ...], root: type[BaseModel]) -> list[str]:
    """The valid keys of the model at ``loc`` inside ``root`` (for 'valid keys here: ...')."""
    hint: Any = root
    for part in loc:
        hint = _unwrap(hint, part)
        if hint is None:
            return []
    hint = _unwrap(hint, None)
    return list(hint.model_fields) if isinstance(hint, type) and issubclass(hint, BaseModel) else []


def _unwrap(hint: Any, part: Any) -> Any:
    """One step down a type: into a model's field (``part`` a key), a list (an index) or a dict (a key)."""
    while typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), args[0])
    if part is None:
        return hint
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        field = hint.model_fields.get(str(part))
        return field.annotation if field else None
    origin = typing.get_origin(hint)
    if origin is list:
        return typing.get_args(hint)[0]
    if origin is dict:
        return typing.get_args(hint)[1]
    return None


def _tag_name(tag: str) -> str:
    """A pydantic union branch tag as a reader says it: literal['all'] -> 'all', list[int] -> a list of int."""
    if tag.startswith("literal["):
        return " or ".join(part.strip() for part in tag[len("literal["):-1].split(","))
    if tag.startswith("list["):
        return f"a list of {tag[5:-1]}"
    return tag


def _one_line(exc: ValidationError, root: type[BaseModel] | None = None) -> UserError:
    """pydantic's multi-line report -> the first problem, as one line with the key path and the fix."""
    errors = exc.errors()
    # a mapping under depths: report what is wrong inside it (not "use 'all' or a list")
    inside = [e for e in errors if "AdaptiveDepths" in e["loc"] and e["loc"][-1] != "AdaptiveDepths"]
    if inside:
        errors = [{**e, "loc": tuple(p for p in e["loc"] if p != "AdaptiveDepths")} for e in inside]
    err = errors[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))  # drop union branch tags
    path = ".".join(str(p) for p in loc) or "sweep"
    kind = err["type"]
    if kind == "extra_forbidden":
        valid = _fields_at(loc[:-1], root or SweepConfig)
        return UserError(f"unknown key {path}; valid keys here: {', '.join(valid)}")
    if kind == "missing":
        return UserError(f"{path} is required; add it")
    value = err.get("input")
    if loc != tuple(err["loc"]):  # a union: name every accepted form
        tags = [str(p) for e in errors for p in e["loc"] if isinstance(p, str) and "[" in p]
        return UserError(f"{path} = {value!r} is not valid; use {' or '.join(dict.fromkeys(map(_tag_name, tags)))}")
    return UserError(f"{path} = {value!r} is not valid: {err['msg'].lower()}; fix it")


def parse_sweep(raw: Any, folder: str | Path | None = None) -> SweepConfig:
    """A sweep mapping -> a validated :class:`SweepConfig` (structure, then the cross-references between keys).

    ``folder`` is where relative recipe paths are looked up first (the sweep file's folder; default: the
    current directory), before the shipped configs.
    """
    if not isinstance(raw, dict):
        raise UserError(f"a sweep must be a mapping of keys, got {type(raw).__name__}")
    try:
        sweep = SweepConfig.model_validate(raw)
    except ValidationError as exc:
        raise _one_line(exc) from None
    check_sweep(sweep)
    for i, entry in enumerate(sweep.archs):
        if entry.recipe and entry.recipe not in sweep._recipes:
            sweep._recipes[entry.recipe] = load_recipe(find_recipe(entry.recipe, folder, f"archs[{i}].recipe"))
    return sweep


def load_sweep(path: Any) -> SweepConfig:
    raw = load_yaml(path)
    if raw is None or raw == {}:
        raise UserError(f"sweep file {path} is empty; write the sweep's keys into it (docs/sweeps.md has an example)")
    return parse_sweep(raw, Path(path).parent)


def find_recipe(name: str, folder: str | Path | None, where: str = "recipe") -> Path:
    """A recipe path as a sweep writes it -> the file: as given if absolute, else next to the sweep, else shipped."""
    from configs import config_path

    given = Path(name).expanduser()
    if given.is_absolute():
        candidates = [given]
    else:
        candidates = [Path(folder if folder is not None else Path.cwd()) / given, config_path(*given.parts)]
    for path in candidates:
        if path.is_file():
            return path
    raise UserError(f"{where}: recipe file {name} not found (looked at {' and '.join(map(str, candidates))}); "
                    f"fix the path or use a shipped one, e.g. recipes/convnext_in1k.yaml")


def load_recipe(path: Path) -> dict[str, Any]:
    """A recipe file -> its training sections, checked key by key against the cell config (errors name the file)."""
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise UserError(f"recipe {path} must be a mapping with one `train:` section (model, optim, trainer, augment)")
    try:
        spec = RecipeFile.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"recipe {path}: {_one_line(exc, RecipeFile)}") from None
    body = spec.train.model_dump()
    try:
        from_dict(CellConfig, body, "train.")
    except UserError as exc:
        raise UserError(f"recipe {path}: {exc}") from None
    if "arch" in body["model"]:
        raise UserError(f"recipe {path}: train.model.arch is set by the sweep's archs list; remove it")
    return body


def check_sweep(sweep: SweepConfig) -> None:
    """What a type cannot say: references between keys, cell sections, the old-format shorthand."""
    from launch.core.variants import get_variant

    if any(ord(ch) < 32 for ch in sweep.output_dir):
        raise UserError(f"output_dir {sweep.output_dir!r} contains a control character (newline, tab...); rename it")
    if sweep.store is not None and (not sweep.store.strip() or any(ord(ch) < 32 for ch in sweep.store)):
        raise UserError(f"store {sweep.store!r} is empty or contains a control character; give a folder path")
    if not sweep.archs:
        raise UserError("the sweep lists no archs; add e.g. `archs: [{arch: convnext_demo, unit_kind: depthwise}]`")
    for name in sweep.variants:
        get_variant(name)
    if sweep.report.retention_variant not in sweep.variants and sweep.kind == "retention":
        raise UserError(f"report.retention_variant {sweep.report.retention_variant!r} is not among the sweep's "
                        f"variants; add it to variants or pick one of {', '.join(sweep.variants)}")
    if sweep.datasets is None:
        if sweep.transfers is not None:
            raise UserError("transfers name datasets; declare them under `datasets:` (role: data section)")
        if not sweep.data.get("split"):
            raise UserError("the sweep has no datasets; declare `datasets:` with transfers, or give data.split "
                            "(old format: halves A and B of one split)")
        if "half" in sweep.data:
            raise UserError("data.half is set per cell by the sweep; remove it from the sweep's data section")
    elif sweep.transfers is None:
        raise UserError("the sweep declares datasets but no transfers; add e.g. "
                        "`transfers: [{source: A, target: B}]`")
    sections = sweep.dataset_sections()
    for role, section in sections.items():
        from_dict(DataConfig, section, f"datasets.{role}." if sweep.datasets is not None else "data.")
    sweep.prepare_specs()
    clash = sorted(set(sections) & set(sweep.sources))
    if clash:
        raise UserError(f"{clash[0]!r} is both a dataset and a source; rename one of them")
    for i, pair in enumerate(sweep.transfer_pairs()):
        if pair.source not in sections and pair.source not in sweep.sources:
            raise UserError(f"transfers[{i}].source {pair.source!r} is neither a dataset nor a source; use one of "
                            f"{', '.join([*sections, *sweep.sources])}")
        if pair.target not in sections:
            raise UserError(f"transfers[{i}].target {pair.target!r} is not a dataset (targets are trained on); "
                            f"use one of {', '.join(sections)}")
    recipes: dict[str, set[str | None]] = {}
    for i, arch in enumerate(sweep.archs):
        if arch.mapping is not None:
            from_dict(MappingConfig, arch.mapping, f"archs[{i}].mapping.")
        recipes.setdefault(arch.arch, set()).add(arch.recipe)
    for i, arch in enumerate(sweep.archs):
        if arch.source_arch and arch.source_arch != arch.arch and len(recipes.get(arch.source_arch, ())) > 1:
            raise UserError(f"archs[{i}].source_arch {arch.source_arch} is listed with several recipes, so its "
                            f"source base is ambiguous; give every {arch.source_arch} entry the same recipe")
    for where, section in [("train", sweep.train), ("stages.base", sweep.stages.base),
                           ("stages.transfer", sweep.stages.transfer)]:
        body = section.model_dump()
        from_dict(CellConfig, body, f"{where}.")
        if "arch" in body["model"]:
            raise UserError(f"{where}.model.arch is set by the sweep's archs list; remove it")
    sweep.wandb_config()
    try:
        SlurmSpec.model_validate(sweep.slurm)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in ("slurm", *err["loc"]))
        raise UserError(f"{where}: {err['msg'].lower()}; use `slurm: {{profiles: {{base: NAME, transfer: NAME, prepare: NAME, report: NAME}}}}`"
                        ) from None
    if isinstance(sweep.depths, list) and not sweep.depths:
        raise UserError("depths is empty; use `all` or a list of integers")
    _check_budget(sweep)
    if sweep.slurm.get("profiles"):  # the shipped profiles; `run --profiles FILE` checks its own file again
        from launch.planning.profiles import check_stage_worlds, load_profiles

        check_stage_worlds(load_profiles(), sweep.slurm, None, where=f"sweep {sweep.name}")


def _check_budget(sweep: SweepConfig) -> None:
    """``budget`` / ``progressive`` / ``calibration``: their keys, and one place each length is set."""
    if sweep.budget is not None:
        budget = from_dict(BudgetConfig, sweep.budget, "budget.")
        if (budget.epochs is None) == (budget.steps is None):
            raise UserError("budget needs exactly one of epochs or steps, e.g. `budget: {epochs: 16}`")
        for key, value in (("epochs", budget.epochs), ("steps", budget.steps)):
            if value is not None and (isinstance(value, bool) or value < 1):
                raise UserError(f"budget.{key} = {value!r} must be a positive number of {key}")
        for where, section in (("train", sweep.train), ("stages.base", sweep.stages.base),
                               ("stages.transfer", sweep.stages.transfer)):
            if section.trainer.get("budget") is not None:
                raise UserError(f"both budget and {where}.trainer.budget are set; keep the sweep's `budget:` (it "
                                "trains every cell of a comparison alike)")
    if sweep.progressive is not None:
        from_dict(ProgressiveConfig, sweep.progressive, "progressive.")
    if sweep.sequential_seeds is not None and len(sweep.seeds) < 2:
        raise UserError("sequential_seeds decides when to stop adding seeds, but the sweep lists one seed; give "
                        "`seeds: [0, 1, 2]` or remove sequential_seeds")
    if sweep.calibration is not None:
        if sweep.budget is None:
            raise UserError("calibration compares the sweep's budget with the full length, but the sweep sets no "
                            "`budget:`; add e.g. `budget: {epochs: 16}` or remove calibration")
        names = [entry.arch for entry in sweep.archs]
        for arch in sweep.calibration.archs or []:
            if arch not in names:
                raise UserError(f"calibration.archs: {arch} is not one of the sweep's archs ({', '.join(names)}); "
                                "pick from them")
        if sweep.calibration.seeds is not None and not sweep.calibration.seeds:
            raise UserError("calibration.seeds is empty; give seeds, e.g. [0, 1], or remove the key")
