"""Adaptive depth grids: train a few depths, then refine only where the curve moves (the planning side).

The spec and the start grid are :mod:`launch.planning.depths`; running the rounds (locally, or as a Slurm planner
job after each round) is :mod:`launch.execution.rounds`.

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
re-plans without the YAML), each group's depths, round and status, and the pending planner job.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datamodules.errors import UserError
from launch.planning.depths import (
    AdaptiveDepths,
    AdaptiveSpec,
    adaptive_depths,
    is_adaptive,
    start_depths,
    worst_case_depths,
)
from launch.planning.grid import plan_grid
from pipeline.models.unit_counts import unit_count

if TYPE_CHECKING:
    from launch.core.plan import Cell, SweepPlan
    from launch.planning.schema import SweepConfig

STATE_FILE = "adaptive.json"
STOPPED = ("converged", "gap 1", "max_rounds")  # a group's status once it refines no more
GroupKey = tuple[str, str, str, str, str, str]  # arch, source arch, unit kind, variant, source, target


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
    # sequential seeds (None: every seed planned): the rule's options, the sweep's seeds in order, how many of
    # them each transfer point has planned, and the last decision of each comparison
    sequential: dict[str, Any] | None = None
    seed_list: list[int] = field(default_factory=list)
    seeds: dict[str, int] = field(default_factory=dict)
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)

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
    """The ``depths: all`` plan of ``sweep`` (of an adaptive-depth sweep; else the sweep's own depths), every
    seed: every round's cells are taken from it, so ids match a full grid."""
    return plan_grid(sweep.model_copy(update={"depths": "all"}) if adaptive_depths(sweep) else sweep)


def point_name(cell: Cell | dict[str, Any]) -> str:
    """A transfer point: one curve's cell at one depth, over seeds (what sequential seeds add seeds to)."""
    depth = cell.get("depth") if isinstance(cell, dict) else cell.depth
    return f"{key_name(group_key(cell))} d={depth}"


CONTROLS = ("random-frozen", "BnB")  # what AnB is compared with at its depth (pipeline.results.calibration)


def _comparisons(cells: list[Cell]) -> dict[str, tuple[str, str]]:
    """Comparison name -> (AnB point, control point): AnB of every source against the controls of the same arch,
    unit kind, target and depth."""
    by_slot: dict[tuple[Any, ...], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for c in cells:
        if c.stage == "transfer":
            by_slot[(c.arch, c.unit_kind, c.target, c.depth)][c.variant].add(point_name(c))
    out = {}
    for slot in by_slot.values():
        for anb in sorted(slot.get("AnB", ())):
            for control in CONTROLS:
                for other in sorted(slot.get(control, ())):
                    out[f"{anb} vs {control}"] = (anb, other)
    return out


def sync_state(sweep: SweepConfig, full: SweepPlan, state: RoundState | None, source: dict[str, Any]) -> RoundState:
    """The round state for ``sweep`` as given now: groups it no longer plans are dropped, new ones start at their
    start grid, the spec is the current one, and every group is re-examined at the next advance (cheap: it only
    reads results), so raising ``max_rounds`` or lowering ``tolerance`` resumes refinement."""
    spec = sweep.depths.adaptive if adaptive_depths(sweep) else None  # type: ignore[union-attr]
    old = state.groups if state else {}
    groups: dict[str, Group] = {}
    for cell in full.cells:
        if spec is None or cell.stage != "transfer" or cell.depth is None:
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
    spec_dump = spec.model_dump() if spec is not None else {}
    if state is None:
        state = RoundState(sweep.name, spec_dump, source, groups)
    state.name, state.spec, state.source, state.groups = sweep.name, spec_dump, source, groups
    _sync_seeds(sweep, full, state)
    return state


def _sync_seeds(sweep: SweepConfig, full: SweepPlan, state: RoundState) -> None:
    """Sequential seeds: a new point starts at its first seed; a point in no comparison (nothing to decide)
    trains every seed; every comparison is re-examined at the next advance."""
    if sweep.sequential_seeds is None:
        state.sequential, state.seed_list, state.seeds = None, [], {}
        return
    state.sequential, state.seed_list = sweep.sequential_seeds.model_dump(), list(sweep.seeds)
    compared = {p for pair in _comparisons(full.cells).values() for p in pair}
    seeds = {}
    for cell in full.cells:
        if cell.stage == "transfer":
            name = point_name(cell)
            seeds[name] = min(state.seeds.get(name, 1), len(sweep.seeds)) if name in compared else len(sweep.seeds)
    state.seeds = seeds


def plan_round(sweep: SweepConfig, state: RoundState, full: SweepPlan | None = None) -> SweepPlan:
    """Every cell planned so far: bases and depthless cells, and each group's depths (the full grid's cells)."""
    plan = full or full_plan(sweep)
    keep = state.depths()
    if state.spec:  # adaptive depths: each group's depths so far
        plan.cells = [c for c in plan.cells if c.stage == "base" or c.depth is None
                      or c.depth in keep.get(group_key(c), ())]
    if state.sequential is not None:  # sequential seeds: each point's seeds so far (base cells: every seed)
        order = {seed: i for i, seed in enumerate(state.seed_list)}
        plan.cells = [c for c in plan.cells if c.stage == "base"
                      or order.get(c.seed, 0) < state.seeds.get(point_name(c), len(state.seed_list))]
    return plan


def with_rounds(sweep: SweepConfig, plan: SweepPlan) -> SweepPlan:
    """``plan_sweep``'s hook: an adaptive sweep whose output folder holds round state plans every round so far
    (so `mkf sweep plan|status SWEEP.yaml` see the refined cells); anything else is returned as it is."""
    if not is_adaptive(sweep):
        return plan
    state = load_state(sweep.output_dir)
    if state is None and sweep.sequential_seeds is None:
        return plan  # adaptive depths: the start grid is the grid's plan
    full = full_plan(sweep)
    if state is None:  # sequential seeds before the first round: every point at its first seed
        return plan_round(sweep, sync_state(sweep, full, None, {}), full)
    return plan_round(sweep, sync_state(sweep, full, state, state.source), full)


# ---- advancing ----------------------------------------------------------------------------------------------
@dataclass
class Step:
    """What one advance did: depths added per group, groups still waiting for cells, groups that stopped."""

    added: dict[str, list[int]] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)  # group -> cells not finished (or without reference)
    stopped: dict[str, str] = field(default_factory=dict)  # group -> why, for groups that stopped now
    seeds_added: dict[str, int] = field(default_factory=dict)  # point -> the seed planned now
    decided: dict[str, str] = field(default_factory=dict)  # comparison -> its decision, when made now

    @property
    def new_cells(self) -> bool:
        return bool(self.added or self.seeds_added)

    def lines(self) -> list[str]:
        out = [f"  + {name}: depths {', '.join(map(str, d))}" for name, d in self.added.items()]
        out += [f"  + {name}: seed {seed}" for name, seed in self.seeds_added.items()]
        out += [f"  = {name}: {why}" for name, why in self.decided.items()]
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
    step = Step()
    if state.spec:
        _advance_depths(plan, results, state, step)
    if state.sequential is not None:
        _advance_seeds(plan, results, state, step)
    return step


def _advance_depths(plan: SweepPlan, results: list[dict[str, Any]], state: RoundState, step: Step) -> None:
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


def _advance_seeds(plan: SweepPlan, results: list[dict[str, Any]], state: RoundState, step: Step) -> None:
    """Decide every comparison whose two points have finished their planned seeds: the group-sequential rule on
    the per-seed paired differences of relative top-1, its sd from the base cells' between-seed spread
    (pipeline.results.sequential). Both points of an undecided comparison get their next seed."""
    from pipeline.results.sequential import decide, difference_sd, seed_variance

    spec, seeds = state.sequential or {}, state.seed_list
    looks = len(seeds)
    ids = {c.id for c in plan.cells}
    rows = [r for r in results if r.get("cell_id") in ids]
    spread = seed_variance([r for r in rows if r.get("stage") == "base"])
    sd = difference_sd(spread["variance"]) if spread["variance"] else None
    value = {(point_name(r), r.get("seed")): r["relative_top1"] for r in rows
             if r.get("stage") == "transfer" and r.get("relative_top1") is not None}
    planned: dict[str, list[int]] = defaultdict(list)
    for c in plan.cells:
        if c.stage == "transfer":
            planned[point_name(c)].append(c.seed)
    pending = {p: sum((p, s) not in value for s in ss) for p, ss in planned.items()}
    wants: set[str] = set()
    for name, (anb, control) in _comparisons(plan.cells).items():
        if pending.get(anb) or pending.get(control) or anb not in planned or control not in planned:
            waiting = pending.get(anb, 0) + pending.get(control, 0)
            if waiting:
                step.waiting[name] = waiting
            continue
        diffs = []
        for seed in seeds[:min(state.seeds.get(anb, 1), state.seeds.get(control, 1))]:
            diffs.append(value[(anb, seed)] - value[(control, seed)])
        if sd is None:  # no base spread yet (bases of one seed): nothing can be decided
            decision = {"decision": "undecided", "seeds": len(diffs), "next_seed": len(diffs) < looks,
                        "rule": "no sd: the base cells show no between-seed spread yet"}
        else:
            decision = decide(diffs, sd, looks, spec.get("alpha", 0.05), spec.get("boundary", "pocock"),
                              df=spread["df"] or None)
        before = state.decisions.get(name, {}).get("decision")
        state.decisions[name] = {k: decision.get(k) for k in ("decision", "seeds", "z", "boundary", "next_seed",
                                                              "rule", "sd", "df")}
        if decision["decision"] != "undecided" and before != decision["decision"]:
            step.decided[name] = f"{decision['decision']} after {decision['seeds']} seeds"
        if decision["next_seed"]:
            wants.update((anb, control))
    for point in sorted(wants):
        have = state.seeds.get(point, 1)
        if have < looks:
            state.seeds[point] = have + 1
            step.seeds_added[point] = seeds[have]
    if step.seeds_added:
        state.history.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "seeds": step.seeds_added})


def results_of(plan: SweepPlan) -> list[dict[str, Any]]:
    """The results rows of the plan's finished cells (the report's own collection)."""
    from pipeline.results.tables import collect

    if not (plan.output_dir / "cells").is_dir():
        return []
    ids = {c.id for c in plan.cells}
    return [r for r in collect(plan.output_dir) if r["cell_id"] in ids]


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
    from launch.planning.cost import estimate

    spec = sweep.depths.adaptive if adaptive_depths(sweep) else AdaptiveSpec()  # type: ignore[union-attr]
    full = full_plan(sweep)
    # the depth rounds alone (sequential seeds have their own lines: launch.planning.cost.sequential_lines)
    state = sync_state(sweep.model_copy(update={"depths": AdaptiveDepths(adaptive=spec), "sequential_seeds": None}),
                       full, None, {})
    start = plan_round(sweep, state, full_plan(sweep))
    for group in state.groups.values():
        group.depths = worst_case_depths(group.depths, spec.max_rounds)
    worst = plan_round(sweep, state, full_plan(sweep))

    def cost(plan: SweepPlan) -> tuple[int, float]:
        return len(plan.cells), estimate(plan, costs_file).total_hours

    return GridCosts(cost(start), cost(worst), cost(full), spec.max_rounds)


def adaptive_cost_lines(plan: SweepPlan, sweep: SweepConfig) -> list[str]:
    """`mkf sweep plan`'s lines for an adaptive sweep: start grid, worst case, and the full grid for scale."""
    if not adaptive_depths(sweep):
        return []
    c = grid_costs(sweep)
    return [f"adaptive depths: start grid {c.start[0]:,} cells, ~{_hours(c.start[1])}; worst case (all {c.rounds} "
            f"rounds refine every interval) {c.worst[0]:,} cells, ~{_hours(c.worst[1])}; "
            f"depths: all would be {c.full[0]:,} cells, ~{_hours(c.full[1])}"]


def adaptive_status_lines(plan: SweepPlan, limit: int = 20,
                          planner_alive: Callable[[str], bool | None] | None = None) -> list[str]:
    """`mkf sweep status`'s lines: the round, how many curves still refine, each curve's depths, and whether the
    Slurm planner job is there to advance them (``planner_alive``: the queue's answer for a job id; None when it
    cannot be asked). A planner job that died (failed, cancelled, preempted, timed out) stops every later round:
    status says so, and the next `mkf sweep run` submits a new one."""
    state = load_state(plan.output_dir)
    if state is None:
        return []
    statuses = defaultdict(int)
    for g in state.groups.values():
        statuses[g.status] += 1
    lines = _seed_status_lines(state)
    if not state.spec:  # sequential seeds only
        return lines
    spec = AdaptiveSpec(**state.spec)
    parts = [f"{n} {s}" for s, n in sorted(statuses.items())]
    refining = any(g.status not in STOPPED for g in state.groups.values())
    alive = planner_alive(state.planner_job) if state.planner_job and planner_alive else None
    if state.planner_job and alive is False and refining:
        planner = (f"; the planner job {state.planner_job} is DEAD (gone from the queue, the round not advanced): "
                   "rerun `mkf sweep run SWEEP.yaml --executor slurm` to submit a new one")
    elif state.planner_job:
        planner = f"; planner job {state.planner_job} advances after this round" + (
            "" if alive else " (not checked: no Slurm here)")
    else:
        planner = ""
    lines = [f"adaptive depths: round {state.round} of at most {spec.max_rounds}; curves: {', '.join(parts)}"
             + planner, *lines]
    for name, g in list(state.groups.items())[:limit]:
        lines.append(f"  {name}: round {g.round}, depths {','.join(map(str, g.depths))} ({g.status})")
    if len(state.groups) > limit:
        lines.append(f"  ... {len(state.groups) - limit} more curves in {state_path(plan.output_dir)}")
    return lines


def _seed_status_lines(state: RoundState) -> list[str]:
    """`mkf sweep status`'s line for sequential seeds: the comparisons decided so far and the seeds planned."""
    if state.sequential is None:
        return []
    outcomes: dict[str, int] = defaultdict(int)
    for d in state.decisions.values():
        outcomes[str(d.get("decision"))] += 1
    looks = len(state.seed_list)
    planned = sum(state.seeds.values())
    told = ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())) or "none examined yet"
    return [f"sequential seeds ({state.sequential.get('boundary')}, alpha {state.sequential.get('alpha')}): "
            f"comparisons {told}; {planned:,} of {len(state.seeds) * looks:,} transfer cells planned "
            f"(decisions in {STATE_FILE})"]
