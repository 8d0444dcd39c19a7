"""`mkf sweep smoke`: the same sweeps at smoke scale, to run end to end before the real thing is paid for.

A smoke sweep keeps what makes a sweep the experiment -- its architectures (the real timm models, at full width),
unit kinds, variants, recipes, datasets, split, store, profiles and report kind -- and shrinks only how long and
how wide it trains:

* one seed (the first), the first transfer pair (plus the first pair from an external source whose weights file
  is given with ``--source-file``; others are dropped, as no network is assumed);
* ``depths: sample`` -- the first, middle and last unit of each arch;
* 32 px images, batch 4 per device, one loader worker, 16 training and 8 validation images per dataset (seeded,
  class-stratified: ``data.max_train_samples`` / ``max_val_samples``), one epoch at a global batch of 8, so every
  cell takes two optimizer steps with gradient accumulation;
* W&B off, output and store under ``--out``, relative data paths under ``--data-root``.

Each input sweep becomes one YAML in ``--out`` (the same file name), so ``mkf sweep run OUT/`` runs them as one
catalog, ``mkf sweep audit OUT/`` checks every cell against its protocol and ``mkf sweep report OUT/`` draws every
figure. Smoke cells are not the real cells (their configs differ), so nothing of a smoke run is ever mistaken for
a result. Torch-free.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from datamodules.errors import UserError
from pipeline.config import load_yaml

SMOKE_DATA = {"image_size": 32, "val_image_size": 32, "batch_size": 4, "num_workers": 1,
              "max_train_samples": 16, "max_val_samples": 8}
SMOKE_TRAINER = {"max_epochs": 1, "max_steps": -1, "global_batch_size": 8, "checkpoint_every_n_steps": None,
                 "progress_bar": False}


def smoke_sweep(raw: dict[str, Any], out: Path, data_root: str | None = None,
                source_files: dict[str, str] | None = None) -> dict[str, Any]:
    """A sweep mapping -> its smoke version (see the module doc); ``raw`` is left untouched."""
    if not isinstance(raw, dict) or not raw:
        raise UserError("a sweep to smoke-test must be a non-empty mapping of keys")
    sweep = copy.deepcopy(raw)
    name = str(sweep.get("name", "sweep"))
    results = out / "results"
    sweep["output_dir"] = str(results / name)
    if sweep.get("store"):
        sweep["store"] = str(results / "cells")  # the catalog's shared store stays shared
    sweep["seeds"] = list(sweep.get("seeds") or [0])[:1]
    sweep["depths"] = "sample"
    if data_root is not None:
        sweep["data_root"] = str(data_root)
    sources = sweep.get("sources") or {}
    for source, path in (source_files or {}).items():
        if source in sources:
            sources[source]["file"] = str(path)
    if sweep.get("transfers"):
        pairs = sweep["transfers"]
        internal = [p for p in pairs if p.get("source") not in sources]
        external = [p for p in pairs if p.get("source") in sources and sources[p["source"]].get("file")]
        sweep["transfers"] = internal[:1] + external[:1]
    data = dict(sweep.get("data") or {})
    data.update(SMOKE_DATA)
    sweep["data"] = data
    for section in (sweep.get("datasets") or {}).values():
        for key in SMOKE_DATA:  # a dataset's own size or batch must not undo the smoke scale
            if isinstance(section, dict):
                section.pop(key, None)
    train = dict(sweep.get("train") or {})
    trainer = dict(train.get("trainer") or {})
    trainer.update(SMOKE_TRAINER)
    train["trainer"] = trainer
    sweep["train"] = train
    for stage in (sweep.get("stages") or {}).values():
        if isinstance(stage, dict) and isinstance(stage.get("trainer"), dict):
            for key in SMOKE_TRAINER:
                stage["trainer"].pop(key, None)
    sweep["wandb"] = {**(sweep.get("wandb") or {}), "enabled": False}
    return sweep


def parse_source_files(items: list[str] | None) -> dict[str, str]:
    """``--source-file NAME=PATH`` arguments -> {source name: local weights file}."""
    files: dict[str, str] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--source-file {item!r}: use NAME=PATH (a sweep's sources.NAME and a local weights file)")
        files[name] = path
    return files


def write_smoke(paths: list[str | Path], out: str | Path, data_root: str | None = None,
                source_files: dict[str, str] | None = None) -> list[Path]:
    """Write the smoke version of every sweep file in ``paths`` (files or folders) into ``out``; returns them.

    Recipes named relative to a sweep's folder are written as found (absolute), so the smoke file can live
    anywhere. Every written sweep is parsed and planned here, so a file that would not plan is an error now.
    """
    from launch.planning.catalog import sweep_files
    from launch.planning.schema import find_recipe, load_sweep

    out = Path(out)
    files = sweep_files(paths)
    named = {s for f in files for s in ((load_yaml(f) or {}).get("sources") or {})}
    unknown = sorted(set(source_files or {}) - named)
    if unknown:
        raise UserError(f"--source-file {unknown[0]}=PATH: no sweep has a source {unknown[0]!r}; the sources are: "
                        f"{', '.join(sorted(named)) or 'none'}")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in files:
        raw = load_yaml(path)
        if not raw:
            raise UserError(f"sweep file {path} is empty; nothing to smoke-test")
        smoke = smoke_sweep(raw, out.absolute(), data_root, source_files)
        for i, entry in enumerate(smoke.get("archs") or []):
            if isinstance(entry, dict) and entry.get("recipe"):
                entry["recipe"] = str(find_recipe(entry["recipe"], path.parent, f"archs[{i}].recipe").absolute())
        target = out / path.name
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(f"# smoke version of {path} (mkf sweep smoke): same archs, units, variants and recipes; "
                       "tiny data and steps\n" + yaml.safe_dump(smoke, sort_keys=False))
        tmp.replace(target)
        load_sweep(target)  # a smoke file that would not plan is this command's error, not the run's
        written.append(target)
    return written
