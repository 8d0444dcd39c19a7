"""Transfer: put the selected units of a fresh model B in a chosen starting state, then freeze or fine-tune them.

This is the whole difference between a base cell and a transfer cell; training itself is unchanged. Where the
units start is an *init mode*, one entry of :data:`INITS`:

* ``copy``    -- model A's weights (Yosinski's AnB / AnB+ / reverse);
* ``random``  -- the random-frozen control: the units keep the cell's own fresh initialisation, so no base weights
  are read and ``transfer.base`` may be empty. If these units, frozen, score as well as transferred ones, a flat
  AnB curve says nothing about transfer. A residual block would otherwise be frozen as an identity map (timm's
  ResNets zero their branches' last BatchNorm, ConvNeXt and HorNet scale branches by 1e-6), so its branch scales
  are drawn as a network built without zero-init would have them (BatchNorm gamma 1; a layer scale at unit gain
  on a probe batch; :mod:`pipeline.models.residual`): random features, as Yosinski et al.'s conventional AlexNet
  layers were;
* ``shuffle`` -- A's weights, then each layer's filters permuted across its output channels (one seeded
  permutation per layer, applied to every per-channel tensor of that layer: weight rows, bias, norm statistics):
  the same filter bank, broken channel correspondence.

What a *frozen* unit fixes is :data:`FREEZES` (``transfer.freeze``). The default, ``kernel``, is the authors'
protocol (their published helper freezes the parameters named ``dwconv.weight`` / ``conv_dw.weight`` and nothing
else): a frozen depthwise, pointwise or ``both`` unit fixes each layer's weight tensor, its kernel, while the layer's
bias keeps training, as do every norm and every layer outside the unit. ``kernel_and_bias`` also fixes the biases.
Block units (Yosinski's protocol for conventional CNNs) freeze the whole block under either value: every parameter
of every layer in it, BatchNorm statistics included, since a block's "kernel" is all of it.

Which source unit and which channels feed each target unit when A's architecture differs is the mapping policy of
:mod:`pipeline.transfer.mapping`. No mode draws from the global random stream, so a depth-0 transfer trains exactly like
a from-scratch run with the same seed.
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
from pipeline.models.layer_plan import UNIT_KINDS, TransferUnit, plan_units, unit_param_names
from pipeline.models.residual import branch_scales, draw_branch_scales
from pipeline.models.weights import load_weights, tensor_digest
from pipeline.transfer.mapping import MappingPolicy, map_tensor, mapping_table

DIRECTIONS = ("first", "last")
MODES = ("frozen", "finetune")
FREEZES = ("kernel", "kernel_and_bias")  # what a frozen unit fixes; block units: the whole block under both
REINITS = ("fresh", "paired")  # layers not copied: a new draw per cell, or the reference base's own init


@dataclass(frozen=True)
class TransferSpec:
    """What to take from model A.

    ``direction='first'`` takes units 1..depth (AnB); ``'last'`` takes units depth..L (the reverse experiment).
    ``mode='frozen'`` fixes them (AnB); ``'finetune'`` keeps training them (AnB+).
    """

    base: str = ""  # run directory, weights .safetensors or timm:<model>[.<tag>] of model A; "" for init random
    base_file: str | None = None  # timm: bases: a local weights file for that tag
    unit_kind: str = "depthwise"
    depth: int = 0
    direction: str = "first"
    mode: str = "frozen"
    init: str = "copy"  # a key of INITS
    freeze: str = "kernel"  # what a frozen unit fixes: kernel (weights only) | kernel_and_bias; blocks: all
    mapping: Any = None  # None: same architecture only; else a MappingPolicy (or its dict from the config)
    seed: int | None = None  # the cell's seed (shuffle); None: torch.initial_seed(), set by seed_everything(seed)
    reinit: str = "fresh"  # fresh | paired: see pipeline.training.train.init_seed (applied where the model is built)

    def __post_init__(self) -> None:
        if self.unit_kind not in UNIT_KINDS:
            raise UserError(f"unknown transfer.unit_kind {self.unit_kind!r}; use one of {', '.join(UNIT_KINDS)}")
        if self.direction not in DIRECTIONS:
            raise UserError(f"unknown transfer.direction {self.direction!r}; use one of {', '.join(DIRECTIONS)}")
        if self.mode not in MODES:
            raise UserError(f"unknown transfer.mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.depth < 0:
            raise UserError(f"transfer.depth must be >= 0, got {self.depth}")
        if self.freeze not in FREEZES:
            raise UserError(f"unknown transfer.freeze {self.freeze!r}; use one of {', '.join(FREEZES)} (kernel: "
                            "only the units' weights, the authors' protocol; kernel_and_bias: their biases too)")
        if self.reinit not in REINITS:
            raise UserError(f"unknown transfer.reinit {self.reinit!r}; use fresh (a new draw of every layer not "
                            "copied, per cell) or paired (the reference base's own initial tensors)")
        if self.init not in INITS:
            raise UserError(f"unknown transfer.init {self.init!r}; use one of {', '.join(INITS)}")
        if not self.base and self.init != "random":
            raise UserError(f"transfer.base is empty; init {self.init} needs model A (a run dir, a .safetensors file "
                            "or timm:<model>), or use init random for the random-frozen control")
        object.__setattr__(self, "mapping", MappingPolicy.coerce(self.mapping))


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


@dataclass
class AppliedTransfer:
    """What :func:`apply_transfer` did, for result.json and for the LightningModule's frozen-norm handling."""

    spec: TransferSpec
    base_arch: str
    units: list[int] = field(default_factory=list)  # 1-based indices of the target's units that were copied
    copied: list[str] = field(default_factory=list)  # state_dict keys copied from A
    frozen_norms: list[str] = field(default_factory=list)  # BatchNorm modules kept in eval mode
    frozen: list[str] = field(default_factory=list)  # parameter names given requires_grad=False

    mapped: list[dict[str, Any]] = field(default_factory=list)  # cross-arch: the mapping table's rows
    # copied key -> {"src": the base's key, "src_digest": content hash of the base tensor as read}: lets the
    # protocol audit check that a transfer read its source cell's final weights
    provenance: dict[str, dict[str, str]] = field(default_factory=dict)
    redrawn: list[str] = field(default_factory=list)  # random units: branch scales drawn away from zero-init

    def to_json(self) -> dict[str, Any]:
        spec = asdict(self.spec)
        spec.pop("seed", None)
        return {**spec, "base_arch": self.base_arch, "units": self.units, "copied_tensors": len(self.copied),
                "frozen_tensors": len(self.frozen), **({"redrawn": self.redrawn} if self.redrawn else {}),
                **({"mapped_units": self.mapped} if self.mapped else {})}


# ---- init modes ---------------------------------------------------------------------------------------------
@dataclass
class InitContext:
    """What an init mode sees: the target model, the chosen units, the spec, and the record to fill in."""

    model: nn.Module
    arch: str
    spec: TransferSpec
    units: list[TransferUnit]
    all_units: list[TransferUnit]
    applied: AppliedTransfer


def _init_random(ctx: InitContext) -> None:
    """The random-frozen control: the units as the model was built (the cell's own seeded init), except that a
    block unit's residual-branch scales are drawn away from zero-init, so the frozen block is no identity."""
    ctx.applied.base_arch = ctx.arch
    modules = dict(ctx.model.named_modules())
    blocks = [b for u in ctx.units for b in unit_blocks(u, modules)]
    seed = ctx.spec.seed if ctx.spec.seed is not None else 0
    ctx.applied.redrawn.extend(draw_branch_scales(ctx.model, blocks, seed=int(seed)))


def unit_blocks(unit: TransferUnit, modules: dict[str, nn.Module]) -> list[str]:
    """The residual blocks a unit holds whole (modules with branch scales, :mod:`pipeline.models.residual`, all
    of whose parameter-owning modules belong to the unit), outermost first, in the unit's order. A ConvNeXt
    block unit that also holds its stage's downsample layer holds one block; a stem holds none."""
    members = set(unit.modules)
    candidates: list[str] = []
    for name in unit.modules:
        parts = name.split(".")
        for end in range(1, len(parts) + 1):
            prefix = ".".join(parts[:end])
            if prefix not in candidates:
                candidates.append(prefix)
    blocks: list[str] = []
    for prefix in candidates:
        module = modules.get(prefix)
        if module is None or any(prefix.startswith(b + ".") for b in blocks):
            continue
        owners = {n if not prefix else f"{prefix}.{n}" if n else prefix
                  for n, m in module.named_modules() if any(True for _ in m.parameters(recurse=False))}
        if owners <= members and branch_scales(module):
            blocks.append(prefix)
    return blocks


def _init_copy(ctx: InitContext) -> None:
    """Copy A's units, tensor for tensor (same arch) or through the mapping policy (other arch)."""
    spec, model, arch = ctx.spec, ctx.model, ctx.arch
    tensors, meta = load_weights(spec.base, spec.base_file)
    base_arch = meta["arch"]
    ctx.applied.base_arch = base_arch
    if base_arch != arch and spec.mapping is None:
        raise UserError(
            f"base weights are {base_arch} but the transfer trains {arch}; use a {arch} base or set "
            "transfer.mapping (units: by_stage|proportional|by_index, channels, kernel; see `mkf layers --map`)"
        )
    if base_arch == arch:
        base_model = model
    else:
        with torch.random.fork_rng():  # building the base skeleton must not shift model B's random stream
            base_model = timm.create_model(base_arch, num_classes=0)
    base_units = plan_units(base_model, spec.unit_kind)
    state = model.state_dict()
    with torch.no_grad():
        if spec.mapping is None:
            for unit in ctx.units:  # same architecture: unit i <- unit i
                if unit.index > len(base_units):
                    raise UserError(f"the base model has only {len(base_units)} units, fewer than the transfer "
                                    "needs; lower the depth")
                base_unit = base_units[unit.index - 1]
                src_keys = unit_param_names(base_model, base_unit)
                dst_keys = unit_param_names(model, unit)
                if len(src_keys) != len(dst_keys):
                    raise UserError(f"unit {unit.index} of {arch} and unit {base_unit.index} of {base_arch} "
                                    "differ in layout")
                for src, dst in zip(src_keys, dst_keys, strict=True):
                    _check_present(tensors, src)
                    if tensors[src].shape != state[dst].shape:
                        raise UserError(
                            f"{src} has shape {tuple(tensors[src].shape)} in the base but {dst} needs "
                            f"{tuple(state[dst].shape)}; set transfer.mapping to map shapes"
                        )
                    state[dst].copy_(tensors[src])
                    ctx.applied.copied.append(dst)
                    ctx.applied.provenance[dst] = {"src": src, "src_digest": tensor_digest(tensors[src])}
            return
        rows = mapping_table(spec.mapping, base_model, base_units, model, ctx.all_units,
                             only={u.index for u in ctx.units})
        for row, pairs in rows:
            for src, dst in pairs:
                _check_present(tensors, src)
                value, _ = map_tensor(spec.mapping, tensors[src], state[dst].shape, row.target, dst)
                state[dst].copy_(value)
                ctx.applied.copied.append(dst)
                ctx.applied.provenance[dst] = {"src": src, "src_digest": tensor_digest(tensors[src])}
            ctx.applied.mapped.append(row.to_json())


def _check_present(tensors: dict[str, torch.Tensor], key: str) -> None:
    if key not in tensors:
        raise UserError(f"base weights lack {key}; they were saved from a different model")


def _init_shuffle(ctx: InitContext) -> None:
    """Copy, then permute each layer's filters across its output channels with a generator seeded by the cell."""
    _init_copy(ctx)
    seed = ctx.spec.seed if ctx.spec.seed is not None else torch.initial_seed()
    generator = torch.Generator().manual_seed(int(seed))
    modules = dict(ctx.model.named_modules())
    with torch.no_grad():
        for unit in ctx.units:
            for name in unit.modules:
                module = modules[name]
                weight = getattr(module, "weight", None)
                if not isinstance(weight, torch.Tensor) or weight.dim() == 0:
                    continue
                channels = weight.shape[0]
                perm = torch.randperm(channels, generator=generator)
                for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
                    if tensor.dim() >= 1 and tensor.shape[0] == channels:
                        tensor.copy_(tensor[perm.to(tensor.device)])


InitMode = Callable[[InitContext], None]
INITS: dict[str, InitMode] = {"copy": _init_copy, "random": _init_random, "shuffle": _init_shuffle}


def apply_transfer(model: nn.Module, arch: str, spec: TransferSpec) -> AppliedTransfer:
    """Put the spec's units in their init mode's state (in place) and freeze them if asked.

    Draws nothing from the global random stream, so a depth-0 transfer trains exactly like a from-scratch run
    with the same seed.
    """
    target_units = plan_units(model, spec.unit_kind)
    if not target_units:
        raise UserError(f"{arch} has no {spec.unit_kind} units; choose another transfer.unit_kind for it")
    chosen = select_units(target_units, spec.depth, spec.direction, arch)
    applied = AppliedTransfer(spec=spec, base_arch=arch)
    INITS[spec.init](InitContext(model, arch, spec, chosen, target_units, applied))
    modules = dict(model.named_modules())
    for unit in chosen:
        applied.units.append(unit.index)
        if spec.mode == "frozen":
            for name in unit.modules:
                module = modules[name]
                for pname in frozen_parameter_names(module, spec.unit_kind, spec.freeze):
                    getattr(module, pname).requires_grad_(False)
                    applied.frozen.append(f"{name}.{pname}" if name else pname)
                if isinstance(module, _BatchNorm) and spec.unit_kind == "block":
                    applied.frozen_norms.append(name)
    return applied


def frozen_parameter_names(module: nn.Module, unit_kind: str, freeze: str) -> list[str]:
    """The direct parameters of one module of a frozen unit that ``freeze`` fixes (see :data:`FREEZES`).

    Block units fix everything (a conventional block has no kernel/bias split worth keeping: Yosinski et al. froze
    whole layers). Other units fix only each layer's ``weight`` under ``kernel`` (the authors' protocol: the
    kernels are what is claimed to transfer, a bias is a per-channel offset the target may re-learn), plus every
    other direct parameter (the bias) under ``kernel_and_bias``.
    """
    names = [n for n, _ in module.named_parameters(recurse=False)]
    if unit_kind == "block" or freeze == "kernel_and_bias":
        return names
    return [n for n in names if n == "weight"]
