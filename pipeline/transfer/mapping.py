"""Cross-architecture transfer: which source unit, which channels and which kernel taps feed each target unit.

Same-architecture transfer copies unit i of model A into unit i of model B, tensor for tensor. When A and B differ
(ConvNeXt -> HorNet, ConvNeXt-T -> ConvNeXt-B) three questions need an answer, and this module answers them with
one explicit policy (``transfer.mapping: {units, channels, kernel, seed}``) instead of silent guesses:

**Units** -- which source unit feeds target unit t (both lists in forward order, 0-based positions below):

* ``by_index``     source unit t; an error when the source has fewer units;
* ``by_stage``     the source unit at the same *relative position within the same stage*: target unit j of the
  n_t units in stage s takes source unit floor(j * n_s / n_t) of the n_s units in source stage s (stage s scaled
  by S_src / S_tgt when the stage counts differ). Stages are timm's coarse parameter groups (``stages.N``,
  ``layerN``, ``blocks.N``), so "early filters feed early filters" holds even when stage depths differ;
* ``proportional`` the source unit at the same relative position in the whole network: floor(t * N_s / N_t).

**Channels** -- when a dimension that is not a kernel tap differs in size (C_t target, C_s source):

* ``tile``       target channel c takes source channel c mod C_s (repeat when wider, the first C_t when narrower);
* ``subsample``  a seeded permutation of the source channels, repeated as often as needed and cut to C_t: a
  random choice without replacement when narrower, every source channel used floor or ceil(C_t / C_s) times when
  wider. The generator is seeded from ``(seed, target unit, C_s, C_t)``, so the same policy always gives the same
  tensors and, inside one unit, every tensor with the same (C_s, C_t) uses the same channel map (a conv's weight
  and bias, fc1's output rows and fc2's input columns stay consistent);
* ``error``      a UserError naming the tensor.

**Kernels** -- when the spatial size of a 4-d kernel differs (k_t target, k_s source):

* ``center``    centre crop (k_t < k_s) or zero pad around the source kernel (k_t > k_s); odd differences put the
  extra row/column at the bottom/right;
* ``resample``  bilinear interpolation (``align_corners=True``, so corner taps stay corner taps) and then each
  filter rescaled to the *L2 norm (energy) of its source filter*: resampling 7x7 to 3x3 keeps a filter's energy,
  not its DC gain (a filter of zeros stays zeros);
* ``error``     a UserError naming the tensor.

Worked example: ``convnext_demo`` (stages of 1, 1, 2, 1 depthwise units, widths 16/32/64/128, 7x7) into a model
with stages of 2, 2, 2, 2 units and widths 24/48/96/192 with 5x5 kernels, ``units: by_stage``. Target stage 0 has
two units, source stage 0 one: both target units take source unit 1 (floor(0*1/2) = floor(1*1/2) = 0). Target
stage 2's two units take source units 3 and 4. For each pair, ``channels: tile`` maps the 24 target channels to
source channels 0..15, 0..7, and ``kernel: center`` crops the 7x7 kernels to their central 5x5.
``mkf layers --map convnext_demo hornet_demo`` prints the table for a real pair.

The identity case (same architecture, every shape equal) copies tensors unchanged, bit for bit, so a mapping
policy never changes a same-architecture transfer.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.errors import UserError
from pipeline.models.layer_plan import TransferUnit, unit_param_names

UNIT_POLICIES = ("by_index", "by_stage", "proportional")
CHANNEL_POLICIES = ("tile", "subsample", "error")
KERNEL_POLICIES = ("center", "resample", "error")


@dataclass(frozen=True)
class MappingPolicy:
    """``transfer.mapping``: how units, channels and kernels map when the source architecture differs."""

    units: str = "by_stage"
    channels: str = "tile"
    kernel: str = "center"
    seed: int = 0

    def __post_init__(self) -> None:
        for key, value, choices in (("units", self.units, UNIT_POLICIES), ("channels", self.channels,
                                    CHANNEL_POLICIES), ("kernel", self.kernel, KERNEL_POLICIES)):
            if value not in choices:
                raise UserError(f"unknown transfer.mapping.{key} {value!r}; use one of {', '.join(choices)}")

    @classmethod
    def coerce(cls, value: Any) -> MappingPolicy | None:
        """None, a policy, or the dict a cell config carries."""
        if value is None or isinstance(value, MappingPolicy):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"units", "channels", "kernel", "seed"})
            if unknown:
                raise UserError(f"unknown key transfer.mapping.{unknown[0]}; valid keys: units, channels, kernel, seed")
            return cls(**value)
        raise UserError(f"transfer.mapping must be a mapping {{units, channels, kernel, seed}}, got {value!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---- units --------------------------------------------------------------------------------------------------
def unit_stages(model: nn.Module, units: list[TransferUnit]) -> list[int]:
    """Stage number (0-based, in forward order) of each unit, from timm's coarse parameter groups."""
    from timm.models._manipulate import group_parameters

    matcher = getattr(model, "group_matcher", None)
    if not callable(matcher):
        return [0] * len(units)
    groups = group_parameters(model, matcher(coarse=True))
    group_of = {name: gid for gid, names in groups.items() for name in names}
    params = {n for n, _ in model.named_parameters()}
    raw = []
    for unit in units:
        owner = unit.modules[0]
        gid = next((group_of[p] for p in params if p.rsplit(".", 1)[0] == owner and p in group_of), 0)
        raw.append(gid)
    order = {g: i for i, g in enumerate(sorted(set(raw)))}
    return [order[g] for g in raw]


def pair_units(policy: str, source: list[TransferUnit], target: list[TransferUnit],
               source_stages: list[int], target_stages: list[int]) -> list[int]:
    """For every unit of ``target`` (the whole list), the 0-based position of the source unit that feeds it."""
    n_s, n_t = len(source), len(target)
    if n_s == 0:
        raise UserError("the source model has no units of this kind; choose another transfer.unit_kind")
    if policy == "by_index":
        return list(range(n_t))
    if policy == "proportional":
        return [t * n_s // n_t for t in range(n_t)]
    stages_s, stages_t = max(source_stages) + 1, max(target_stages) + 1
    members_s: dict[int, list[int]] = {}
    for i, s in enumerate(source_stages):
        members_s.setdefault(s, []).append(i)
    members_t: dict[int, list[int]] = {}
    for i, s in enumerate(target_stages):
        members_t.setdefault(s, []).append(i)
    result = [0] * n_t
    for stage, positions in members_t.items():
        src_stage = stage * stages_s // stages_t if stages_s != stages_t else stage
        candidates = members_s.get(src_stage)
        if not candidates:  # a stage without units of this kind in the source: nearest stage that has some
            src_stage = min(members_s, key=lambda s: (abs(s - src_stage), s))
            candidates = members_s[src_stage]
        for j, t in enumerate(positions):
            result[t] = candidates[j * len(candidates) // len(positions)]
    return result


# ---- tensors ------------------------------------------------------------------------------------------------
def channel_index(policy: str, size_src: int, size_dst: int, seed: int, unit: int, what: str) -> torch.Tensor:
    """Which source channel feeds each of the ``size_dst`` target channels."""
    if policy == "error":
        raise UserError(f"{what}: {size_src} source channels but {size_dst} target channels; "
                        "set transfer.mapping.channels to tile or subsample")
    if policy == "tile":
        return torch.arange(size_dst) % size_src
    digest = hashlib.sha256(f"{seed}/{unit}/{size_src}/{size_dst}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
    reps = -(-size_dst // size_src)
    return torch.cat([torch.randperm(size_src, generator=generator) for _ in range(reps)])[:size_dst]


def map_kernel(policy: str, weight: torch.Tensor, size: tuple[int, int], what: str) -> torch.Tensor:
    """Bring a [O, I, kh, kw] kernel to the spatial ``size`` by centre crop/pad or energy-preserving resampling."""
    if policy == "error":
        raise UserError(f"{what}: kernel {tuple(weight.shape[-2:])} but the target needs {size}; "
                        "set transfer.mapping.kernel to center or resample")
    if policy == "resample":
        flat = weight.reshape(-1, 1, *weight.shape[-2:]).float()
        out = F.interpolate(flat, size=size, mode="bilinear", align_corners=True)
        src_norm = flat.flatten(1).norm(dim=1)
        out_norm = out.flatten(1).norm(dim=1)
        scale = torch.where(out_norm > 0, src_norm / out_norm.clamp_min(1e-12), torch.zeros_like(out_norm))
        out = out * scale[:, None, None, None]
        return out.reshape(*weight.shape[:-2], *size).to(weight.dtype)
    out = weight
    for dim, target in ((-2, size[0]), (-1, size[1])):
        have = out.shape[dim]
        if have > target:
            start = (have - target) // 2
            out = out.narrow(dim, start, target)
        elif have < target:
            before = (target - have) // 2
            pad_shape = list(out.shape)
            pad_shape[dim] = before
            after_shape = list(out.shape)
            after_shape[dim] = target - have - before
            out = torch.cat([out.new_zeros(pad_shape), out, out.new_zeros(after_shape)], dim=dim)
    return out.contiguous()


def map_tensor(policy: MappingPolicy, src: torch.Tensor, shape: torch.Size, unit: int, what: str) -> tuple[
        torch.Tensor, list[str]]:
    """``src`` reshaped to ``shape`` under ``policy``, and the actions taken (empty when copied unchanged)."""
    if src.shape == shape:
        return src, []
    if src.dim() != len(shape):
        raise UserError(f"{what}: source tensor has {src.dim()} dims, target {len(shape)}; the units' layouts "
                        "differ, choose another transfer.unit_kind (depthwise maps across most architectures)")
    actions: list[str] = []
    out = src
    spatial = (2, 3) if src.dim() == 4 else ()
    if spatial and tuple(src.shape[2:]) != tuple(shape[2:]):
        out = map_kernel(policy.kernel, out, (shape[2], shape[3]), what)
        actions.append(f"kernel {policy.kernel} {src.shape[2]}x{src.shape[3]}->{shape[2]}x{shape[3]}")
    for dim in range(src.dim()):
        if dim in spatial or out.shape[dim] == shape[dim]:
            continue
        index = channel_index(policy.channels, out.shape[dim], shape[dim], policy.seed, unit, what)
        actions.append(f"channels {policy.channels} {out.shape[dim]}->{shape[dim]}")
        out = out.index_select(dim, index)
    return out.contiguous(), actions


@dataclass
class UnitMap:
    """One row of the mapping table: a target unit, its source unit, and what happened to each tensor."""

    target: int  # 1-based unit index in the target model
    source: int  # 1-based unit index in the source model
    target_shape: str
    source_shape: str
    actions: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def pair_tensors(source_model: nn.Module, source_unit: TransferUnit, target_model: nn.Module,
                 target_unit: TransferUnit) -> list[tuple[str, str]]:
    """(source key, target key) for the tensors the two units share, layer by layer, by tensor name.

    Layers pair in unit order; within a layer only tensors both sides hold are mapped (a depthwise conv with a
    bias into one without drops the bias; the other way the target keeps its own initial bias).
    """
    if len(source_unit.modules) != len(target_unit.modules):
        raise UserError(
            f"target unit {target_unit.index} ({', '.join(target_unit.modules)}) and source unit {source_unit.index} "
            f"({', '.join(source_unit.modules)}) hold different layers; transfer depthwise units across architectures"
        )
    src_keys, dst_keys = unit_param_names(source_model, source_unit), unit_param_names(target_model, target_unit)
    pairs = []
    for src_mod, dst_mod in zip(source_unit.modules, target_unit.modules, strict=True):
        src = {k.rsplit(".", 1)[1]: k for k in src_keys if k.rsplit(".", 1)[0] == src_mod}
        dst = {k.rsplit(".", 1)[1]: k for k in dst_keys if k.rsplit(".", 1)[0] == dst_mod}
        if "weight" in dst and "weight" not in src or not set(src) & set(dst):
            raise UserError(f"{dst_mod} and {src_mod} share no tensors; their layers differ, choose another "
                            "transfer.unit_kind")
        pairs.extend((src[name], dst[name]) for name in dst if name in src)
    return pairs


def _unpaired(source_model: nn.Module, source_unit: TransferUnit, target_model: nn.Module,
              target_unit: TransferUnit, pairs: list[tuple[str, str]]) -> list[str]:
    """Actions for tensors only one side holds (e.g. a bias)."""
    used_src, used_dst = {s for s, _ in pairs}, {d for _, d in pairs}
    notes = [f"{k.rsplit('.', 1)[1]} dropped" for k in unit_param_names(source_model, source_unit) if k not in used_src]
    notes += [f"own {k.rsplit('.', 1)[1]} kept" for k in unit_param_names(target_model, target_unit)
              if k not in used_dst]
    return list(dict.fromkeys(notes))


def mapping_table(policy: MappingPolicy, source_model: nn.Module, source_units: list[TransferUnit],
                  target_model: nn.Module, target_units: list[TransferUnit], only: set[int] | None = None,
                  ) -> list[tuple[UnitMap, list[tuple[str, str]]]]:
    """For every target unit (or those whose index is in ``only``): its source unit, tensor pairs and actions.

    Positions are computed over *all* target units, so "the first 3 units" map exactly as they do in the full
    table. With ``only`` set (a real transfer) a unit that cannot be mapped is a UserError; without it (the
    printed table) the row says why.
    """
    chosen = pair_units(policy.units, source_units, target_units, unit_stages(source_model, source_units),
                        unit_stages(target_model, target_units))
    src_state = source_model.state_dict()
    dst_state = target_model.state_dict()
    rows = []
    for unit, pos in zip(target_units, chosen, strict=True):
        if only is not None and unit.index not in only:
            continue
        if pos >= len(source_units):
            if only is not None:
                raise UserError(f"units by_index: target unit {unit.index} has no source unit (the source has "
                                f"{len(source_units)}); use units by_stage or proportional, or lower the depth")
            rows.append((UnitMap(unit.index, 0, unit.shape, "-", ["no source unit (by_index)"]), []))
            continue
        src_unit = source_units[pos]
        try:
            pairs = pair_tensors(source_model, src_unit, target_model, unit)
        except UserError:
            if only is not None:
                raise
            rows.append((UnitMap(unit.index, src_unit.index, unit.shape, src_unit.shape, ["error (layers differ)"]),
                         []))
            continue
        actions: list[str] = _unpaired(source_model, src_unit, target_model, unit, pairs)
        for s, d in pairs:
            try:
                _, acts = map_tensor(policy, src_state[s], dst_state[d].shape, unit.index, d)
            except UserError:
                if only is not None:
                    raise
                acts = [f"error ({s} {tuple(src_state[s].shape)} -> {tuple(dst_state[d].shape)})"]
            actions.extend(a for a in acts if a not in actions)
        rows.append((UnitMap(unit.index, src_unit.index, unit.shape, src_unit.shape, actions or ["copy"]), pairs))
    return rows
