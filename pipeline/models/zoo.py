"""Model creation: any timm architecture by name, plus the ones this project registers in timm's registry.

Importing this module registers HorNet and the CPU-sized demo variants, so ``timm.create_model("hornet_tiny_7x7")``
works everywhere the project is imported.
"""

from __future__ import annotations

import difflib
from typing import Any

import timm
from torch import nn

from datamodules.errors import UserError
from pipeline.models import demo, hornet  # noqa: F401  (registers the variants)


def check_arch(arch: str) -> None:
    """Raise a UserError with close matches when ``arch`` is not a registered timm model."""
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see `timm.list_models()` for names"
        raise UserError(f"unknown architecture {arch!r}; {hint}")


def create_model(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with a clear error for unknown names; never downloads weights (pretrained=False)."""
    check_arch(arch)
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
