"""`mkf sweep cancel`: stop every cell of a sweep that an executor started (Slurm arrays, local processes), and
the adaptive planner job that would start the next round."""

from __future__ import annotations

from launch.core.console import console
from launch.execution.registry import executors_used
from launch.execution.rounds import cancel_planner
from launch.planning.catalog import parts, resolve_targets


def cancel_targets(targets: list[str] | str) -> int:
    """Cancel the sweeps of ``targets`` (sweep YAMLs, folders of them, sweep or catalog output dirs); says what
    was stopped, per executor."""
    plan = resolve_targets(targets)
    stopped: dict[str, list[str]] = {}
    for p in {id(p): p for p in [plan, *parts(plan)]}.values():  # a catalog run, and each sweep run on its own
        for e in executors_used(p):
            stopped.setdefault(e.name, []).extend(e.cancel(p))
        stopped.setdefault("adaptive planner", []).extend(cancel_planner(p))
    if not any(stopped.values()):
        console.print("nothing running or queued for this sweep")
    for name, ids in stopped.items():
        if ids:
            console.print(f"cancelled ({name}): {', '.join(ids)}")
    return 0
