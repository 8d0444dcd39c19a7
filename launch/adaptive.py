"""Adaptive depth grids: train a few depths, then refine only where the curve moves.

``depths: {adaptive: {start: stages, tolerance: 0.01, max_rounds: 4}}`` in a sweep (docs/adaptive.md).

**Start grid.** ``start: stages`` plans the first and the last unit of every stage of the network (stage sizes
come from the torch-free table of :mod:`pipeline.models.unit_counts`), so 1 and L are always in it: ConvNeXt-T's
18 depthwise units in stages of 3/3/9/3 start at 1, 3, 4, 6, 7, 15, 16, 18. ``start: [1, 6, 12, 18]`` plans
exactly the listed depths. Base cells and depthless variants are planned in full in the start round.

**Rounds.** A *group* is one curve of the figure: (arch, source arch, unit kind, variant, source, target). Once
every cell of a group has finished, each interval between two neighbouring measured depths whose means over seeds
differ by more than ``tolerance``, or whose bands (the report's band: 95% CI or std, from two seeds up) do not
overlap, gets its midpoint ``(a + b) // 2`` in the next round. A group stops when no interval qualifies
(``converged``), when every qualifying interval has a gap of 1 (``gap 1``), or after ``max_rounds`` refinement
rounds (``max_rounds``; round 0 is the start grid). Groups advance independently.

**Same cells as a full grid.** Every round's plan is the ``depths: all`` plan of the same sweep, filtered to the
depths measured so far: a refined cell *is* the full grid's cell of that depth (same content id, same run
directory), so results are interchangeable and nothing is trained twice.

**Round state** lives in ``OUTPUT/adaptive.json`` (written atomically): the sweep as given (so a Slurm planner job
re-plans without the YAML), each group's depths, round and status, and the pending planner job. Locally
:func:`run_rounds` loops train -> advance -> train. On Slurm the round's arrays are followed by a small CPU job
(``--dependency=afterany``: torch-free, seconds) running ``mkf sweep advance OUTPUT``, which plans the next round,
submits it and its own follow-up planner job, so a user submits once.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from datamodules.errors import UserError
from pipeline.models.unit_counts import unit_count, unit_stages

if TYPE_CHECKING:
    from launch.executor_base import Executor
    from launch.sweep import Cell, SweepPlan
    from launch.sweep_schema import SweepConfig

STATE_FILE = "adaptive.json"
STOPPED = ("converged", "gap 1", "max_rounds")  # a group's status once it refines no more
GroupKey = tuple[str, str, str, str, str, str]  # arch, source arch, unit kind, variant, source, target


class AdaptiveSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: Literal["stages"] | list[int] = "stages"  # the first and last unit of every stage, or these depths
    tolerance: float = Field(0.01, ge=0)  # refine an interval whose end points' means differ by more than this
    max_rounds: int = Field(4, ge=0)  # refinement rounds after the start grid


class AdaptiveDepths(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adaptive: AdaptiveSpec


# ---- grids --------------------------------------------------------------------------------------------------
def is_adaptive(sweep: SweepConfig) -> bool:
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


def group_key(item: Cell | dict[str, Any]) -> GroupKey:
    """The curve a transfer cell (or a results row) belongs to."""
    get = item.get if isinstance(item, dict) else lambda k: getattr(item, k)
    return tuple(str(get(k) or "") for k in ("arch", "source_arch", "unit_kind", "variant", "source",  # type: ignore[return-value]
                                              "target"))


def key_name(key: GroupKey) -> str:
    arch, source_arch, kind, variant, source, target = key
    arch = arch if source_arch in ("", arch) else f"{arch}<-{source_arch}"
    return f"{arch} {kind} {variant} {source}->{target}"


# ---- round state --------------------------------------------------------------------------------------------
@dataclass
class Group:
    """One curve's refinement: the depths planned so far, its round (0 = start grid) and why it stopped."""

    key: list[str]
    units: int
    depths: list[int]
    round: int = 0
    status: str = "training"  # training (cells of the current round pending), or one of STOPPED
    added: list[list[int]] = field(default_factory=list)  # the depths each refinement round added


@dataclass
class RoundState:
    """``OUTPUT/adaptive.json``."""

    name: str
    spec: dict[str, Any]
    source: dict[str, Any]  # {"raw": the sweep mapping, "folder": where its recipes are looked up, "path": file}
    groups: dict[str, Group] = field(default_factory=dict)
    executor: dict[str, Any] = field(default_factory=dict)  # how the planner job submits: {"name", "profile", ...}
    planner_job: str | None = None  # the Slurm job that advances after the current round
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per advance that added depths

    @property
    def round(self) -> int:
        return max((g.round for g in self.groups.values()), default=0)

    def depths(self) -> dict[GroupKey, set[int]]:
        return {tuple(g.key): set(g.depths) for g in self.groups.values()}  # type: ignore[misc]


def state_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / STATE_FILE


def load_state(output_dir: str | Path) -> RoundState | None:
    path = state_path(output_dir)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        groups = {k: Group(**g) for k, g in data.pop("groups").items()}
        return RoundState(**data, groups=groups)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is not a valid adaptive round state ({exc}); delete it to restart the rounds "
                        "from the start grid (finished cells are kept)") from None


def save_state(output_dir: str | Path, state: RoundState) -> Path:
    from pipeline.results.run_folder import write_json_atomic

    path = state_path(output_dir)
    write_json_atomic(path, asdict(state))
    return path


def full_plan(sweep: SweepConfig) -> SweepPlan:
    """The ``depths: all`` plan of ``sweep``: every round's cells are taken from it, so ids match a full grid."""
    from launch.sweep import plan_sweep

    return plan_sweep(sweep.model_copy(update={"depths": "all"}))


def sync_state(sweep: SweepConfig, full: SweepPlan, state: RoundState | None, source: dict[str, Any]) -> RoundState:
    """The round state for ``sweep`` as given now: groups it no longer plans are dropped, new ones start at their
    start grid, the spec is the current one, and every group is re-examined at the next advance (cheap: it only
    reads results), so raising ``max_rounds`` or lowering ``tolerance`` resumes refinement."""
    spec = sweep.depths.adaptive  # type: ignore[union-attr]
    old = state.groups if state else {}
    groups: dict[str, Group] = {}
    for cell in full.cells:
        if cell.stage != "transfer" or cell.depth is None:
            continue
        key = group_key(cell)
        name = key_name(key)
        if name in groups:
            continue
        units = unit_count(cell.arch, cell.unit_kind)
        for d in start_depths(spec, cell.arch, cell.unit_kind, units):
            if not 1 <= d <= units:
                raise UserError(f"depths.adaptive.start: depth {d} is outside {cell.arch}'s {cell.unit_kind} units "
                                f"1..{units}; fix the start list")
        if name in old and old[name].units == units:
            groups[name] = old[name]
            groups[name].status = "training"
        else:
            groups[name] = Group(list(key), units, start_depths(spec, cell.arch, cell.unit_kind, units))
    if state is None:
        return RoundState(sweep.name, spec.model_dump(), source, groups)
    state.name, state.spec, state.source, state.groups = sweep.name, spec.model_dump(), source, groups
    return state


def plan_round(sweep: SweepConfig, state: RoundState, full: SweepPlan | None = None) -> SweepPlan:
    """Every cell planned so far: bases and depthless cells, and each group's depths (the full grid's cells)."""
    plan = full or full_plan(sweep)
    keep = state.depths()
    plan.cells = [c for c in plan.cells if c.stage == "base" or c.depth is None
                  or c.depth in keep.get(group_key(c), ())]
    return plan


def with_rounds(sweep: SweepConfig, plan: SweepPlan) -> SweepPlan:
    """``plan_sweep``'s hook: an adaptive sweep whose output folder holds round state plans every round so far
    (so `mkf sweep plan|status SWEEP.yaml` see the refined cells); anything else is returned as it is."""
    if not is_adaptive(sweep):
        return plan
    state = load_state(sweep.output_dir)
    if state is None:
        return plan
    full = full_plan(sweep)
    return plan_round(sweep, sync_state(sweep, full, state, state.source), full)


# ---- advancing ----------------------------------------------------------------------------------------------
@dataclass
class Step:
    """What one advance did: depths added per group, groups still waiting for cells, groups that stopped."""

    added: dict[str, list[int]] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)  # group -> cells not finished (or without reference)
    stopped: dict[str, str] = field(default_factory=dict)  # group -> why, for groups that stopped now

    @property
    def new_cells(self) -> bool:
        return bool(self.added)

    def lines(self) -> list[str]:
        out = [f"  + {name}: depths {', '.join(map(str, d))}" for name, d in self.added.items()]
        out += [f"  = {name}: {why}" for name, why in self.stopped.items()]
        out += [f"  ? {name}: waiting for {n} cells" for name, n in self.waiting.items()]
        return out


def _band(s: dict[str, Any], band: str) -> tuple[float, float]:
    """The band the report draws around a mean (pipeline.results.figures draws the same)."""
    if band == "std":
        return s["mean"] - s["std"], s["mean"] + s["std"]
    return s["ci95_low"], s["ci95_high"]


def differ(a: dict[str, Any], b: dict[str, Any], tolerance: float, band: str = "ci95") -> bool:
    """Whether two neighbouring summary points (mean over seeds, with band) call for a point between them."""
    if abs(a["mean"] - b["mean"]) > tolerance:
        return True
    if a["n"] > 1 and b["n"] > 1:  # one seed has no band
        lo_a, hi_a = _band(a, band)
        lo_b, hi_b = _band(b, band)
        return hi_a < lo_b or hi_b < lo_a
    return False


def advance(plan: SweepPlan, results: list[dict[str, Any]], state: RoundState) -> Step:
    """Refine every group whose cells have all finished: add the midpoints of the intervals that differ.

    ``results`` are rows as :func:`pipeline.results.tables.collect` returns them (relative top-1 per cell); they
    are summarised exactly as the report summarises them. Updates ``state`` (depths, rounds, statuses).
    """
    from pipeline.results.tables import summarize

    spec = AdaptiveSpec(**state.spec)
    band = (plan.report or {}).get("band", "ci95")
    ids = {c.id for c in plan.cells}
    rows = [r for r in results if r.get("cell_id") in ids]
    measured = {r["cell_id"] for r in rows if r.get("relative_top1") is not None}
    points = {(group_key(s), s["depth"]): s for s in summarize(rows) if s["depth"] is not None}
    cells: dict[GroupKey, list[Cell]] = defaultdict(list)
    for cell in plan.cells:
        if cell.stage == "transfer" and cell.depth is not None:
            cells[group_key(cell)].append(cell)
    step = Step()
    for name, group in state.groups.items():
        key: GroupKey = tuple(group.key)  # type: ignore[assignment]
        if group.status != "training":
            continue
        missing = sum(c.id not in measured for c in cells.get(key, []))
        if missing or not cells.get(key):
            step.waiting[name] = missing
            continue
        pts = sorted(group.depths)
        moving = [(a, b) for a, b in zip(pts, pts[1:], strict=False)
                  if differ(points[(key, a)], points[(key, b)], spec.tolerance, band)]
        mids = sorted({(a + b) // 2 for a, b in moving if b - a > 1})
        if not moving:
            group.status = "converged"
        elif not mids:
            group.status = "gap 1"
        elif group.round >= spec.max_rounds:
            group.status = "max_rounds"
        else:
            group.round += 1
            group.added.append(mids)
            group.depths = sorted(set(pts) | set(mids))
            step.added[name] = mids
            continue
        step.stopped[name] = group.status
    if step.added:
        state.history.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "added": step.added})
    return step


def results_of(plan: SweepPlan) -> list[dict[str, Any]]:
    """The results rows of the plan's finished cells (the report's own collection)."""
    from pipeline.results.tables import collect

    if not (plan.output_dir / "cells").is_dir():
        return []
    ids = {c.id for c in plan.cells}
    return [r for r in collect(plan.output_dir) if r["cell_id"] in ids]


# ---- running the rounds -------------------------------------------------------------------------------------
def _console() -> Any:
    from launch.console import console

    return console


def run_rounds(sweep_path: str | Path, executor_name: str = "local", slots: int = 1, progress: bool = True,
               profile: str | None = None, profiles_file: str | None = None, dry_run: bool = False,
               executor: Executor | None = None, bundle: bool = True, bundle_below_min: float | None = None) -> int:
    """`mkf sweep run` of an adaptive sweep: train a round, advance, train the next, until every group stopped.

    On Slurm, submits the current round and a planner job after it (which carries on by itself) and returns.
    """
    from launch.executors import executor_class
    from launch.sweep_schema import load_sweep
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
    return _rounds(sweep, state, executor, retry=True, dry_run=dry_run)


def advance_sweep(sweep_dir: str | Path) -> int:
    """`mkf sweep advance OUTPUT` (the Slurm planner job): advance the finished groups, submit the next round and
    the planner job after it. Cells that failed are not resubmitted here (a failing cell would loop); a user's
    `mkf sweep run --executor slurm` retries them."""
    from launch.executors import executor_class
    from launch.sweep_schema import parse_sweep

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


def _rounds(sweep: SweepConfig, state: RoundState, executor: Executor, retry: bool, dry_run: bool = False) -> int:
    from launch.cell_state import cell_state, clear_failure
    from launch.sweep import materialize_configs, write_plan

    console = _console()
    slurm = executor.name == "slurm"
    out = Path(sweep.output_dir)
    advanced = False
    while True:
        plan = plan_round(sweep, state)
        if dry_run:
            from launch.sweep_view import print_plan

            print_plan(plan)
            if slurm:  # the local executor has no dry run: it would train
                executor.run(plan, [c for c in plan.cells if cell_state(plan, c) != "finished"])
                console.print(f"(dry run) then: {planner_command(out)} after the round's arrays", markup=False)
            return 0
        if not retry and slurm and not advanced and _cancelled(plan):
            state.planner_job = None
            save_state(out, state)
            console.print("adaptive depths: cells of this round were cancelled (mkf sweep cancel / scancel); the "
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
        console.print(f"sweep {plan.name}: adaptive round {state.round}: {len(plan.cells)} cells planned, "
                      f"{len(plan.cells) - len(unfinished)} finished, {len(todo)} to run")
        outcome = None
        if todo:
            for cell in todo:
                clear_failure(plan, cell)
            materialize_configs(plan, todo)
            outcome = executor.run(plan, todo)
        if slurm:
            code = _after_slurm_round(plan, state, executor, unfinished, outcome.failed if outcome else [])
            if code is not None:
                return code
            advanced = False  # every cell finished meanwhile: advance again here
            continue
        if outcome is not None and outcome.failed:
            from launch.console import err_console

            err_console.print(f"{len(outcome.failed)} cells did not finish; rerun the same command to retry them "
                              "(the rounds carry on from there)")
            return 1
        step = advance(plan, results_of(plan), state)
        _print_step(console, step)
        save_state(out, state)
        if not step.new_cells:
            return _stopped(plan, state)


def _stopped(plan: SweepPlan, state: RoundState) -> int:
    _console().print(f"adaptive depths: every curve stopped after round {state.round} ({len(plan.cells)} cells; "
                     f"`mkf report {plan.output_dir}`)")
    return 0


def _print_step(console: Any, step: Step) -> None:
    for line in step.lines():
        console.print(line, markup=False, highlight=False)


def _cancelled(plan: SweepPlan) -> bool:
    """Whether a user cancelled cells of the plan (not Slurm cancelling dependants of a failed base)."""
    from launch.slurm_executor import JobBook, query_jobs

    book = JobBook.load(plan.output_dir)
    jobs = query_jobs([book.cells[c.id]["job_id"] for c in plan.cells if c.id in book.cells])
    return any(j.state == "CANCELLED" and not j.reason.startswith("Dependency") for j in jobs.values())


def _never_submitted(plan: SweepPlan, cells: list[Cell]) -> list[Cell]:
    """Cells no Slurm job ever took (new this round, or deferred by a job cap): what a planner job submits."""
    from launch.slurm_executor import JobBook

    book = JobBook.load(plan.output_dir)
    return [c for c in cells if c.id not in book.cells]


def _after_slurm_round(plan: SweepPlan, state: RoundState, executor: Executor, unfinished: list[Cell],
                       failed: list[str]) -> int | None:
    """Submit the planner job after every array still running a cell of the plan. None: no job runs any and
    every cell has finished (advance again now); 1: cells failed and nothing runs them."""
    from launch.cell_state import cell_state
    from launch.slurm_executor import ACTIVE_STATES, JobBook, query_jobs

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
            console.print(f"adaptive depths: {len(left)} cells did not finish and no job runs them; rerun "
                          "`mkf sweep run SWEEP.yaml --executor slurm` to retry them (the rounds carry on)")
            return 1
        return None if unfinished else _stopped(plan, state)
    state.planner_job = submit_planner(plan, executor, arrays)
    save_state(out, state)
    console.print(f"submitted adaptive planner job {state.planner_job} (after arrays {', '.join(arrays)})")
    return 1 if failed else 0


def _job_active(job_id: str) -> bool:
    from launch.slurm_executor import run_slurm

    proc = run_slurm(["squeue", "-h", "-j", job_id, "-o", "%T"], check=False)
    return bool(proc.stdout.strip())


def cancel_planner(plan: SweepPlan) -> list[str]:
    """`mkf sweep cancel`: scancel the pending planner job too, or it would start the next round after the
    cancelled arrays end."""
    state = load_state(plan.output_dir)
    if state is None or not state.planner_job:
        return []
    from launch.slurm_executor import run_slurm

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
    from launch.slurm_executor import run_slurm
    from launch.slurm_profiles import pick_profile, profile_for_stage

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


# ---- what `sweep plan` and `sweep status` print -------------------------------------------------------------
def _hours(hours: float) -> str:
    return f"{hours:,.0f} GPU-hours" if hours >= 100 else f"{hours:.1f} GPU-hours"


@dataclass
class GridCosts:
    """Cells and GPU-hours of a sweep's start grid, its worst case (every round refines everything) and the full
    grid (``depths: all``)."""

    start: tuple[int, float]
    worst: tuple[int, float]
    full: tuple[int, float]
    rounds: int


def grid_costs(sweep: SweepConfig, costs_file: str | Path | None = None) -> GridCosts:
    from launch.cost import estimate

    spec = sweep.depths.adaptive if is_adaptive(sweep) else AdaptiveSpec()  # type: ignore[union-attr]
    full = full_plan(sweep)
    state = sync_state(sweep.model_copy(update={"depths": AdaptiveDepths(adaptive=spec)}), full, None, {})
    start = plan_round(sweep, state, full_plan(sweep))
    for group in state.groups.values():
        group.depths = worst_case_depths(group.depths, spec.max_rounds)
    worst = plan_round(sweep, state, full_plan(sweep))

    def cost(plan: SweepPlan) -> tuple[int, float]:
        return len(plan.cells), estimate(plan, costs_file).total_hours

    return GridCosts(cost(start), cost(worst), cost(full), spec.max_rounds)


def adaptive_cost_lines(plan: SweepPlan, sweep: SweepConfig) -> list[str]:
    """`mkf sweep plan`'s lines for an adaptive sweep: start grid, worst case, and the full grid for scale."""
    if not is_adaptive(sweep):
        return []
    c = grid_costs(sweep)
    return [f"adaptive depths: start grid {c.start[0]:,} cells, ~{_hours(c.start[1])}; worst case (all {c.rounds} "
            f"rounds refine every interval) {c.worst[0]:,} cells, ~{_hours(c.worst[1])}; "
            f"depths: all would be {c.full[0]:,} cells, ~{_hours(c.full[1])}"]


def adaptive_status_lines(plan: SweepPlan, limit: int = 20) -> list[str]:
    """`mkf sweep status`'s lines: the round, how many curves still refine, and each curve's depths."""
    state = load_state(plan.output_dir)
    if state is None:
        return []
    statuses = defaultdict(int)
    for g in state.groups.values():
        statuses[g.status] += 1
    spec = AdaptiveSpec(**state.spec)
    parts = [f"{n} {s}" for s, n in sorted(statuses.items())]
    lines = [f"adaptive depths: round {state.round} of at most {spec.max_rounds}; curves: {', '.join(parts)}"
             + (f"; planner job {state.planner_job} advances after this round" if state.planner_job else "")]
    for name, g in list(state.groups.items())[:limit]:
        lines.append(f"  {name}: round {g.round}, depths {','.join(map(str, g.depths))} ({g.status})")
    if len(state.groups) > limit:
        lines.append(f"  ... {len(state.groups) - limit} more curves in {state_path(plan.output_dir)}")
    return lines


# ---- the catalog's costs ------------------------------------------------------------------------------------
def catalog_costs(paths: list[Path] | None = None, console: Any = None) -> list[dict[str, Any]]:
    """For each catalog config: cells and GPU-hours of its depths as written, of ``depths: all``, of an adaptive
    start grid (``start: stages``) and of its worst case (default tolerance and max_rounds)."""
    from configs import config_path
    from launch.cost import estimate
    from launch.sweep import plan_sweep
    from launch.sweep_schema import load_sweep

    paths = paths or sorted(Path(str(config_path("paper"))).glob("*.yaml"))
    rows = []
    for path in paths:
        sweep = load_sweep(path)
        as_written = plan_sweep(sweep)
        c = grid_costs(sweep)
        rows.append({"config": path.stem, "written": (len(as_written.cells), estimate(as_written).total_hours),
                     "all": c.full, "start": c.start, "worst": c.worst})
    if console is not None:
        from rich.table import Table

        table = Table(title="catalog: depths as written vs depths: all vs adaptive (start: stages, "
                            "max_rounds 4); cells, A100-hours")
        for col in ("config", "as written", "depths: all", "adaptive start", "adaptive worst case", "start/all"):
            table.add_column(col, justify="left" if col == "config" else "right")
        total = defaultdict(float)
        for r in rows:
            cells = [f"{r[k][0]:,} / {r[k][1]:,.0f} h" for k in ("written", "all", "start", "worst")]
            table.add_row(r["config"], *cells, f"{r['start'][1] / r['all'][1]:.0%}" if r["all"][1] else "")
            for k in ("written", "all", "start", "worst"):
                total[k + "_n"] += r[k][0]
                total[k + "_h"] += r[k][1]
        table.add_row("total", *[f"{total[k + '_n']:,.0f} / {total[k + '_h']:,.0f} h"
                                 for k in ("written", "all", "start", "worst")],
                      f"{total['start_h'] / total['all_h']:.0%}" if total["all_h"] else "")
        console.print(table)
    return rows
