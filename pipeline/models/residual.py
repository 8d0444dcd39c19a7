"""The parameters that scale a residual block's branch: what makes a freshly built block an identity map.

Modern CNNs start their residual branches at (almost) zero so that a deep network begins as a shallow one:

* timm's ResNets (and EfficientNet/MobileNet blocks) are built with ``zero_init_last``: the last BatchNorm of
  every branch starts with gamma = 0 (and beta = 0), so a fresh block computes ``act(x + 0)``, i.e. ``x`` after a
  ReLU;
* ConvNeXt and HorNet scale their branches by a *layer scale* initialised at 1e-6.

That is harmless when the block trains, but a block that is *frozen* at its init (the random-frozen control of
Yosinski et al.) stays an identity forever: the control then measures a shallower trainable network, not random
features. :func:`branch_scales` finds these parameters, so the transfer can draw them like a network built
without zero-init (``pipeline.transfer.apply``) and the protocol audit can switch a branch off to measure what the
block adds to its skip path (``pipeline.transfer.probe``).

Which BatchNorm is the branch's last is timm's own knowledge: a block with a ``zero_init_last()`` method says so
by what that method zeroes (found on a scratch fill of the block's parameters, then restored bit for bit).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.layer_plan import eval_mode

LAYER_SCALE_NAMES = ("gamma", "gamma1", "gamma2", "layer_scale")  # ConvNeXt, HorNet, timm's LayerScale (ls*.gamma)


def _zero_init_targets(block: nn.Module) -> list[tuple[str, str]]:
    """(module name, parameter name) pairs that ``block.zero_init_last()`` sets to zero."""
    method = getattr(block, "zero_init_last", None)
    if not callable(method):
        return []
    params = dict(block.named_parameters())
    saved = {name: p.detach().clone() for name, p in params.items()}
    try:
        with torch.no_grad():
            for p in params.values():
                p.fill_(1.0)
            method()
            zeroed = [name for name, p in params.items() if p.numel() and not p.detach().any()]
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved[name])
    return [tuple(name.rsplit(".", 1)) if "." in name else ("", name) for name in zeroed]  # type: ignore[misc]


def branch_scales(block: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, parameter name) of every parameter that scales ``block``'s residual branch (empty if none).

    For a zero-initialised BatchNorm both its weight and its bias are returned (the branch's output is
    ``gamma * x_hat + beta``); for a layer scale, the scale itself.
    """
    modules = dict(block.named_modules())
    found: list[tuple[nn.Module, str]] = []
    for owner, pname in _zero_init_targets(block):
        module = modules[owner]
        found.append((module, pname))
        if pname == "weight" and isinstance(getattr(module, "bias", None), nn.Parameter):
            found.append((module, "bias"))
    for module in modules.values():
        for pname, param in module.named_parameters(recurse=False):
            is_scale = pname in LAYER_SCALE_NAMES and param.dim() <= 1
            if is_scale and not any(m is module and n == pname for m, n in found):
                found.append((module, pname))
    return found


def has_residual_branch(block: nn.Module) -> bool:
    return bool(branch_scales(block))


CALIBRATION_SIZE = 64  # probe images for layer-scale calibration: 4 x 3 x 64 x 64 standard normal, seeded


def draw_branch_scales(model: nn.Module, blocks: list[str], seed: int = 0) -> list[str]:
    """Draw the branch scales of ``model``'s ``blocks`` (names, in forward order) so that none is an identity.

    * A zero-initialised BatchNorm gets PyTorch's default, gamma 1 and beta 0: the block a network built without
      ``zero_init_last`` has (its branch is then normalised, of the skip path's order of magnitude).
    * A layer scale is set to one value per block chosen so that the branch moves the block's output by as much as
      its skip path carries (unit gain) on a seeded probe batch: timm's ConvNeXt and HorNet layers start at
      std 0.02, so at layer scale 1 a random block still changes its input by only ~3-4%, nearly an identity
      again; the data-independent gain calibration is LSUV's idea (Mishkin & Matas, 2016) applied to the one
      scale the architecture puts there for this purpose.

    Blocks are done in order, each on the input the already drawn blocks before it give. Draws nothing from the
    global random stream. Returns the parameter names it set.
    """
    modules = dict(model.named_modules())
    drawn: list[str] = []
    for block_name in blocks:
        block = modules[block_name]
        scales = branch_scales(block)
        if not scales:
            continue
        names = {id(m): n for n, m in block.named_modules()}
        layer_scales = []
        with torch.no_grad():
            for module, pname in scales:
                param = getattr(module, pname)
                is_layer_scale = pname in LAYER_SCALE_NAMES
                param.fill_(0.0 if pname == "bias" else 1.0)
                if is_layer_scale:
                    layer_scales.append(param)
                prefix = names[id(module)]
                drawn.append(".".join(p for p in (block_name, prefix, pname) if p))
        if layer_scales:
            gain = _branch_gain(model, block, scales, seed)
            if gain > 0:
                with torch.no_grad():
                    for param in layer_scales:
                        param.div_(gain)
    return drawn


@torch.no_grad()
def _branch_gain(model: nn.Module, block: nn.Module, scales: list[tuple[nn.Module, str]], seed: int) -> float:
    """||block(x) - skip(x)|| / ||skip(x)|| on the block's input from a seeded probe batch (eval mode)."""
    captured: list[torch.Tensor] = []
    hook = block.register_forward_hook(lambda _m, args, _o: captured.append(args[0].detach()) if not captured
                                       else None)
    param = next(model.parameters())
    if param.device.type == "meta":  # a skeleton without values (counting, planning): nothing to calibrate
        hook.remove()
        return 0.0
    in_chans = int(getattr(model, "pretrained_cfg", {}).get("input_size", (3,))[0])
    images = torch.randn(4, in_chans, CALIBRATION_SIZE, CALIBRATION_SIZE,
                         generator=torch.Generator().manual_seed(seed))
    try:
        with eval_mode(model):
            model(images.to(device=param.device, dtype=param.dtype))
            if not captured:
                return 0.0
            x = captured[0]
            out = block(x)
            saved = [(m, p, getattr(m, p).detach().clone()) for m, p in scales]
            for m, p, _ in saved:
                getattr(m, p).zero_()
            skip = block(x)
            for m, p, value in saved:
                getattr(m, p).copy_(value)
    finally:
        hook.remove()
    return float((out - skip).float().norm()) / max(float(skip.float().norm()), 1e-12)
