"""Adaptive depth grids: train a few depths, then refine only where the curve moves.

``depths: {adaptive: {start: stages, tolerance: 0.01, max_rounds: 4}}`` in a sweep. (Being written: the
refinement rounds; today only the grid of ``all`` and of explicit lists is planned here.)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from datamodules.errors import UserError


class AdaptiveSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: Literal["stages"] | list[int] = "stages"  # the stage boundaries plus 1 and L, or these depths
    tolerance: float = 0.01  # refine an interval whose end points' means differ by more than this
    max_rounds: int = 4


class AdaptiveDepths(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adaptive: AdaptiveSpec


def depth_grid(depths: object, arch: str, unit_kind: str, count: int) -> list[int]:
    """The depths a sweep plans first for ``arch``'s ``count`` units of ``unit_kind``."""
    if depths == "all":
        return list(range(1, count + 1))
    if isinstance(depths, AdaptiveDepths):
        raise UserError("depths: {adaptive: ...} is not supported yet; use `all` or a list of depths")
    return list(depths)  # type: ignore[call-overload]
