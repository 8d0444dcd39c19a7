"""Depthwise kernel initialisations (``model.init``): DoGs (*Neural Echos*), a master-key filter bank (*Quest*), and
K random filters (the *Quest* paper's control).

Applied right after the model is built and before any transfer, so a transfer still overwrites the units it copies.
``masterkey`` and ``random_k`` (with ``freeze``) fix the kernels and leave each channel a learnable bias (the
conv's own, or a new zero one): the pointwise layer that follows absorbs each kernel's scale ``a`` of ``a*f + b``,
the bias plays ``b``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from datamodules.errors import UserError
from pipeline.config import InitConfig
from pipeline.filters.bank import read_filter_bank, resolve_bank_path
from pipeline.filters.dog import family_kernel
from pipeline.models.layer_plan import plan_units

INIT_KINDS = ("default", "dog", "masterkey", "random_k")


@dataclass
class AppliedInit:
    """What :func:`apply_init` did (for tests and result files)."""

    kind: str
    units: int = 0
    kernels: int = 0  # kernels set
    frozen: list[str] = field(default_factory=list)  # parameter names fixed
    added_biases: list[str] = field(default_factory=list)  # bias parameters created
    assignment: dict[str, list[int]] = field(default_factory=dict)  # module -> filter index of each channel

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "assignment"}


def as_init_config(init: InitConfig | dict[str, Any] | None) -> InitConfig:
    if init is None:
        return InitConfig()
    return init if isinstance(init, InitConfig) else InitConfig(**init)


def validate_init(init: InitConfig) -> None:
    """One-line errors for a bad ``model.init`` before anything is built."""
    if init.kind not in INIT_KINDS:
        raise UserError(f"unknown model.init.kind {init.kind!r}; use one of {', '.join(INIT_KINDS)}")
    if init.kind == "dog":
        if init.gamma <= 1:
            raise UserError(f"model.init.gamma = {init.gamma} must be > 1 (surround sigma / centre sigma), e.g. 1.6")
        if not 0 < init.share <= 1:
            raise UserError(f"model.init.share = {init.share} must be in (0, 1] (share of channels set to DoGs)")
    if init.kind == "masterkey":
        resolve_bank_path(init.filters)
    if init.kind == "random_k" and init.k < 1:
        raise UserError(f"model.init.k = {init.k} must be >= 1 (how many random filters)")


def dog_bank(shape: tuple[int, int], gamma: float, count: int = 4) -> np.ndarray:
    """``count`` on-centre DoGs (unit norm) with centre sigmas spread so the surround still fits the kernel."""
    top = max(0.5, min(shape) / (3 * gamma))
    bank = [family_kernel("dog", shape, s, gamma) for s in np.geomspace(0.5, top, count)]
    return np.stack([b / np.linalg.norm(b) for b in bank])


def _set_kernels(conv: nn.Conv2d, channels: np.ndarray, kernels: np.ndarray) -> None:
    with torch.no_grad():
        conv.weight[torch.as_tensor(channels), 0] = torch.as_tensor(kernels, dtype=conv.weight.dtype,
                                                                     device=conv.weight.device)


def _freeze(conv: nn.Conv2d, name: str, applied: AppliedInit) -> None:
    conv.weight.requires_grad_(False)
    applied.frozen.append(f"{name}.weight")
    if conv.bias is None:
        conv.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype, device=conv.weight.device))
        applied.added_biases.append(f"{name}.bias")
    conv.bias.requires_grad_(True)


def apply_init(model: nn.Module, arch: str, init: InitConfig | dict[str, Any] | None,
               seed: int | None = None) -> AppliedInit | None:
    """Set ``model``'s depthwise kernels as ``init`` says (in place); None for ``default``.

    ``seed`` draws the random_k filters; None draws it from torch's global generator (seeded per cell).
    """
    init = as_init_config(init)
    validate_init(init)
    if init.kind == "default":
        return None
    units = plan_units(model, "depthwise")
    if not units:
        raise UserError(f"model.init.kind {init.kind} needs depthwise convolutions, and {arch} has none; "
                        "use kind default for it")
    modules = dict(model.named_modules())
    applied = AppliedInit(init.kind, units=len(units))
    bank: np.ndarray | None = None
    if init.kind == "masterkey":
        bank = read_filter_bank(init.filters)
    if init.kind == "random_k":
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        rng = np.random.default_rng(seed)
    for unit in units:
        name = unit.modules[0]
        conv: nn.Conv2d = modules[name]  # type: ignore[assignment]
        channels, (h, w) = conv.out_channels, tuple(conv.kernel_size)
        if init.kind == "dog":
            chosen = np.unique(np.linspace(0, channels - 1, max(1, round(init.share * channels))).round().astype(int))
            base = dog_bank((h, w), init.gamma)
            sign = np.where(np.arange(len(chosen)) % 2 == 0, 1.0, -1.0)  # on / off centre alternating
            kernels = base[np.arange(len(chosen)) % len(base)] * sign[:, None, None]
            # the norm of the layer's own default init, so activations start at the scale timm chose for it
            scale = float(conv.weight.detach()[:, 0].flatten(1).norm(dim=1).mean())
            _set_kernels(conv, chosen, kernels * scale)
            applied.kernels += len(chosen)
            continue
        if init.kind == "random_k":
            bank = rng.standard_normal((init.k, h, w))
            bank /= np.linalg.norm(bank.reshape(init.k, -1), axis=1)[:, None, None]
        assert bank is not None
        if bank.shape[1:] != (h, w):
            raise UserError(
                f"model.init.filters {init.filters} holds {bank.shape[1]}x{bank.shape[2]} filters but {arch} unit "
                f"{unit.index} ({name}) has {h}x{w} kernels; the filters are not resized (that would change what "
                f"they are): write a {h}x{w} bank with `mkf filters masterkey` on a {arch} run")
        assignment = np.arange(channels) % len(bank)  # round-robin: every filter used equally often
        _set_kernels(conv, np.arange(channels), bank[assignment])
        applied.assignment[name] = assignment.tolist()
        applied.kernels += channels
        if init.freeze:
            _freeze(conv, name, applied)
    return applied
