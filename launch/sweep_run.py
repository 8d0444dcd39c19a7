"""`mkf sweep run`: plan the sweep, write its manifest, and hand every unfinished cell to the executor.

Finished cells are skipped, failed ones have their failure record cleared so they retry, and only the cells about
to run get their config YAML written. The executor (local or Slurm, :mod:`launch.executors`) decides how.
Several sweep files (or a folder of them) run as one catalog plan (:mod:`launch.catalog`): each distinct cell
once, in one submission. Cells finished in a shared store by any sweep count as finished here.
"""

from __future__ import annotations

from pathlib import Path

from launch.console import console, err_console
from launch.sweep_view import print_plan


def run_sweep(sweep_path: str | Path | list[str | Path], executor_name: str = "local", slots: int = 1,
              progress: bool = True, profile: str | None = None, profiles_file: str | None = None,
              dry_run: bool = False) -> int:
    """Plan, write the manifest(s), run (or submit) every cell that is not finished; finished cells are skipped."""
    from launch.catalog import plan_catalog, slurm_section, write_catalog
    from launch.cell_state import cell_state, clear_failure
    from launch.executors import executor_class
    from launch.sweep import materialize_configs

    cls = executor_class(executor_name)
    plan = plan_catalog(sweep_path)
    executor = cls.from_options({"slots": slots, "progress": progress, "profile": profile,
                                 "profiles_file": profiles_file, "dry_run": dry_run,
                                 "sweep_slurm": slurm_section(plan, profile)})
    if dry_run:
        print_plan(plan)
    else:
        write_catalog(plan)
    states = {c.id: cell_state(plan, c) for c in plan.cells}
    todo = [c for c in plan.cells if states[c.id] != "finished"]
    skipped = len(plan.cells) - len(todo)
    console.print(f"sweep {plan.name}: {len(plan.cells)} cells, {skipped} already finished, {len(todo)} to run "
                  f"({sum(states[c.id] == 'interrupted' for c in todo)} resume from a checkpoint)")
    if not dry_run:
        for cell in todo:
            clear_failure(plan, cell)
        materialize_configs(plan, todo)  # only the cells about to run get their config YAML
    outcome = executor.run(plan, todo)
    failed = outcome.failed
    if failed:
        err_console.print(f"{len(failed)} cells did not finish; rerun the same command to retry them")
        return 1
    return 0
