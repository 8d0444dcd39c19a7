"""Is a frozen unit random *features*, or an identity map? One probe forward pass says, before training.

The random-frozen and shuffled controls are only controls if their frozen units compute something. A unit whose
output equals what its skip path alone would give (a residual block with a zero-initialised branch, a layer
scale of 1e-6) is an identity, and a "random-frozen" curve over such units measures a shallower trainable network.

:func:`probe_units` runs one seeded batch of standard-normal images through the model (eval mode: no drop path,
norms on their running statistics) and, for each unit, compares its module's output with the identity it could
degenerate to:

* a residual block (a block unit with branch scales, :mod:`pipeline.models.residual`): the block's output with its
  branch switched off (those scales zeroed), i.e. its skip path alone;
* any other module whose output has its input's shape: the input itself;
* a module that changes the shape (a stem, a strided or channel-changing layer) cannot be an identity.

A unit that holds residual blocks is as trivial as its weakest block; otherwise a unit that changes the shape is
not trivial, and one of a single shape is as active as its most active layer.

``change`` = ||output - identity|| / ||output||. A unit is *functionally trivial* when ``change < margin``
(:data:`PROBE_MARGIN`, 5%): a zero-init ResNet block gives exactly 0, a random block drawn without zero-init
gives ~0.5-1.5 (measured on timm resnet18/50 and convnext_tiny), so the margin separates the two by an order of
magnitude either way.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.models.layer_plan import TransferUnit, eval_mode
from pipeline.models.residual import branch_scales
from pipeline.transfer.apply import unit_blocks

PROBE_MARGIN = 0.05
PROBE_IMAGES = 4


def _relative(out: torch.Tensor, ref: torch.Tensor) -> float:
    norm = float(out.float().norm())
    return float((out.float() - ref.float()).norm()) / max(norm, 1e-12)


@torch.no_grad()
def probe_units(model: nn.Module, units: list[TransferUnit], image_size: int, in_chans: int = 3,
                seed: int = 0) -> list[dict[str, Any]]:
    """One row per unit: ``{"unit", "module", "change", "identity", "trivial"}`` (see the module doc)."""
    modules = dict(model.named_modules())
    targets: dict[str, TransferUnit] = {}
    blocks: set[str] = set()
    for unit in units:
        held = unit_blocks(unit, modules)
        blocks.update(held)
        rest = [n for n in unit.modules if not any(n == b or n.startswith(b + ".") for b in held)]
        for name in [*held, *rest]:
            targets[name] = unit
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    for name in targets:
        def hook(_m: nn.Module, args: tuple[Any, ...], out: Any, name: str = name) -> None:
            if name not in captured and args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                captured[name] = (args[0].detach().clone(), out.detach().clone())

        hooks.append(modules[name].register_forward_hook(hook))
    param = next(model.parameters())
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(PROBE_IMAGES, in_chans, image_size, image_size, generator=generator)
    try:
        with eval_mode(model):
            model(images.to(device=param.device, dtype=param.dtype))
    finally:
        for h in hooks:
            h.remove()
    per_unit: dict[int, list[tuple[str, float | None, str]]] = {}  # (module, change, identity) per part
    for name, unit in targets.items():
        if name not in captured:
            continue
        x, out = captured[name]
        module = modules[name]
        scales = branch_scales(module) if name in blocks else []
        if scales:
            saved = [(m, p, getattr(m, p).detach().clone()) for m, p in scales]
            try:
                with eval_mode(module):
                    for m, p, _ in saved:
                        getattr(m, p).zero_()
                    skip = module(x)
            finally:
                for m, p, value in saved:
                    getattr(m, p).copy_(value)
            per_unit.setdefault(unit.index, []).append((name, _relative(out, skip), "skip path (branch off)"))
        elif out.shape == x.shape:
            per_unit.setdefault(unit.index, []).append((name, _relative(out, x), "input"))
        else:
            per_unit.setdefault(unit.index, []).append((name, None, "none: the module changes the shape"))
    rows = []
    for index in sorted(per_unit):
        found = per_unit[index]
        held = [f for f in found if f[0] in blocks]
        shaped = [f for f in found if f[1] is None]
        if held:  # a unit holding residual blocks is as trivial as its weakest block (a frozen identity block)
            name, change, identity = min(held, key=lambda f: f[1])  # type: ignore[arg-type,return-value]
        elif shaped:  # a unit that changes the shape is no identity
            name, change, identity = shaped[0]
        else:  # layers of one shape: the most active one speaks for the unit
            name, change, identity = max(found, key=lambda f: f[1])  # type: ignore[arg-type,return-value]
        rows.append({"unit": index, "module": name, "change": None if change is None else round(change, 6),
                     "identity": identity, "trivial": change is not None and change < PROBE_MARGIN})
    return rows
