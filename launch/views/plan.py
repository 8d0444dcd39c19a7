"""What `mkf sweep plan` prints: the plan (one row per cell, or a per-stage summary of a large plan) with its cost,
the per-arch schedule (:mod:`.schedule`), and what the store already holds. Presentation only: the planner is
:mod:`launch.planning.planner`; a cell's state is printed by :mod:`.status`.
"""

from __future__ import annotations

import os
from collections import Counter

from rich.table import Table

from launch.core.console import console, err_console


def plan_table(plan) -> Table:  # type: ignore[no-untyped-def]
    table = Table(title=f"sweep {plan.name}: {len(plan.cells)} cells -> {plan.output_dir}")
    for col in ("id", "stage", "arch", "variant", "source->target", "depth", "seed", "depends on"):
        table.add_column(col, no_wrap=col in ("id", "depends on"), min_width=12 if "id" in col else None,
                         overflow="fold")
    for c in plan.cells:
        table.add_row(c.id, c.stage, c.arch + (f" <- {c.source_arch}" if c.source_arch not in (None, c.arch) else ""),
                      c.variant + (f" ({c.unit_kind})" if c.unit_kind else ""),
                      f"{c.source}->{c.target}" if c.stage == "transfer" else str(c.target or ""),
                      "" if c.depth is None else str(c.depth), str(c.seed), ",".join(c.depends_on))
    return table


PLAN_TABLE_MAX = 60  # larger plans print a per-stage summary instead of one row per cell


def plan_summary(plan) -> Table:  # type: ignore[no-untyped-def]
    counts: Counter[tuple[str, str, str, str]] = Counter(
        (c.stage, c.arch, c.variant if c.stage == "transfer" else "base", c.unit_kind) for c in plan.cells)
    table = Table(title=f"sweep {plan.name}: {len(plan.cells):,} cells -> {plan.output_dir}")
    for col in ("stage", "arch", "variant", "unit kind", "cells"):
        table.add_column(col, justify="right" if col == "cells" else "left")
    for (stage, arch, variant, kind), n in sorted(counts.items()):
        table.add_row(stage, arch, variant, kind, f"{n:,}")
    return table


def print_plan(plan, costs: bool = True) -> None:  # type: ignore[no-untyped-def]
    """The cells (a table, or a summary of a large plan), then one cost table (per sweep, the catalog with each
    cell once and what the store saves), what the store already holds, and any W&B project over its run limit."""
    from launch.planning.adaptive import adaptive_cost_lines, full_plan
    from launch.planning.calibration import state_line
    from launch.planning.catalog import cost_lines, parts, wandb_warnings
    from launch.planning.cost import budget_lines, sequential_lines
    from launch.planning.depths import is_adaptive
    from launch.views.schedule import print_schedule

    console.print(plan_table(plan) if len(plan.cells) <= PLAN_TABLE_MAX else plan_summary(plan))
    if costs:
        for line in cost_lines(plan):
            console.print(line, markup=False, highlight=False)
        sweeps = parts(plan)  # a sequential-seeds sweep plans its first seeds now; its range is the full plan's
        sequential = sweeps[0].sweep if len(sweeps) == 1 and getattr(sweeps[0], "sweep", None) is not None \
            and sweeps[0].sweep.sequential_seeds is not None else None
        seq_plan = full_plan(sequential) if sequential is not None else plan
        for line in [*budget_lines(plan), *sequential_lines(seq_plan)]:  # what a budget and sequential seeds save
            console.print(line, markup=False, highlight=False)
        for part in parts(plan):  # a budget sweep: is its budget calibrated?
            sweep = getattr(part, "sweep", None)
            line = state_line(sweep) if sweep is not None else None
            if line:
                console.print(f"{part.name}: {line}", markup=False, highlight=False)
        for part in parts(plan):  # an adaptive sweep: its start grid's cost and the worst case
            sweep = getattr(part, "sweep", None)
            if sweep is not None and is_adaptive(sweep):
                for line in adaptive_cost_lines(part, sweep):
                    console.print(line, markup=False, highlight=False)
    print_schedule(plan)  # per arch: effective LR, steps per cell, EMA horizon, and what looks wrong
    done = store_finished(plan)
    if done:
        console.print(f"{done:,} of {len(plan.cells):,} cells already finished in the store ({plan.store_dir}): "
                      "reused, not retrained", markup=False, highlight=False)
    for line in wandb_warnings(plan):
        err_console.print(line, markup=False, highlight=False)


def store_finished(plan) -> int:  # type: ignore[no-untyped-def]
    """How many of the plan's cells have a result in the store (one listdir, then a stat per candidate)."""
    from pipeline.results.run_folder import run_state

    try:
        present = set(os.listdir(plan.store_dir))
    except OSError:
        return 0
    return sum(1 for c in plan.cells if os.path.basename(c.run_dir) in present and run_state(c.run_dir) == "finished")
