"""Transfer: copy the selected units of model A into a fresh model B, then freeze or fine-tune them.

This is the whole difference between a base cell and a transfer cell; training itself is unchanged. The spec
names a *mapping* from base units to target units, so cross-architecture transfer can plug in later by
registering one more function in :data:`MAPPINGS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import timm
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from datamodules.errors import UserError
from pipeline.layer_plan import UNIT_KINDS, TransferUnit, plan_units, unit_param_names
from pipeline.weights import load_weights

DIRECTIONS = ("first", "last")
MODES = ("frozen", "finetune")


@dataclass(frozen=True)
class TransferSpec:
    """What to take from model A.

    ``direction='first'`` takes units 1..depth (AnB); ``'last'`` takes units depth..L (the reverse experiment).
    ``mode='frozen'`` fixes them (AnB); ``'finetune'`` keeps training them (AnB+).
    """

    base: str  # run directory or weights.safetensors of model A
    base_file: str | None = None
    unit_kind: str = "depthwise"
    depth: int = 0
    direction: str = "first"
    mode: str = "frozen"
    init: str = "copy"
    mapping: Any = None  # None: same architecture only

    def __post_init__(self) -> None:
        if self.unit_kind not in UNIT_KINDS:
            raise UserError(f"unknown transfer.unit_kind {self.unit_kind!r}; use one of {', '.join(UNIT_KINDS)}")
        if self.direction not in DIRECTIONS:
            raise UserError(f"unknown transfer.direction {self.direction!r}; use one of {', '.join(DIRECTIONS)}")
        if self.mode not in MODES:
            raise UserError(f"unknown transfer.mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.depth < 0:
            raise UserError(f"transfer.depth must be >= 0, got {self.depth}")
        if self.mapping is not None and self.mapping not in MAPPINGS:
            raise UserError(f"unknown transfer.mapping {self.mapping!r}; registered: {', '.join(MAPPINGS)}")


def select_units(units: list[TransferUnit], depth: int, direction: str, arch: str = "model") -> list[TransferUnit]:
    """Units 1..depth (``first``) or depth..L (``last``), with a UserError when depth does not fit."""
    count = len(units)
    if direction == "first":
        if depth > count:
            raise UserError(f"depth {depth} is larger than {arch}'s {count} units; use a depth in 0..{count}")
        return units[:depth]
    if not 1 <= depth <= count:
        raise UserError(f"reverse depth {depth} is outside {arch}'s units 1..{count}; use a depth in 1..{count}")
    return units[depth - 1 :]


UnitMapping = Callable[[list[TransferUnit], list[TransferUnit]], list[tuple[TransferUnit, TransferUnit]]]


def map_by_index(base_units: list[TransferUnit], target_units: list[TransferUnit]) -> list[tuple[TransferUnit, TransferUnit]]:
    """Pair target unit i with base unit i (the same-architecture case, and same-shaped cousins)."""
    if len(base_units) < max((u.index for u in target_units), default=0):
        raise UserError(
            f"the base model has only {len(base_units)} units, fewer than the transfer needs; lower the depth"
        )
    return [(base_units[u.index - 1], u) for u in target_units]


MAPPINGS: dict[str, UnitMapping] = {"by_index": map_by_index}


@dataclass
class AppliedTransfer:
    """What :func:`apply_transfer` did, for result.json and for the LightningModule's frozen-norm handling."""

    spec: TransferSpec
    base_arch: str
    units: list[int] = field(default_factory=list)  # 1-based indices of the target's units that were copied
    copied: list[str] = field(default_factory=list)  # state_dict keys copied from A
    frozen_norms: list[str] = field(default_factory=list)  # BatchNorm modules kept in eval mode

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self.spec), "base_arch": self.base_arch, "units": self.units,
                "copied_tensors": len(self.copied)}


def apply_transfer(model: nn.Module, arch: str, spec: TransferSpec) -> AppliedTransfer:
    """Copy the spec's units from the base weights into ``model`` (in place) and freeze them if asked.

    Uses no random numbers, so a depth-0 transfer trains exactly like a from-scratch run with the same seed.
    """
    target_units = plan_units(model, spec.unit_kind)
    if not target_units:
        raise UserError(f"{arch} has no {spec.unit_kind} units; choose another transfer.unit_kind for it")
    chosen = select_units(target_units, spec.depth, spec.direction, arch)
    tensors, meta = load_weights(spec.base)
    base_arch = meta["arch"]
    if base_arch != arch and spec.mapping is None:
        raise UserError(
            f"base checkpoint is {base_arch} but the transfer trains {arch}; use a {arch} base "
            f"or set transfer.mapping (registered: {', '.join(MAPPINGS)})"
        )
    if base_arch == arch:
        base_model = model
    else:
        with torch.random.fork_rng():  # building the base skeleton must not shift model B's random stream
            base_model = timm.create_model(base_arch, num_classes=0)
    base_units = plan_units(base_model, spec.unit_kind)
    pairs = MAPPINGS[spec.mapping or "by_index"](base_units, chosen)
    applied = AppliedTransfer(spec=spec, base_arch=base_arch)
    state = model.state_dict()
    modules = dict(model.named_modules())
    with torch.no_grad():
        for base_unit, unit in pairs:
            src_keys = unit_param_names(base_model, base_unit)
            dst_keys = unit_param_names(model, unit)
            if len(src_keys) != len(dst_keys):
                raise UserError(f"unit {unit.index} of {arch} and unit {base_unit.index} of {base_arch} differ in layout")
            for src, dst in zip(src_keys, dst_keys, strict=True):
                if src not in tensors:
                    raise UserError(f"base weights lack {src}; they were saved from a different model")
                if tensors[src].shape != state[dst].shape:
                    raise UserError(
                        f"{src} has shape {tuple(tensors[src].shape)} in the base but {dst} needs "
                        f"{tuple(state[dst].shape)}; pick a mapping that matches shapes"
                    )
                state[dst].copy_(tensors[src])
                applied.copied.append(dst)
            applied.units.append(unit.index)
            if spec.mode == "frozen":
                for name in unit.modules:
                    module = modules[name]
                    for p in module.parameters(recurse=False):
                        p.requires_grad_(False)
                    if isinstance(module, _BatchNorm):
                        applied.frozen_norms.append(name)
    return applied
