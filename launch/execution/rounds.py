"""Running adaptive depth rounds (the planning side is :mod:`launch.planning.adaptive`).

Locally :func:`run_rounds` loops train -> advance -> train. On Slurm the round's arrays are followed by a small
CPU job (``--dependency=afterany``: torch-free, seconds) running ``mkf sweep advance OUTPUT``, which plans the
next round, submits it and its own follow-up planner job, so a user submits once.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datamodules.errors import UserError
from launch.planning.adaptive import (
    STATE_FILE,
    RoundState,
    Step,
    advance,
    full_plan,
    load_state,
    plan_round,
    results_of,
    save_state,
    sync_state,
)

if TYPE_CHECKING:
    from launch.core.plan import Cell, SweepPlan
    from launch.execution.base import Executor
    from launch.planning.schema import SweepConfig


def _console() -> Any:
    from launch.core.console import console

    return console


def run_rounds(sweep_path: str | Path, executor_name: str = "local", slots: int = 1, progress: bool = True,
               profile: str | None = None, profiles_file: str | None = None, dry_run: bool = False,
               executor: Executor | None = None, bundle: bool = True, bundle_below_min: float | None = None,
               show_plan: Callable[[SweepPlan], None] | None = None) -> int:
    """`mkf sweep run` of an adaptive sweep: train a round, advance, train the next, until every group stopped.

    On Slurm, submits the current round and a planner job after it (which carries on by itself) and returns.
    ``show_plan``: what a dry run prints the round's plan with (`mkf sweep run` passes the views' ``print_plan``).
    """
    from launch.execution.registry import executor_class
    from launch.planning.schema import load_sweep
    from pipeline.config import load_yaml

    path = Path(sweep_path).absolute()
    sweep = load_sweep(path)
    if executor is None:
        executor = executor_class(executor_name).from_options(
            {"slots": slots, "progress": progress, "profile": profile, "profiles_file": profiles_file,
             "dry_run": dry_run, "sweep_slurm": sweep.slurm, "bundle": bundle, "bundle_below_min": bundle_below_min})
    source = {"raw": load_yaml(path) or {}, "folder": str(path.parent), "path": str(path)}
    full = full_plan(sweep)
    state = sync_state(sweep, full, load_state(sweep.output_dir), source)
    if executor.name == "slurm":
        state.executor = {"name": "slurm", "profile": getattr(executor, "default_profile", profile),
                          "profiles_file": str(Path(profiles_file).absolute()) if profiles_file else None}
    return _rounds(sweep, state, executor, retry=True, dry_run=dry_run, show_plan=show_plan)


def advance_sweep(sweep_dir: str | Path) -> int:
    """`mkf sweep advance OUTPUT` (the Slurm planner job): advance the finished groups, submit the next round and
    the planner job after it. Cells that failed are not resubmitted here (a failing cell would loop); a user's
    `mkf sweep run --executor slurm` retries them."""
    from launch.execution.registry import executor_class
    from launch.planning.schema import parse_sweep

    state = load_state(sweep_dir)
    if state is None:
        raise UserError(f"{sweep_dir} has no {STATE_FILE}; start the rounds with `mkf sweep run SWEEP.yaml`")
    sweep = parse_sweep(state.source["raw"], state.source.get("folder"))
    if Path(sweep.output_dir).absolute() != Path(sweep_dir).absolute():
        sweep = sweep.model_copy(update={"output_dir": str(Path(sweep_dir).absolute())})
    options = dict(state.executor or {"name": "local"})
    executor = executor_class(options.pop("name", "local")).from_options({**options, "sweep_slurm": sweep.slurm,
                                                                           "progress": False})
    state = sync_state(sweep, full_plan(sweep), state, state.source)
    return _rounds(sweep, state, executor, retry=False)


def _rounds(sweep: SweepConfig, state: RoundState, executor: Executor, retry: bool, dry_run: bool = False,
            show_plan: Callable[[SweepPlan], None] | None = None) -> int:
    from launch.core.plan import write_plan
    from launch.store.state import cell_state, clear_failure

    console = _console()
    slurm = executor.name == "slurm"
    out = Path(sweep.output_dir)
    advanced = False
    while True:
        plan = plan_round(sweep, state)
        if dry_run:
            if show_plan is not None:
                show_plan(plan)
            if slurm:  # the local executor has no dry run: it would train
                executor.run(plan, [c for c in plan.cells if cell_state(plan, c) != "finished"])
                console.print(f"(dry run) then: {planner_command(out)} after the round's arrays", markup=False)
            return 0
        if not retry and slurm and not advanced and _cancelled(plan):
            state.planner_job = None
            save_state(out, state)
            console.print(f"{_label(state)}: cells of this round were cancelled (mkf sweep cancel / scancel); the "
                          "rounds stop here, `mkf sweep run SWEEP.yaml --executor slurm` resumes them")
            return 0
        if not advanced:  # the planner job first advances on the round that just ended
            step = advance(plan, results_of(plan), state)
            _print_step(console, step)
            plan = plan_round(sweep, state) if step.new_cells else plan
            advanced = True
        write_plan(plan)
        save_state(out, state)
        unfinished = [c for c in plan.cells if cell_state(plan, c) != "finished"]
        todo = unfinished if retry or not slurm else _never_submitted(plan, unfinished)
        console.print(f"sweep {plan.name}: {_label(state)} round {state.round}: {len(plan.cells)} cells planned, "
                      f"{len(plan.cells) - len(unfinished)} finished, {len(todo)} to run")
        outcome = None
        if todo:
            for cell in todo:
                clear_failure(plan, cell)
            outcome = executor.run(plan, todo)  # it writes the configs of what it starts or submits
        if slurm:
            code = _after_slurm_round(plan, state, executor, unfinished, outcome.failed if outcome else [])
            if code is not None:
                return code
            advanced = False  # every cell finished meanwhile: advance again here
            continue
        if outcome is not None and outcome.failed:
            from launch.core.console import err_console

            err_console.print(f"{len(outcome.failed)} cells did not finish; rerun the same command to retry them "
                              "(the rounds carry on from there)")
            return 1
        step = advance(plan, results_of(plan), state)
        _print_step(console, step)
        save_state(out, state)
        if not step.new_cells:
            return _stopped(plan, state)


def _label(state: RoundState) -> str:
    """What the rounds are for: refining depths, adding seeds, or both (a sequential-seeds sweep has no depth spec)."""
    if state.sequential is None:
        return "adaptive depths"
    return "adaptive depths and sequential seeds" if state.spec else "sequential seeds"


def _stopped(plan: SweepPlan, state: RoundState) -> int:
    done = "every curve stopped" if state.sequential is None else (
        "every curve stopped and every comparison decided or out of seeds" if state.spec
        else "every comparison decided or out of seeds")
    _console().print(f"{_label(state)}: {done} after round {state.round} ({len(plan.cells)} cells; "
                     f"`mkf report {plan.output_dir}`)")
    return 0


def _print_step(console: Any, step: Step) -> None:
    for line in step.lines():
        console.print(line, markup=False, highlight=False)


def _cancelled(plan: SweepPlan) -> bool:
    """Whether a user cancelled cells of the plan (not Slurm cancelling dependants of a failed base)."""
    from launch.execution.slurm.commands import JobBook, query_jobs

    book = JobBook.load(plan.output_dir)
    jobs = query_jobs([book.cells[c.id]["job_id"] for c in plan.cells if c.id in book.cells])
    return any(j.state == "CANCELLED" and not j.reason.startswith("Dependency") for j in jobs.values())


def _never_submitted(plan: SweepPlan, cells: list[Cell]) -> list[Cell]:
    """Cells no Slurm job ever took (new this round, or deferred by a job cap): what a planner job submits."""
    from launch.execution.slurm.commands import JobBook

    book = JobBook.load(plan.output_dir)
    return [c for c in cells if c.id not in book.cells]


def _after_slurm_round(plan: SweepPlan, state: RoundState, executor: Executor, unfinished: list[Cell],
                       failed: list[str]) -> int | None:
    """Submit the planner job after every array still running a cell of the plan. None: no job runs any and
    every cell has finished (advance again now); 1: cells failed and nothing runs them."""
    from launch.execution.slurm.commands import ACTIVE_STATES, JobBook, query_jobs
    from launch.store.state import cell_state

    console = _console()
    book = JobBook.load(plan.output_dir)
    tasks = {c.id: book.cells[c.id]["job_id"] for c in unfinished if c.id in book.cells}
    jobs = query_jobs(list(tasks.values()))
    arrays = sorted({book.cells[cid]["array"] for cid, task in tasks.items()
                     if task in jobs and jobs[task].state in ACTIVE_STATES})
    out = plan.output_dir
    if state.planner_job and state.planner_job != os.environ.get("MKF_PLANNER_JOB") and _job_active(state.planner_job):
        console.print(f"adaptive planner job {state.planner_job} is already queued; it advances after this round")
        return 1 if failed else 0
    if not arrays:
        state.planner_job = None
        save_state(out, state)
        left = [c for c in unfinished if cell_state(plan, c) != "finished"]
        if left:
            console.print(f"{_label(state)}: {len(left)} cells did not finish and no job runs them; rerun "
                          "`mkf sweep run SWEEP.yaml --executor slurm` to retry them (the rounds carry on)")
            return 1
        return None if unfinished else _stopped(plan, state)
    state.planner_job = submit_planner(plan, executor, arrays)
    save_state(out, state)
    console.print(f"submitted adaptive planner job {state.planner_job} (after arrays {', '.join(arrays)})")
    return 1 if failed else 0


def _job_active(job_id: str) -> bool:
    from launch.execution.slurm.commands import run_slurm

    proc = run_slurm(["squeue", "-h", "-j", job_id, "-o", "%T"], check=False)
    return bool(proc.stdout.strip())


def cancel_planner(plan: SweepPlan) -> list[str]:
    """`mkf sweep cancel`: scancel the pending planner job too, or it would start the next round after the
    cancelled arrays end."""
    state = load_state(plan.output_dir)
    if state is None or not state.planner_job:
        return []
    from launch.execution.slurm.commands import run_slurm

    job, state.planner_job = state.planner_job, None
    run_slurm(["scancel", job], check=False)
    save_state(plan.output_dir, state)
    return [job]


def planner_command(out: Path) -> str:
    return f"{shlex.quote(sys.executable)} -m launch.cli sweep advance {shlex.quote(str(out.absolute()))}"


def submit_planner(plan: SweepPlan, executor: Any, arrays: list[str]) -> str:
    """sbatch the planner job: one CPU, minutes of limit, after (``afterany``) every array of the round.

    It takes partition, account, QOS, setup lines and interpreter from the transfer stage's profile, nothing
    else (no GPUs, no requeue): it plans and submits, which takes seconds.
    """
    from launch.execution.slurm.commands import run_slurm
    from launch.planning.profiles import pick_profile, profile_for_stage

    name = profile_for_stage(executor.sweep_slurm, "transfer", executor.default_profile)
    profile = pick_profile(executor.profiles, name, "the adaptive planner job")
    slurm_dir = plan.output_dir.absolute() / "slurm"
    (slurm_dir / "logs").mkdir(parents=True, exist_ok=True)
    script = slurm_dir / f"advance-{int(time.time() * 1000)}.sbatch"
    python = shlex.quote(profile.python or sys.executable)
    script.write_text("\n".join([
        "#!/bin/bash",
        "# Generated by mkf for an adaptive sweep: plans and submits its next round (torch-free, seconds).",
        "set -eo pipefail", *profile.setup,
        "# the jobs it submits must not inherit this job's own Slurm settings",
        "export MKF_PLANNER_JOB=\"$SLURM_JOB_ID\"",
        "for v in $(compgen -e | grep -E '^(SLURM|SBATCH|SRUN)_' | grep -v '^SLURM_CONF$'); do unset \"$v\"; done",
        f"exec {python} -m launch.cli sweep advance {shlex.quote(str(plan.output_dir.absolute()))}", ""]))
    cmd = ["sbatch", "--parsable", f"--job-name=mkf-{plan.name}-advance"[:100],
           f"--output={slurm_dir / 'logs' / 'advance-%j.out'}", "--open-mode=append", f"--chdir={Path.cwd()}",
           "--nodes=1", "--ntasks=1", "--cpus-per-task=1", "--time=00:15:00",
           *[f"--{flag}={value}" for flag, value in (("partition", profile.partition), ("account", profile.account),
                                                    ("qos", profile.qos)) if value],
           f"--dependency=afterany:{':'.join(arrays)}", str(script)]
    return run_slurm(cmd).stdout.strip().split(";")[0]
