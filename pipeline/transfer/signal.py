"""How much signal a cell's transferred units carry: can they change what the trained model predicts at all?

A transfer curve is only evidence about the units if the units can move the output. ConvNeXt and HorNet blocks
scale their residual branch by a learned *layer scale* initialised at 1e-6; if it never grows (too small a
learning rate, too few steps), a block is an identity plus 1e-6 x its branch, and no filter in it, transferred or
random, can change a prediction: every variant scores the base's top-1 to the fourth digit.

:func:`transfer_signal` measures this once, on the finished model, with one extra forward pass:

* **ablation** (every arch, every unit kind): on a fixed batch of validation images, each floating-point
  parameter of the transferred units is replaced by a seeded Gaussian draw with that tensor's own mean and
  standard deviation (same scale, no learned structure), and the relative L2 change of (a) each block holding a
  unit (the module at the residual sum: the unit's nearest ancestor that is an item of a Sequential/ModuleList,
  e.g. ``stages.0.blocks.1``; the unit's last module for a stem), (b) the logits, and (c) the share of predictions
  that flip is recorded. All units are replaced together: the question is what the transferred set as a whole
  carries, and one forward pass is cheap at any model size;
* **layer scale** (blocks that have one: ConvNeXt's ``gamma``, HorNet's ``gamma1``/``gamma2``, timm's ``ls*``):
  mean |gamma| of each unit's block, per unit and summarised. Free (no forward pass), and the direct cause.

The weights are restored exactly afterwards. The summary keys (``logit_change``, ``block_change_max``,
``layer_scale_mean``) are what the report reads (:func:`pipeline.results.tables.indistinguishable`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.models.layer_plan import TransferUnit, plan_units

SIGNAL_IMAGES = 32  # validation images the ablation runs on: enough for a stable relative norm, one small batch
LAYER_SCALE_NAMES = ("gamma", "gamma1", "gamma2", "layer_scale", "ls1", "ls2", "ls")


def _block_name(unit: TransferUnit, modules: dict[str, nn.Module]) -> str:
    """The module at which a unit's residual branch rejoins: its nearest ancestor that is a container's item."""
    first = unit.modules[0].split(".")
    common = first
    for name in unit.modules[1:]:  # a block unit names many modules: their common prefix is the block
        parts = name.split(".")
        n = 0
        while n < min(len(common), len(parts)) and common[n] == parts[n]:
            n += 1
        common = common[:n]
    if len(unit.modules) > 1 and common and ".".join(common) in modules:
        prefix = common
    else:
        prefix = first[:-1]
    for end in range(len(prefix), 0, -1):
        parent = modules.get(".".join(prefix[: end - 1]), None) if end > 1 else None
        if prefix[end - 1].isdigit() and isinstance(parent, (nn.Sequential, nn.ModuleList)):
            return ".".join(prefix[:end])
    return unit.modules[-1]  # a stem: no residual block around it


def _layer_scale(block: nn.Module) -> float | None:
    """Mean |gamma| of the block's own layer-scale parameters (None when it has none)."""
    values = [p.detach().abs().float().flatten() for name, p in block.named_parameters()
              if name.split(".")[-1] in LAYER_SCALE_NAMES]
    return float(torch.cat(values).mean()) if values else None


def _relative(new: torch.Tensor, old: torch.Tensor) -> float:
    old, new = old.detach().float(), new.detach().float()
    return float((new - old).norm() / old.norm().clamp_min(1e-30))


@torch.no_grad()
def transfer_signal(model: nn.Module, unit_kind: str, units: list[int], images: torch.Tensor,
                    seed: int = 0) -> dict[str, Any]:
    """The signal of ``units`` (1-based indices of ``unit_kind`` units) of ``model`` on ``images``; see module doc."""
    plan = {u.index: u for u in plan_units(model, unit_kind)}
    chosen = [plan[i] for i in units if i in plan]
    modules = dict(model.named_modules())
    blocks = {u.index: _block_name(u, modules) for u in chosen}
    per_unit: list[dict[str, Any]] = [{"unit": u.index, "block": blocks[u.index],
                                       "layer_scale": _layer_scale(modules[blocks[u.index]])} for u in chosen]
    outputs: dict[str, torch.Tensor] = {}
    hooks = [modules[name].register_forward_hook(
        lambda _m, _i, out, name=name: outputs.__setitem__(name, out if torch.is_tensor(out) else out[0]))
        for name in sorted(set(blocks.values()))]
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    images = images[:SIGNAL_IMAGES].to(param.device, param.dtype)
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        logits = model(images).float()
        before = dict(outputs)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        for u in chosen:
            for name in u.modules:
                for p in modules[name].parameters(recurse=False):
                    if not p.is_floating_point():
                        continue
                    saved.append((p, p.detach().clone()))
                    mean, std = p.detach().float().mean(), p.detach().float().std() if p.numel() > 1 else 0.0
                    noise = torch.randn(p.shape, generator=generator).to(p.device, torch.float32)
                    p.copy_((mean + std * noise).to(p.dtype))
        randomised = model(images).float()
        after = dict(outputs)
    finally:
        for p, value in saved:
            p.copy_(value)
        for h in hooks:
            h.remove()
        model.train(was_training)
    for row in per_unit:
        row["block_change"] = _relative(after[row["block"]], before[row["block"]])
    scales = [r["layer_scale"] for r in per_unit if r["layer_scale"] is not None]
    changes = [r["block_change"] for r in per_unit]
    return {
        "method": "units replaced by Gaussian draws of their own mean and std, all at once; relative L2 change",
        "images": int(images.shape[0]),
        "units": per_unit,
        "logit_change": _relative(randomised, logits) if chosen else 0.0,
        "prediction_change": float((randomised.argmax(1) != logits.argmax(1)).float().mean()) if chosen else 0.0,
        "block_change_mean": sum(changes) / len(changes) if changes else None,
        "block_change_max": max(changes) if changes else None,
        "layer_scale_mean": sum(scales) / len(scales) if scales else None,
        "layer_scale_min": min(scales) if scales else None,
    }


def validation_images(datamodule: Any, device: torch.device, count: int = SIGNAL_IMAGES) -> torch.Tensor:
    """The first ``count`` validation images, through the datamodule's own batch hooks (decoding, normalisation),
    exactly as the validation loop sees them: fixed (validation order is not shuffled) and cheap (one batch)."""
    batch = next(iter(datamodule.val_dataloader()))
    batch = datamodule.on_before_batch_transfer(batch, 0)
    batch = datamodule.transfer_batch_to_device(batch, device, 0)
    images, _ = datamodule.on_after_batch_transfer(batch, 0)
    return images[:count]


def cell_signal(module: Any, datamodule: Any) -> dict[str, Any] | None:
    """result.json's ``transfer_signal`` of a finished cell (an ImageClassifier), None when it transferred nothing.

    A measurement that fails (a loader that cannot be iterated again, say) is recorded as ``{"error": ...}``
    rather than raised: the cell's training is done and must not be lost to its diagnostic.
    """
    applied = getattr(module, "applied", None)
    if applied is None or not applied.units:
        return None
    try:
        model = module.model
        images = validation_images(datamodule, next(model.parameters()).device)
        return transfer_signal(model, applied.spec.unit_kind, applied.units, images,
                               seed=applied.spec.seed if applied.spec.seed is not None else 0)
    except Exception as exc:  # noqa: BLE001 - a diagnostic, never the reason a finished cell fails
        return {"error": f"{type(exc).__name__}: {exc}"}
