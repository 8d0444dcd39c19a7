"""Adaptive depth grids: start grids from stage sizes, refinement rounds on results tables, the same cell ids as a
full grid, round state on disk, and (slow) a real adaptive run whose numbers equal a full grid's."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from datamodules.errors import UserError
from launch.core.plan import SweepPlan
from launch.execution.rounds import run_rounds
from launch.planning.adaptive import (
    adaptive_cost_lines,
    adaptive_status_lines,
    advance,
    full_plan,
    load_state,
    plan_round,
    save_state,
    sync_state,
)
from launch.planning.cost import estimate
from launch.planning.depths import AdaptiveDepths, AdaptiveSpec, depth_grid, worst_case_depths
from launch.planning.planner import plan_sweep
from launch.planning.schema import load_sweep, parse_sweep
from pipeline.models.unit_counts import load_table

SWEEP: dict[str, Any] = {
    "name": "adaptive", "seeds": [0, 1, 2],
    "data": {"dataset": "fashion_mnist", "split": {"kind": "random_halves", "seed": 0}},
    "archs": [{"arch": "convnext_tiny", "unit_kind": "depthwise"}],
    "depths": {"adaptive": {"start": "stages", "tolerance": 0.01, "max_rounds": 4}},
    "variants": ["AnB", "BnB", "dog"],
}


def sweep_of(tmp_path: Path, **changes: Any):  # type: ignore[no-untyped-def]
    return parse_sweep({**SWEEP, "output_dir": str(tmp_path / "out"), **changes})


def rows_for(plan: SweepPlan, curve: Callable[[str, int, int], float]) -> list[dict[str, Any]]:
    """A synthetic results table: one finished row per transfer cell, relative top-1 = curve(variant, depth, seed)."""
    return [{"cell_id": c.id, "stage": c.stage, "arch": c.arch, "source_arch": c.source_arch, "unit_kind": c.unit_kind,
             "source": c.source, "target": c.target, "source_role": "source" if c.variant == "AnB" else "target",
             "variant": c.variant, "depth": c.depth, "seed": c.seed,
             "relative_top1": curve(c.variant, c.depth or 0, c.seed)} for c in plan.cells if c.stage == "transfer"]


def rounds(sweep, curve: Callable[[str, int, int], float]) -> tuple[list[dict[str, list[int]]], Any]:  # type: ignore[no-untyped-def]
    """Advance on synthetic results until nothing is added; the depths added per round."""
    state = sync_state(sweep, full_plan(sweep), None, {})
    added = []
    for _ in range(20):
        plan = plan_round(sweep, state)
        step = advance(plan, rows_for(plan, curve), state)
        if not step.new_cells:
            return added, state
        added.append(step.added)
    raise AssertionError("the rounds never stopped")


def test_start_grid_is_each_stages_first_and_last_unit() -> None:
    spec = AdaptiveDepths(adaptive=AdaptiveSpec())
    assert depth_grid(spec, "convnext_tiny", "depthwise", 18) == [1, 3, 4, 6, 7, 15, 16, 18]  # stages 3/3/9/3
    assert depth_grid(spec, "convnext_base", "depthwise", 36) == [1, 3, 4, 6, 7, 33, 34, 36]  # 3/3/27/3
    assert depth_grid(spec, "resnet50", "block", 17) == [1, 2, 4, 5, 8, 9, 14, 15, 17]  # stem, 3/4/6/3
    assert depth_grid(AdaptiveDepths(adaptive=AdaptiveSpec(start=[9, 1, 18])), "convnext_tiny", "depthwise",
                      18) == [1, 9, 18]
    for arch, entry in load_table().items():  # the stage sizes in the table add up to the unit counts
        for kind, sizes in entry.get("stages", {}).items():
            assert sum(sizes) == entry[kind] and all(s > 0 for s in sizes), (arch, kind)


def test_worst_case_halves_every_interval_each_round() -> None:
    assert worst_case_depths([1, 18], 1) == [1, 9, 18]
    assert worst_case_depths([1, 18], 2) == [1, 5, 9, 13, 18]
    assert worst_case_depths([1, 3, 4, 6, 7, 15, 16, 18], 4) == list(range(1, 19))
    assert worst_case_depths([1, 2], 4) == [1, 2]


def test_rounds_plan_the_full_grids_cells(tmp_path: Path) -> None:
    """Round 0 is plan_sweep's plan of the adaptive sweep; every round's cells are the full grid's (same ids)."""
    sweep = sweep_of(tmp_path)
    full = plan_sweep(sweep.model_copy(update={"depths": "all"}))
    by_key = {(c.variant, c.depth, c.seed, c.stage, c.target): c.id for c in full.cells}
    state = sync_state(sweep, full_plan(sweep), None, {})
    start = plan_round(sweep, state)
    assert [c.id for c in start.cells] == [c.id for c in plan_sweep(sweep).cells]
    assert {c.depth for c in start.cells if c.variant == "AnB"} == {1, 3, 4, 6, 7, 15, 16, 18}
    assert sum(c.variant == "dog" for c in start.cells) == 3  # depthless: one per seed, in the start round
    state.groups[next(k for k in state.groups if " AnB " in k)].depths += [10, 12]
    refined = plan_round(sweep, state)
    assert len(refined.cells) == len(start.cells) + 2 * 3
    for c in refined.cells:
        assert by_key[(c.variant, c.depth, c.seed, c.stage, c.target)] == c.id
        assert refined.configs[c.id] == full.configs[c.id]


def test_a_flat_results_table_refines_nothing(tmp_path: Path) -> None:
    sweep = sweep_of(tmp_path)
    added, state = rounds(sweep, lambda variant, depth, seed: 0.9 + 0.002 * (seed - 1))
    assert added == []
    assert {g.status for g in state.groups.values()} == {"converged"}
    assert all(g.round == 0 and g.depths == [1, 3, 4, 6, 7, 15, 16, 18] for g in state.groups.values())


def drop(variant: str, depth: int, seed: int) -> float:
    """AnB falls from 0.95 to 0.80 past depth 10; BnB is flat."""
    return (0.80 if variant == "AnB" and depth > 10 else 0.95) + 0.001 * (seed - 1)


def test_a_drop_adds_exactly_the_midpoints_there_until_gap_1(tmp_path: Path) -> None:
    sweep = sweep_of(tmp_path)
    added, state = rounds(sweep, drop)
    anb = next(k for k in state.groups if " AnB " in k)
    assert added == [{anb: [11]}, {anb: [9]}, {anb: [10]}]  # (7,15) -> 11, (7,11) -> 9, (9,11) -> 10
    assert state.groups[anb].status == "gap 1" and state.groups[anb].round == 3
    assert state.groups[anb].depths == [1, 3, 4, 6, 7, 9, 10, 11, 15, 16, 18]
    bnb = next(k for k in state.groups if " BnB " in k)
    assert state.groups[bnb].status == "converged" and state.groups[bnb].depths == [1, 3, 4, 6, 7, 15, 16, 18]


def test_max_rounds_stops_the_refinement(tmp_path: Path) -> None:
    sweep = sweep_of(tmp_path, depths={"adaptive": {"start": [1, 18], "max_rounds": 2}})
    added, state = rounds(sweep, drop)
    anb = next(k for k in state.groups if " AnB " in k)
    assert added == [{anb: [9]}, {anb: [13]}]  # (1,18) -> 9; then (9,18) -> 13; round 3 would add 11
    assert state.groups[anb].status == "max_rounds" and state.groups[anb].depths == [1, 9, 13, 18]


def test_bands_that_do_not_overlap_refine_below_the_tolerance(tmp_path: Path) -> None:
    """0.92 vs 0.90 is within tolerance 0.05, but with seeds this close the 95% CIs are apart: refine. With noisy
    seeds the bands overlap: no refinement."""
    steps = {"AnB": lambda d: 0.92 if d <= 9 else 0.90}
    quiet = lambda v, d, s: (steps[v](d) if v in steps else 0.9) + 0.001 * (s - 1)  # noqa: E731
    noisy = lambda v, d, s: (steps[v](d) if v in steps else 0.9) + 0.03 * (s - 1)  # noqa: E731
    sweep = sweep_of(tmp_path, depths={"adaptive": {"start": [1, 18], "tolerance": 0.05, "max_rounds": 1}})
    added, _ = rounds(sweep, quiet)
    assert [list(a.values()) for a in added] == [[[9]]]
    assert rounds(sweep, noisy)[0] == []
    one_seed = sweep_of(tmp_path, seeds=[0], depths={"adaptive": {"start": [1, 18], "tolerance": 0.05}})
    assert rounds(one_seed, quiet)[0] == []  # one seed has no band: only the tolerance counts


def test_a_group_waits_for_its_cells(tmp_path: Path) -> None:
    sweep = sweep_of(tmp_path, depths={"adaptive": {"start": [1, 18]}})
    state = sync_state(sweep, full_plan(sweep), None, {})
    plan = plan_round(sweep, state)
    rows = [r for r in rows_for(plan, drop) if not (r["variant"] == "AnB" and r["seed"] == 2 and r["depth"] == 18)]
    step = advance(plan, rows, state)
    anb = next(k for k in state.groups if " AnB " in k)
    assert step.waiting == {anb: 1} and not step.added
    assert state.groups[anb].status == "training" and state.groups[anb].depths == [1, 18]


def test_round_state_on_disk_and_in_status(tmp_path: Path) -> None:
    sweep = sweep_of(tmp_path)
    state = sync_state(sweep, full_plan(sweep), None, {"raw": {}})
    plan = plan_round(sweep, state)
    advance(plan, rows_for(plan, drop), state)
    path = save_state(sweep.output_dir, state)
    assert json.loads(path.read_text())["groups"]
    again = load_state(sweep.output_dir)
    assert again is not None and again.groups == state.groups and again.round == 1
    lines = adaptive_status_lines(plan)
    assert lines[0].startswith("adaptive depths: round 1 of at most 4; curves: 1 converged, 1 training")
    assert any("AnB" in line and "depths 1,3,4,6,7,11,15,16,18 (training)" in line for line in lines)
    path.write_text("{not json")
    with pytest.raises(UserError, match="not a valid adaptive round state"):
        load_state(sweep.output_dir)


def test_plan_prints_start_worst_and_full_costs(tmp_path: Path) -> None:
    sweep = sweep_of(tmp_path)
    start = plan_sweep(sweep)
    (line,) = adaptive_cost_lines(start, sweep)
    full = plan_sweep(sweep.model_copy(update={"depths": "all"}))
    assert f"start grid {len(start.cells):,} cells, ~{estimate(start).total_hours:.1f} GPU-hours" in line
    assert f"depths: all would be {len(full.cells):,} cells" in line
    worst = int(line.split("refine every interval) ")[1].split(" cells")[0].replace(",", ""))
    assert len(start.cells) < worst == len(full.cells)  # 4 rounds fill 1,3,4,6,7,15,16,18 completely
    assert adaptive_cost_lines(full, sweep.model_copy(update={"depths": "all"})) == []


@pytest.mark.parametrize("depths, message", [
    ({"adaptive": {"tolerance": -1}}, "^depths"),
    ({"adaptive": {"start": "stage"}}, "^depths"),
    ({"adaptive": {"start": [1, 40]}}, "depth 40 is outside convnext_tiny's depthwise units 1..18"),
    ({"adaptive": {"rounds": 2}}, "^unknown key depths.adaptive.rounds; valid keys here: start, tolerance, max_rounds"),
])
def test_bad_adaptive_specs_are_one_line(tmp_path: Path, depths: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message):
        sweep = sweep_of(tmp_path, depths=depths)
        sync_state(sweep, full_plan(sweep), None, {})


# ---- a real run ---------------------------------------------------------------------------------------------
TINY = {
    "name": "tiny", "seeds": [0],
    "data": {"image_size": 32, "batch_size": 64, "max_train_samples": 2048, "max_val_samples": 2000},
    "datasets": {"A": {"dataset": "fashion_mnist", "split": {"kind": "random_halves", "seed": 0}, "half": "A"},
                 "B": {"dataset": "fashion_mnist", "split": {"kind": "random_halves", "seed": 0}, "half": "B"}},
    "transfers": [{"source": "A", "target": "B"}],
    "archs": [{"arch": "convnext_demo", "unit_kind": "depthwise"}],
    "variants": ["AnB"],
    "train": {"optim": {"name": "adamw", "lr": 0.004, "weight_decay": 0.05, "warmup_steps": 10},
              "trainer": {"max_epochs": 2, "progress_bar": False, "log_every_n_steps": 4, "accelerator": "cpu"}},
}


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_root")
def test_adaptive_run_trains_a_subset_of_the_full_grid_with_equal_numbers(tmp_path: Path) -> None:
    """A real adaptive run (start [1, 5], one round: adds 3) trains a subset of the full grid's cells, and its
    report's values equal the full grid's at every depth it measured."""
    from pipeline.results.report import write_report

    full_yaml, adaptive_yaml = tmp_path / "full.yaml", tmp_path / "adaptive.yaml"
    full_yaml.write_text(yaml.safe_dump({**TINY, "output_dir": str(tmp_path / "full"), "depths": "all"}))
    adaptive_yaml.write_text(yaml.safe_dump({**TINY, "output_dir": str(tmp_path / "adaptive"),
                                             "depths": {"adaptive": {"start": [1, 5], "tolerance": 0.0,
                                                                     "max_rounds": 1}}}))
    assert run_rounds(adaptive_yaml, slots=2, progress=False) == 0
    state = load_state(tmp_path / "adaptive")
    assert state is not None
    (group,) = state.groups.values()
    assert group.depths == [1, 3, 5] and group.status == "max_rounds", group  # |AnB(1) - AnB(5)| > 0 refines
    from launch.core.plan import load_manifest

    adaptive = load_manifest(tmp_path / "adaptive")
    full = plan_sweep(load_sweep(full_yaml))
    assert {c.id for c in adaptive.cells} < {c.id for c in full.cells}
    assert len(adaptive.cells) == 2 + 3

    from launch.core.plan import materialize_configs, write_plan
    from launch.execution.local import LocalExecutor

    write_plan(full)
    materialize_configs(full, full.cells)
    assert not LocalExecutor(slots=2, progress=False).run(full, full.cells).failed
    a_rows, _ = write_report(tmp_path / "adaptive")
    f_rows, _ = write_report(tmp_path / "full")
    keep = ("cell_id", "depth", "top1", "relative_top1")
    full_by_id = {r["cell_id"]: {k: r[k] for k in keep} for r in f_rows}
    assert [{k: r[k] for k in keep} for r in a_rows] == [full_by_id[r["cell_id"]] for r in a_rows]
    a_summary = (tmp_path / "adaptive" / "summary.csv").read_text().splitlines()
    f_summary = (tmp_path / "full" / "summary.csv").read_text().splitlines()
    assert a_summary[0] == f_summary[0] and set(a_summary[1:]) <= set(f_summary[1:])  # every measured depth equal
    assert (tmp_path / "adaptive" / "figure.png").is_file()
    shutil.rmtree(tmp_path / "full" / "cells")  # gigabytes of checkpoints stay out of the tmp folder
