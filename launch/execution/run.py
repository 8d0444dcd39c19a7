"""`mkf sweep run`: plan the sweep, write its manifest, and hand every unfinished cell to the executor.

Finished cells are skipped, failed ones have their failure record cleared so they retry, and only the cells about
to run get their config YAML written. The executor (local or Slurm, :mod:`launch.execution.registry`) decides
how. Several sweep files (or a folder of them) run as one catalog plan (:mod:`launch.planning.catalog`): each
distinct cell once, in one submission. Cells finished in a shared store by any sweep count as finished here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datamodules.errors import UserError
from launch.core.console import console, err_console

if TYPE_CHECKING:
    from launch.core.plan import SweepPlan


def merge_jobs(per_sweep: list[list[Any]]) -> list[Any]:
    """The writes of several sweeps, one per output folder: sweeps sharing shards share one write."""
    jobs: dict[str, Any] = {}
    for job in (j for jobs_of in per_sweep for j in jobs_of):
        seen = jobs.get(str(job.out))
        if seen is None:
            jobs[str(job.out)] = job
        elif seen.spec != job.spec:
            raise UserError(f"two sweeps prepare the shards {job.out} with other arguments (roles "
                            f"{', '.join(seen.roles)} and {', '.join(job.roles)}); give one of them another data.shards")
        else:
            seen.roles.extend(r for r in job.roles if r not in seen.roles)
    return list(jobs.values())


def run_sweep(sweep_path: str | Path | list[str | Path], executor_name: str = "local", slots: int = 1,
              progress: bool = True, profile: str | None = None, profiles_file: str | None = None,
              dry_run: bool = False, bundle: bool = True, bundle_below_min: float | None = None,
              show_plan: Callable[[SweepPlan], None] | None = None) -> int:
    """Plan, write the manifest(s), run (or submit) every cell that is not finished; finished cells are skipped.

    ``bundle`` / ``bundle_below_min``: the local executor's bundles (`--no-bundle`, `--bundle-below MIN`).
    ``show_plan``: what a dry run prints the plan with (`mkf sweep run` passes the views' ``print_plan``)."""
    from launch.execution.prepare_run import run_prepare_local
    from launch.execution.registry import executor_class
    from launch.execution.rounds import run_rounds
    from launch.planning.catalog import parts, plan_catalog, slurm_section, sweep_files, write_catalog
    from launch.planning.checks import check_plan
    from launch.planning.depths import is_adaptive
    from launch.planning.prepare import prepare_jobs
    from launch.store.state import cell_state, clear_failure

    cls = executor_class(executor_name)
    files = sweep_files(sweep_path)
    plan = plan_catalog(files)
    # every value and path checkable without training, before anything is written or submitted; a run reads the
    # data, so a data_root missing here is an error (plan only warns); profiles matter to a Slurm run only
    check_plan(plan, strict=True, profiles_file=profiles_file, profile=profile,
               check_profiles=executor_name == "slurm")
    adaptive = [p for p in parts(plan) if is_adaptive(p.sweep)]  # type: ignore[attr-defined]
    if adaptive and len(files) == 1:  # its rounds: train, refine where the curve moves, train again
        writes = prepare_jobs(adaptive[0].sweep)  # type: ignore[attr-defined]
        if executor_name == "local" and not dry_run:
            run_prepare_local(writes, progress=progress, log=console.print)
        return run_rounds(files[0], executor_name, slots, progress, profile, profiles_file, dry_run,
                          bundle=bundle, bundle_below_min=bundle_below_min, show_plan=show_plan)
    for part in adaptive:
        err_console.print(f"sweep {part.name}: adaptive depths run their rounds one sweep at a time; this catalog run "
                          f"trains its current round only (then `mkf sweep run` its file for the next rounds)")
    writes = merge_jobs([prepare_jobs(p.sweep) for p in parts(plan)])  # type: ignore[attr-defined]
    executor = cls.from_options({"slots": slots, "progress": progress, "profile": profile,
                                 "profiles_file": profiles_file, "dry_run": dry_run, "prepare": writes,
                                 "sweep_slurm": slurm_section(plan, profile), "bundle": bundle,
                                 "bundle_below_min": bundle_below_min})
    if dry_run:
        if show_plan is not None:
            show_plan(plan)
    else:
        write_catalog(plan)
        if executor_name == "local":  # the shards the cells read are written first, here, with a progress bar
            run_prepare_local(writes, progress=progress, log=console.print)
    states = {c.id: cell_state(plan, c) for c in plan.cells}
    todo = [c for c in plan.cells if states[c.id] != "finished"]
    skipped = len(plan.cells) - len(todo)
    console.print(f"sweep {plan.name}: {len(plan.cells)} cells, {skipped} already finished, {len(todo)} to run "
                  f"({sum(states[c.id] == 'interrupted' for c in todo)} resume from a checkpoint)")
    if dry_run and executor_name == "local":  # the local executor has no scripts to print: it would train
        console.print("dry run: nothing trained or written")
        return 0
    if not dry_run:
        for cell in todo:
            clear_failure(plan, cell)
    outcome = executor.run(plan, todo)  # it writes the configs of the cells it starts or submits, no others
    failed = outcome.failed
    if failed:
        err_console.print(f"{len(failed)} cells did not finish; rerun the same command to retry them")
        return 1
    return 0
