"""Adaptive depth grids, the part a plan needs first: the spec, and the depths a sweep starts from.

``depths: {adaptive: {start: stages, tolerance: 0.01, max_rounds: 4}}`` in a sweep (docs/adaptive.md).

**Start grid.** ``start: stages`` plans the first and the last unit of every stage of the network (stage sizes
come from the torch-free table of :mod:`pipeline.models.unit_counts`), so 1 and L are always in it: ConvNeXt-T's
18 depthwise units in stages of 3/3/9/3 start at 1, 3, 4, 6, 7, 15, 16, 18. ``start: [1, 6, 12, 18]`` plans
exactly the listed depths. Base cells and depthless variants are planned in full in the start round.

The rounds that refine the grid are :mod:`launch.planning.adaptive`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from datamodules.errors import UserError
from pipeline.models.unit_counts import unit_stages


class AdaptiveSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: Literal["stages"] | list[int] = "stages"  # the first and last unit of every stage, or these depths
    tolerance: float = Field(0.01, ge=0)  # refine an interval whose end points' means differ by more than this
    max_rounds: int = Field(4, ge=0)  # refinement rounds after the start grid


class AdaptiveDepths(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adaptive: AdaptiveSpec


# ---- grids --------------------------------------------------------------------------------------------------
class SequentialSpec(BaseModel):
    """``sequential_seeds:``: a transfer point trains its next seed only while one of its comparisons (AnB vs
    random-frozen, AnB vs BnB at its depth) is undecided (pipeline.results.sequential, docs/costs.md §7)."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(0.05, gt=0, lt=1)  # the error rate per comparison over all its looks
    boundary: Literal["pocock", "obrien-fleming"] = "pocock"


def is_adaptive(sweep: Any) -> bool:
    """Whether ``sweep`` (a :class:`~launch.planning.schema.SweepConfig`, which imports this module) is planned
    in rounds: adaptive depths, or sequential seeds (both advance after each round, launch.planning.adaptive)."""
    return adaptive_depths(sweep) or getattr(sweep, "sequential_seeds", None) is not None


def adaptive_depths(sweep: Any) -> bool:
    """Whether ``sweep`` asks for adaptive depths."""
    return isinstance(sweep.depths, AdaptiveDepths)


def start_depths(spec: AdaptiveSpec, arch: str, unit_kind: str, count: int) -> list[int]:
    """The start grid of ``arch``'s ``count`` units: each stage's first and last unit, or ``spec.start``."""
    if spec.start != "stages":
        if not spec.start:
            raise UserError("depths.adaptive.start is empty; use `stages` or a list of depths such as [1, 6, 18]")
        return sorted(set(spec.start))
    sizes = unit_stages(arch, unit_kind)
    if sum(sizes) != count:  # no stage structure known: the two ends
        sizes = [count]
    depths: set[int] = set()
    first = 1
    for size in sizes:
        depths |= {first, first + size - 1}
        first += size
    return sorted(depths)


def depth_grid(depths: object, arch: str, unit_kind: str, count: int) -> list[int]:
    """The depths a sweep plans first for ``arch``'s ``count`` units of ``unit_kind`` (adaptive: the start grid)."""
    if depths == "all":
        return list(range(1, count + 1))
    if depths == "sample":  # the first, middle and last unit: a smoke run of every curve's two ends
        return sorted({1, (count + 1) // 2, count})
    if isinstance(depths, AdaptiveDepths):
        return start_depths(depths.adaptive, arch, unit_kind, count)
    return list(depths)  # type: ignore[call-overload]


def midpoints(depths: list[int]) -> list[int]:
    """The midpoint of every interval between neighbouring depths with a gap above 1."""
    pts = sorted(set(depths))
    return [(a + b) // 2 for a, b in zip(pts, pts[1:], strict=False) if b - a > 1]


def worst_case_depths(depths: list[int], rounds: int) -> list[int]:
    """The depths measured if every interval qualified in every round (the most an adaptive grid can cost)."""
    pts = sorted(set(depths))
    for _ in range(rounds):
        mids = midpoints(pts)
        if not mids:
            break
        pts = sorted(set(pts) | set(mids))
    return pts
