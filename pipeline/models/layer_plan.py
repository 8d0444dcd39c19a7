"""Layer plans: a model's ordered list of *transfer units* of one kind.

A transfer experiment copies "the first n units" from model A to model B; what a unit is depends on the question:

* ``depthwise`` -- each depthwise conv (groups == in == out channels > 1): the Master Key Filters units;
* ``pointwise`` -- the 1x1 convs / Linears of the block that holds depthwise unit i (the channel mixers), one
  unit per block: "the first n pointwise units" covers the same blocks as "the first n depthwise units", so
  depthwise, pointwise and both curves share one depth axis (per-layer units made depth n of HorNet-T's 170
  mixers a tenth of the network where n depthwise units were n of 25 blocks);
* ``both``      -- depthwise unit i together with the pointwise layers of the same block (ConvNeXt: conv_dw +
  mlp.fc1 + mlp.fc2; HorNet: gnconv.dwconv + proj_in, pws, proj_out, pwconv1/2; MobileNetV3: conv_dw + conv_pw,
  SE convs, conv_pwl), so there are as many ``both`` units as depthwise ones;
* ``block``     -- Yosinski et al.'s units for conventional CNNs: the stem, then every residual block.

Order is *forward* order (found with hooks on one dummy forward pass), since "the first n layers" means the n
layers that see the image first, which need not be the order modules were registered in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from timm.models._manipulate import group_parameters
from torch import nn

from datamodules.errors import UserError

UNIT_KINDS = ("depthwise", "pointwise", "both", "block")


@dataclass(frozen=True)
class TransferUnit:
    """One transferable unit: the modules whose parameters (and buffers) move together."""

    index: int  # 1-based, in forward order
    kind: str
    modules: tuple[str, ...]
    shape: str  # kernel shape for single layers, a layer count for blocks
    num_params: int


def is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def is_pointwise(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1 and tuple(module.kernel_size) == (1, 1)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode for a probe pass, then each back in *its own* mode: ``model.train()`` would put
    a frozen unit's BatchNorm (kept in eval on purpose) back into training and let its statistics drift."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode


def forward_order(model: nn.Module, image_size: int = 64) -> list[str]:
    """Names of the leaf modules in the order a forward pass first calls them (registration order if it fails)."""
    order: list[str] = []
    seen: set[str] = set()
    hooks = []
    for name, module in model.named_modules():
        if not list(module.children()):
            def hook(_m: nn.Module, _i: object, _o: object, name: str = name) -> None:
                if name not in seen:
                    seen.add(name)
                    order.append(name)

            hooks.append(module.register_forward_hook(hook))
    in_chans = int(getattr(model, "pretrained_cfg", {}).get("input_size", (3,))[0])
    try:
        with eval_mode(model), torch.no_grad():
            param = next(model.parameters())
            model(torch.zeros(1, in_chans, image_size, image_size, device=param.device, dtype=param.dtype))
    except Exception:  # models with fixed input sizes: registration order is the best we know
        order = [n for n, m in model.named_modules() if not list(m.children())]
    finally:
        for h in hooks:
            h.remove()
    rank = {n: i for i, n in enumerate(order)}
    # modules never called (unused heads) go last, keeping registration order
    leaves = [n for n, m in model.named_modules() if not list(m.children())]
    return sorted(leaves, key=lambda n: rank.get(n, len(rank) + leaves.index(n)))


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def _classifier_params(model: nn.Module) -> set[str]:
    names: set[str] = set()
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Module):
        ids = {id(p) for p in head.parameters()}
        names = {n for n, p in model.named_parameters() if id(p) in ids}
    return names


def _block_groups(model: nn.Module) -> list[list[str]]:
    """timm's fine parameter groups (stem, each block, ...), without the classifier head's group."""
    matcher = getattr(model, "group_matcher", None)
    if not callable(matcher):
        raise UserError(
            f"{type(model).__name__} has no timm group_matcher, so its blocks are unknown; use --kind depthwise"
        )
    groups = group_parameters(model, matcher(coarse=False))
    head = _classifier_params(model)
    return [names for _, names in sorted(groups.items()) if not head.intersection(names)]


def _owner(param_name: str) -> str:
    return param_name.rsplit(".", 1)[0] if "." in param_name else ""


def plan_units(model: nn.Module, kind: str) -> list[TransferUnit]:
    """The ordered transfer units of ``kind`` in ``model``; an empty list means the model has none of that kind."""
    if kind not in UNIT_KINDS:
        raise UserError(f"unknown unit kind {kind!r}; use one of {', '.join(UNIT_KINDS)}")
    modules = dict(model.named_modules())
    order = forward_order(model)
    position = {n: i for i, n in enumerate(order)}
    units: list[TransferUnit] = []
    if kind == "depthwise":
        for name in order:
            m = modules[name]
            if is_depthwise(m):
                units.append(TransferUnit(len(units) + 1, kind, (name,), _shape(m), _param_count(m)))
        return units
    groups = _block_groups(model)
    if kind == "block":
        for names in sorted(groups, key=lambda ns: min(position.get(_owner(n), 1 << 30) for n in ns)):
            owners = tuple(dict.fromkeys(_owner(n) for n in names))
            owners = tuple(sorted(owners, key=lambda o: position.get(o, 1 << 30)))
            count = sum(_param_count(modules[o]) for o in owners)
            units.append(TransferUnit(len(units) + 1, kind, owners, f"{len(owners)} layers", count))
        return units
    head = {_owner(n) for n in _classifier_params(model)}
    mixers_of: dict[str, list[str]] = {}  # depthwise layer -> the pointwise layers of its block
    for names in groups:
        owners = {_owner(n) for n in names}
        depthwise = sorted((o for o in owners if is_depthwise(modules[o])), key=lambda o: position.get(o, 1 << 30))
        if depthwise:
            mixers = {o for o in owners if is_pointwise(modules[o]) and o not in head}
            # a block with several depthwise convs (none in timm today) gives its mixers to the first one
            mixers_of[depthwise[0]] = sorted(mixers, key=lambda o: position.get(o, 1 << 30))
            for other in depthwise[1:]:
                mixers_of[other] = []
    if kind == "both":
        for name in order:
            m = modules[name]
            if is_depthwise(m):
                owners = (name, *mixers_of.get(name, []))
                count = sum(_param_count(modules[o]) for o in owners)
                units.append(TransferUnit(len(units) + 1, kind, owners, f"{_shape(m)} +{len(owners) - 1}", count))
        return units
    for name in order:  # pointwise: the mixers of each depthwise block, in the blocks' forward order
        m = modules[name]
        if is_depthwise(m) and mixers_of.get(name):
            owners = tuple(mixers_of[name])
            count = sum(_param_count(modules[o]) for o in owners)
            units.append(TransferUnit(len(units) + 1, kind, owners, f"{len(owners)} layers", count))
    return units


def _shape(module: nn.Module) -> str:
    weight = getattr(module, "weight", None)
    return "x".join(str(d) for d in weight.shape) if isinstance(weight, torch.Tensor) else "-"


def unit_param_names(model: nn.Module, unit: TransferUnit) -> list[str]:
    """Every state_dict key (parameters *and* buffers such as BatchNorm statistics) owned by ``unit``."""
    keys = []
    for key in model.state_dict():
        if _owner(key) in unit.modules:
            keys.append(key)
    return keys

