"""What a cell records about how it was trained, for the protocol audit (``mkf sweep audit``).

A transfer curve means something only if its cells are the experiment they claim to be: the transferred units
really are the source's (and stayed put), the re-initialised layers really are new, the random-frozen units
really compute something, and every cell of a comparison trained alike. Each of these is checked after the fact
from ``evidence.json`` in the run directory, written by rank 0:

* ``tensors.start`` / ``tensors.end``: a content hash (:func:`pipeline.models.weights.tensor_digest`) of every
  tensor of the model as training starts (after init and transfer) and as it ends (the saved weights);
* ``random_init``: the tensors whose start values are not one constant (the ones an init *draws*: a LayerNorm's
  ones or a bias's zeros are the same in every model and say nothing about pairing);
* ``transfer``: which keys were copied and from which source key and source hash, which were frozen, the units;
* ``probe``: for frozen random or shuffled units, how far each is from an identity (pipeline.transfer.probe);
* ``seeds``, ``schedule`` (world size, per-device batch, accumulation, global batch, peak LR, warmup, total
  steps, EMA decay, the budget: "16 of 90 epochs" and its stretch), ``resolution`` (train, val, and a progressive
  ramp with each epoch's resolution), ``recipe`` (the training keys that define the run) and ``data`` (dataset,
  split, half, classes, the training and validation sources).

The start part is written once, at the first start of the cell, before any step (a resumed attempt keeps it);
the end part when the cell finishes, just before ``result.json``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from pipeline.config import CellConfig
from pipeline.models.layer_plan import plan_units
from pipeline.models.weights import state_digests
from pipeline.results.run_folder import EVIDENCE_FILE, read_evidence, write_json_atomic
from pipeline.schedule import recipe_view
from pipeline.transfer.probe import PROBE_MARGIN, probe_units

EVIDENCE_VERSION = 1


def random_keys(state: dict[str, torch.Tensor]) -> list[str]:
    """Floating-point tensors of more than one element whose values are not all equal (drawn, not constant)."""
    keys = []
    for key, value in state.items():
        if value.is_floating_point() and value.numel() > 1:
            flat = value.detach().reshape(-1)
            if not bool((flat == flat[0]).all()):
                keys.append(key)
    return keys


def start_evidence(cfg: CellConfig, module: Any, datamodule: Any, init_seed: int, image_size: int,
                   resolution: dict[str, Any] | None = None) -> dict[str, Any]:
    """The start part: the model as built (init + transfer), the transfer's record, the probe, seeds and data.
    ``resolution``: train / val resolutions and a progressive ramp (default: data.image_size / val_image_size)."""
    model = module.model
    state = model.state_dict()
    evidence: dict[str, Any] = {
        "version": EVIDENCE_VERSION,
        "arch": cfg.model.arch,
        "labels": cfg.labels,
        "seeds": {"data": cfg.seed, "init": init_seed,
                  "reinit": cfg.transfer.reinit if cfg.transfer is not None else None},
        "tensors": {"start": state_digests(state)},
        "random_init": random_keys(state),
        "resolution": resolution or {"train": cfg.data.image_size,
                                     "val": cfg.data.val_image_size or cfg.data.image_size},
        "recipe": recipe_view(asdict(cfg)),
        "data": {"dataset": cfg.data.dataset, "loader": cfg.data.loader, "shards": cfg.data.shards,
                 "split": datamodule.split.to_json(), "half": datamodule.half,
                 "classes": list(datamodule.class_names), **datamodule.data_sources()},
    }
    evidence["recipe_digest"] = hashlib.sha1(json.dumps(evidence["recipe"], sort_keys=True).encode()).hexdigest()[:12]
    applied = module.applied
    if applied is not None:
        spec = applied.spec
        frozen = list(applied.frozen)
        modules = dict(model.named_modules())
        for name in applied.frozen_norms:  # a frozen block's BatchNorm statistics are frozen too
            frozen += [f"{name}.{b}" for b, _ in modules[name].named_buffers(recurse=False)]
        evidence["transfer"] = {
            "base": spec.base, "base_id": Path(spec.base).name if spec.base else None,
            "unit_kind": spec.unit_kind, "depth": spec.depth, "direction": spec.direction, "mode": spec.mode,
            "init": spec.init, "freeze": spec.freeze, "mapped": spec.mapping is not None,
            "base_arch": applied.base_arch, "units": list(applied.units), "copied": dict(applied.provenance),
            "frozen": frozen, "redrawn": list(applied.redrawn),
        }
        if spec.mode == "frozen" and spec.init in ("random", "shuffle") and applied.units:
            chosen = set(applied.units)
            units = [u for u in plan_units(model, spec.unit_kind) if u.index in chosen]
            in_chans = int(getattr(model, "pretrained_cfg", {}).get("input_size", (3,))[0])
            evidence["probe"] = {"margin": PROBE_MARGIN, "image_size": image_size,
                                 "units": probe_units(model, units, image_size, in_chans, seed=cfg.seed)}
    return evidence


def write_start(run_dir: Path, evidence: dict[str, Any]) -> None:
    """Write the start part unless an earlier attempt of this cell already did (it started the same model)."""
    if (read_evidence(run_dir) or {}).get("tensors", {}).get("start"):
        return
    write_json_atomic(run_dir / EVIDENCE_FILE, evidence)


def write_end(run_dir: Path, module: Any, schedule: dict[str, Any], steps: int, epochs: int) -> dict[str, Any]:
    """Add the end part (final tensors, the schedule the run had, its steps) to the cell's evidence."""
    evidence = read_evidence(run_dir) or {}
    evidence.setdefault("tensors", {})["end"] = state_digests(module.model.state_dict())
    evidence["schedule"] = {**schedule, **getattr(module, "lr_schedule", {})}
    evidence["steps"], evidence["epochs"] = steps, epochs
    write_json_atomic(run_dir / EVIDENCE_FILE, evidence)
    return evidence
