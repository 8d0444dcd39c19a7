"""The planner's entry point: a sweep (YAML, or its output folder) -> the plan of every cell it trains so far.

:func:`plan_sweep` is the grid (:mod:`.grid`) plus, for an adaptive sweep under way, every round refined since
(:mod:`.adaptive`), so `mkf sweep plan|status SWEEP.yaml` see the refined cells. Pure: it reads the sweep and the
round state, and writes nothing.
"""

from __future__ import annotations

from pathlib import Path

from launch.core.plan import MANIFEST, SweepPlan, load_manifest
from launch.planning.adaptive import with_rounds
from launch.planning.grid import plan_grid
from launch.planning.schema import SweepConfig, load_sweep


def plan_sweep(sweep: SweepConfig) -> SweepPlan:
    """Expand the sweep into cells: base cells first, then every transfer cell (each after its base)."""
    return with_rounds(sweep, plan_grid(sweep))  # an adaptive sweep under way: every round planned so far


def resolve_plan(target: str | Path) -> SweepPlan:
    """`mkf sweep status|run` accept a sweep YAML (re-planned, cheap) or a sweep directory."""
    target = Path(target)
    if target.is_dir() or target.name == MANIFEST:
        return load_manifest(target)
    return plan_sweep(load_sweep(target))
