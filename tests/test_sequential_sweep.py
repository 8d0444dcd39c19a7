"""Sequential seeds in a sweep (`sequential_seeds:`): every base seed and the first seed of every transfer point are
planned; after each round, a comparison (AnB vs random-frozen, AnB vs BnB at one depth) is decided by the
group-sequential rule, and only the points of undecided comparisons get their next seed. Each decision is recorded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from datamodules.errors import UserError
from launch.planning.adaptive import advance, full_plan, load_state, plan_round, point_name, sync_state
from launch.planning.planner import plan_sweep
from launch.planning.schema import parse_sweep


def sweep_raw(tmp_path: Path, seeds: list[int], depths: list[int], **extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "seq", "output_dir": str(tmp_path / "out"), "seeds": seeds,
        "data": {"image_size": 32, "batch_size": 64, "max_train_samples": 512, "max_val_samples": 512},
        "datasets": {h: {"dataset": "fashion_mnist", "split": {"kind": "random_halves", "seed": 0}, "half": h}
                     for h in ("A", "B")},
        "transfers": [{"source": "A", "target": "B"}],
        "archs": [{"arch": "resnet_demo", "unit_kind": "block"}],
        "depths": depths, "variants": ["AnB", "BnB", "random-frozen"],
        "train": {"optim": {"name": "adamw", "lr": 0.004, "weight_decay": 0.05, "warmup_steps": 2},
                  "trainer": {"max_epochs": 2, "progress_bar": False}},
        "sequential_seeds": {"alpha": 0.05},
    }
    raw.update(extra)
    return raw


def test_the_first_round_plans_every_base_seed_and_the_first_seed_of_every_point(tmp_path: Path) -> None:
    sweep = parse_sweep(sweep_raw(tmp_path, [0, 1, 2], [1, 3]))
    plan = plan_sweep(sweep)
    bases = [c for c in plan.cells if c.stage == "base"]
    transfer = [c for c in plan.cells if c.stage == "transfer"]
    assert sorted(c.seed for c in bases) == [0, 0, 1, 1, 2, 2]  # the rule's sd comes from their spread
    assert {c.seed for c in transfer} == {0} and len(transfer) == 3 * 2
    # the cells are the full grid's own (same ids): nothing re-planned when seeds are added
    full = {c.id for c in full_plan(sweep).cells}
    assert {c.id for c in plan.cells} <= full and len(full) == 6 + 3 * 2 * 3


def test_one_seed_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="lists one seed"):
        parse_sweep(sweep_raw(tmp_path, [0], [1]))
    with pytest.raises(UserError, match="sequential_seeds.boundary"):
        parse_sweep(sweep_raw(tmp_path, [0, 1], [1], sequential_seeds={"boundary": "bonferroni"}))


def rows_for(plan: Any, value: dict[str, float], spread: float = 0.01) -> list[dict[str, Any]]:
    """Results rows as tables.collect gives them: base top-1 0.8 with a seed-to-seed spread of ``spread``
    (relative), each transfer variant's relative top-1 ``value[variant]`` (seed-independent)."""
    jitter = {0: -1.0, 1: 1.0, 2: 0.0}
    rows = []
    for c in plan.cells:
        row = {"cell_id": c.id, "stage": c.stage, "arch": c.arch, "source_arch": c.source_arch, "unit_kind": c.unit_kind,
               "variant": c.variant, "source": c.source, "target": c.target, "depth": c.depth, "seed": c.seed}
        if c.stage == "base":
            row["top1"] = 0.8 * (1 + spread * jitter[c.seed])
        else:
            row["relative_top1"] = value[c.variant] + 0.001 * jitter[c.seed]
        rows.append(row)
    return rows


def test_only_the_points_of_undecided_comparisons_get_another_seed(tmp_path: Path) -> None:
    """AnB is 30 points above random-frozen (decided at seed 1) and equal to BnB (undecided): AnB and BnB get
    seed 2, random-frozen does not; after three seeds nothing more is planned."""
    sweep = parse_sweep(sweep_raw(tmp_path, [0, 1, 2], [1]))
    full = full_plan(sweep)
    state = sync_state(sweep, full, None, {})
    plan = plan_round(sweep, state, full_plan(sweep))
    value = {"AnB": 1.0, "BnB": 1.0, "random-frozen": 0.7}
    step = advance(plan, rows_for(plan, value), state)
    names = {c.variant: point_name(c) for c in plan.cells if c.stage == "transfer"}
    assert step.seeds_added == {names["AnB"]: 1, names["BnB"]: 1}
    vs_rf = state.decisions[f"{names['AnB']} vs random-frozen"]
    vs_bnb = state.decisions[f"{names['AnB']} vs BnB"]
    assert vs_rf["decision"] == "higher" and vs_rf["seeds"] == 1 and not vs_rf["next_seed"]
    assert vs_bnb["decision"] == "undecided" and vs_bnb["next_seed"]
    assert "pocock" in vs_rf["rule"] and vs_rf["df"] == 2 * (3 - 1)  # two base groups x (3 seeds - 1)
    plan = plan_round(sweep, state, full_plan(sweep))
    by_variant = {v: sorted(c.seed for c in plan.cells if c.variant == v) for v in value}
    assert by_variant == {"AnB": [0, 1], "BnB": [0, 1], "random-frozen": [0]}
    # a round whose new cells have not finished decides nothing and adds nothing
    waiting = advance(plan, [r for r in rows_for(plan, value) if r["seed"] == 0], state)
    assert not waiting.new_cells and waiting.waiting
    for _ in range(3):
        plan = plan_round(sweep, state, full_plan(sweep))
        advance(plan, rows_for(plan, value), state)
    plan = plan_round(sweep, state, full_plan(sweep))
    assert sorted(c.seed for c in plan.cells if c.variant == "AnB") == [0, 1, 2]  # K = 3: never a 4th
    assert state.decisions[f"{names['AnB']} vs BnB"]["seeds"] == 3


def test_a_large_seed_spread_keeps_every_comparison_open(tmp_path: Path) -> None:
    """The same 30-point gap with a base spread of 40%: the sd is too large to decide at seed 1."""
    sweep = parse_sweep(sweep_raw(tmp_path, [0, 1, 2], [1]))
    state = sync_state(sweep, full_plan(sweep), None, {})
    plan = plan_round(sweep, state, full_plan(sweep))
    step = advance(plan, rows_for(plan, {"AnB": 1.0, "BnB": 1.0, "random-frozen": 0.7}, spread=0.4), state)
    assert len(step.seeds_added) == 3 and all(d["decision"] == "undecided" for d in state.decisions.values())


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_root")
def test_a_sequential_sweep_trains_round_by_round_and_records_each_decision(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Real cells (resnet_demo, one depth, two seeds): the run trains every base seed and seed 0 of each point,
    decides, trains seed 1 only where undecided, and the recorded z is the paired differences' own."""
    from launch.cli import main
    from pipeline.results.sequential import difference_sd, seed_variance
    from pipeline.results.tables import collect

    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump(sweep_raw(tmp_path, [0, 1], [1])))
    assert main(["sweep", "run", str(path), "--no-progress"]) == 0
    state = load_state(tmp_path / "out")
    assert state is not None and len(state.decisions) == 2
    rows = collect(tmp_path / "out")
    by = {(r["variant"], r["seed"]): r for r in rows if r["stage"] == "transfer"}
    assert {s for (v, s) in by if v == "AnB"} == set(range(state.seeds[point_name(next(
        r for r in rows if r["variant"] == "AnB"))]))
    sd = difference_sd(seed_variance([r for r in rows if r["stage"] == "base"])["variance"])
    for name, decision in state.decisions.items():
        control = name.rsplit(" vs ", 1)[1]
        k = decision["seeds"]
        diffs = [by[("AnB", s)]["relative_top1"] - by[(control, s)]["relative_top1"] for s in range(k)]
        assert decision["z"] == pytest.approx(sum(diffs) / k * k ** 0.5 / sd)
        assert decision["decision"] in ("higher", "lower", "undecided")
        seeds_trained = {s for (v, s) in by if v == control}
        if decision["decision"] == "undecided":
            assert seeds_trained == {0, 1}  # undecided after seed 0: seed 1 was trained
    out = capsys.readouterr().out
    assert "seed 1" in out or all(d["decision"] != "undecided" for d in state.decisions.values())
    assert "sequential seeds round" in out and "adaptive depths" not in out  # the rounds say what they are for
    main(["sweep", "status", str(tmp_path / "out")])
    assert "sequential seeds (pocock, alpha 0.05)" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "adaptive.json").read_text())["sequential"]["boundary"] == "pocock"
