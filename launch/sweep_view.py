"""What `mkf sweep plan` and `mkf sweep status` print: the plan (one row per cell, or a per-stage summary of a
large plan) with its cost, and every cell's state with the executors' view. Presentation only: the planner is
:mod:`launch.sweep`, states come from :mod:`launch.cell_state`.
"""

from __future__ import annotations

import os
from collections import Counter

from rich.table import Table

from launch.console import console, err_console


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
    from launch.adaptive import adaptive_cost_lines, is_adaptive
    from launch.catalog import cost_lines, parts, wandb_warnings
    from launch.schedule_view import print_schedule

    console.print(plan_table(plan) if len(plan.cells) <= PLAN_TABLE_MAX else plan_summary(plan))
    if costs:
        for line in cost_lines(plan):
            console.print(line, markup=False, highlight=False)
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


def print_status(target: str | list[str], only: list[str] | None = None, limit: int = 0) -> int:
    """Every cell's state joined with each executor's view (Slurm's job and state), then counts per stage, and
    per sweep for a catalog (a cell shared by several sweeps counts in each)."""
    from launch.catalog import parts, resolve_targets
    from launch.cell_state import STATES, cell_state
    from launch.executors import executors_used
    from pipeline.results.run_folder import last_metric, read_attempts

    plan = resolve_targets(target)
    views = [e.status(p) for p in {id(p): p for p in [plan, *parts(plan)]}.values() for e in executors_used(p)]
    table = Table(title=f"sweep {plan.name} ({plan.output_dir})")
    columns = ["id", "stage", "arch", "variant", "depth", "seed", "state", "preempted", "failed", "metric"]
    columns += [c for v in views for c in v.columns]
    for col in columns:
        table.add_column(col, no_wrap=True, min_width=12 if col == "id" else None)
    counts: dict[str, Counter[str]] = {}
    per_sweep: dict[str, Counter[str]] = {}
    shown = 0
    for c in plan.cells:
        state = cell_state(plan, c)
        if state in ("pending", "interrupted") and any(c.id in v.running for v in views):
            state = "running"
        counts.setdefault(c.stage, Counter())[state] += 1
        for name in c.sweeps:
            per_sweep.setdefault(name, Counter())[state] += 1
        if only and state not in only:
            continue
        shown += 1
        if shown > limit > 0:
            continue
        attempts = read_attempts(c.run_dir)
        row = [c.id, c.stage, c.arch, c.variant, "" if c.depth is None else str(c.depth), str(c.seed), state,
               str(attempts["preemptions"]), str(attempts["failures"]), last_metric(c.run_dir)]
        for v in views:
            row += v.rows.get(c.id, [""] * len(v.columns))
        table.add_row(*row)
    console.print(table)
    if shown > limit > 0:
        console.print(f"... {shown - limit} more cells not listed (--limit 0 lists all, --only STATE filters)")
    for stage, counter in counts.items():
        console.print(f"{stage:>8}: " + "  ".join(f"{s}: {counter[s]}" for s in STATES)
                      + f"  total: {sum(counter.values())}")
    total = sum(counts.values(), Counter())
    console.print("   total: " + "  ".join(f"{s}: {total[s]}" for s in STATES) + f"  total: {len(plan.cells)}")
    from launch.adaptive import adaptive_status_lines
    from launch.report import report_state

    for p in parts(plan):  # each sweep's own round state and report
        prefix = f"{p.name}: " if p is not plan else ""
        for line in [*adaptive_status_lines(p), *report_state(p)]:
            console.print(prefix + line, markup=False, highlight=False)
    if len(per_sweep) > 1:
        width = max(map(len, per_sweep))
        console.print("per sweep (shared cells count in each):")
        order = [s["name"] for s in plan.sweeps] or list(per_sweep)
        for name, counter in sorted(per_sweep.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99):
            console.print(f"  {name:<{width}}  " + "  ".join(f"{s}: {counter[s]}" for s in STATES)
                          + f"  total: {sum(counter.values())}", markup=False, highlight=False)
    return 0
