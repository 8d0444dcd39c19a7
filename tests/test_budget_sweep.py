"""The sweep side of budgets (issue: what a sweep costs): `budget:` / `progressive:` reach every cell alike, `plan`
prints the cost at each budget and under sequential seeds, `mkf costs fit` refits the table plan reads, and
`mkf sweep calibrate` trains a subset short and full and gates the budget sweep on the verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from datamodules.errors import UserError
from launch.cli import main
from launch.planning.cost import budget_lines, estimate, sequential_lines
from launch.planning.planner import plan_sweep
from launch.planning.schema import load_sweep, parse_sweep
from pipeline.results.run_folder import read_result


def sweep_raw(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    """Two tiny archs on Fashion-MNIST halves, AnB / BnB / random-frozen at depths 1 and 3, two seeds."""
    raw: dict[str, Any] = {
        "name": "cal", "output_dir": str(tmp_path / "out"), "seeds": [0, 1],
        "data": {"image_size": 32, "batch_size": 64, "max_train_samples": 512, "max_val_samples": 256},
        "datasets": {h: {"dataset": "fashion_mnist", "split": {"kind": "random_halves", "seed": 0}, "half": h}
                     for h in ("A", "B")},
        "transfers": [{"source": "A", "target": "B"}],
        "archs": [{"arch": "convnext_demo", "unit_kind": "depthwise"}, {"arch": "resnet_demo", "unit_kind": "block"}],
        "depths": [1, 3], "variants": ["AnB", "BnB", "random-frozen"],
        "train": {"optim": {"name": "adamw", "lr": 0.004, "weight_decay": 0.05, "warmup_steps": 2},
                  "trainer": {"max_epochs": 2, "progress_bar": False}},
    }
    raw.update(extra)
    return raw


def write(tmp_path: Path, raw: dict[str, Any], name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def configs(plan: Any) -> list[dict[str, Any]]:
    return [plan.configs[c.id] for c in plan.cells]


def test_budget_and_progressive_reach_every_cell_bases_and_transfers_alike(tmp_path: Path) -> None:
    full = plan_sweep(parse_sweep(sweep_raw(tmp_path)))
    short = plan_sweep(parse_sweep(sweep_raw(tmp_path, budget={"epochs": 1},
                                             progressive={"start": 32, "start_epoch": 0, "end_epoch": 1})))
    assert len(short.cells) == len(full.cells) == 2 * 2 * (2 + 3 * 2)  # seeds x archs x (bases + variants x depths)
    assert {c.stage for c in short.cells} == {"base", "transfer"}
    for config in configs(short):
        assert config["trainer"]["budget"] == {"epochs": 1} and config["trainer"]["max_epochs"] == 2
        assert config["data"]["progressive"]["start"] == 32
    for config in configs(full):  # no budget: not in the config, so the full cells keep their ids
        assert "budget" not in config["trainer"] or config["trainer"]["budget"] is None
    assert not {c.id for c in short.cells} & {c.id for c in full.cells}  # different runs, different ids
    # the full plan's ids are those of the same sweep without the new keys at all (nothing re-planned)
    assert [c.id for c in full.cells] == [c.id for c in plan_sweep(parse_sweep(sweep_raw(tmp_path))).cells]


@pytest.mark.parametrize("extra, message", [
    ({"budget": {"epochs": 1, "steps": 4}}, "exactly one of epochs or steps"),
    ({"budget": {"epochs": 0}}, "budget.epochs = 0"),
    ({"budget": {"minutes": 5}}, "unknown key budget.minutes"),
    ({"budget": {"epochs": 1}, "train": {"trainer": {"budget": {"epochs": 1}}}}, "both budget and train.trainer"),
    ({"progressive": {"begin": 16}}, "unknown key progressive.begin"),
    ({"calibration": {"archs": ["convnext_demo"]}}, "sets no `budget:`"),
    ({"budget": {"epochs": 1}, "calibration": {"archs": ["resnet18"]}}, "not one of the sweep's archs"),
])
def test_bad_budget_keys_are_one_line(tmp_path: Path, extra: dict[str, Any], message: str) -> None:
    raw = sweep_raw(tmp_path)
    raw.update(extra)
    with pytest.raises(UserError, match=message):
        parse_sweep(raw)


def test_plan_prints_the_cost_at_each_budget_and_under_sequential_seeds(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The paper catalog: its 90-epoch cells at FFCV's 16 and 40 epochs, and the sequential rule's range."""
    from configs import config_path
    from launch.planning.catalog import plan_catalog

    plan = plan_catalog(config_path("paper"))
    full = estimate(plan).total_hours
    sixteen = estimate(plan, budget_epochs=16).total_hours
    forty = estimate(plan, budget_epochs=40).total_hours
    # shorter is cheaper, roughly in proportion (validation per epoch and loader ceilings scale alike)
    assert 0.12 < sixteen / full < 0.25 and 0.35 < forty / full < 0.55 and sixteen < forty < full
    line = budget_lines(plan)[0]
    assert "16 epochs" in line and "40 epochs" in line and f"{sixteen:,.0f}" in line.replace("~", "")
    seq = sequential_lines(plan)
    base = [c for c in plan.cells if c.stage == "base"]
    first = [c for c in plan.cells if c.stage != "base" and c.seed == min(c.seed for c in plan.cells)]
    best = estimate(plan, cells=base + first).total_hours
    assert f"best ~{best:,.0f}" in seq[0] and f"worst ~{full:,.0f}" in seq[0]
    assert f"({len(base) + len(first):,} cells" in seq[0]
    # a one-seed sweep has no sequential seeds to save
    one = plan_sweep(parse_sweep(sweep_raw(tmp_path, seeds=[0])))
    assert sequential_lines(one) == []
    # many seeds: the range still, the expected cost (a 12-dimensional integral per look) not computed
    many = sequential_lines(plan_sweep(parse_sweep(sweep_raw(tmp_path, seeds=list(range(12))))))
    assert "K = 12" in many[0] and "not computed" in many[1]
    main(["sweep", "plan", str(write(tmp_path, sweep_raw(tmp_path, budget={"epochs": 1})))])
    out = capsys.readouterr().out
    assert "(16 x 1 of 2 ep)" in out.replace("\n", " ") or "x 1 of 2 ep" in out  # steps under the budget
    assert "budget (epochs 1) not calibrated" in out


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A budget sweep (1 of 2 epochs) with a calibration subset (convnext_demo, 2 seeds), set up, trained and
    calibrated through the CLI as a user would (trains 16 short + 16 full cells, about a minute)."""
    tmp_path = tmp_path_factory.mktemp("calibrated")
    path = write(tmp_path, sweep_raw(tmp_path, budget={"epochs": 1}, calibration={"archs": ["convnext_demo"]}))
    refused = main(["sweep", "run", str(path), "--no-progress"])  # not calibrated yet
    trained_before = sorted(p.name for p in (tmp_path / "out").rglob("result.json"))
    assert main(["sweep", "calibrate", str(path)]) == 0
    folder = tmp_path / "out" / "calibration"
    first = json.loads(json.dumps(sorted(p.name for p in folder.iterdir())))
    assert main(["sweep", "run", str(folder), "--no-progress"]) == 0
    assert main(["sweep", "calibrate", str(path)]) == 0
    return {"path": path, "folder": folder, "first": first, "refused": refused, "tmp": tmp_path,
            "trained_before": trained_before}


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_root")
def test_calibration_trains_the_subset_short_and_full_and_reports_the_verdicts(calibrated: dict[str, Any]) -> None:
    folder = calibrated["folder"]
    assert {"short.yaml", "full.yaml"} <= set(calibrated["first"])
    report = json.loads((folder / "calibration.json").read_text())
    assert report["budget"] == {"epochs": 1} and len(report["groups"]) == 1
    group = report["groups"][0]
    assert group["group"]["arch"] == "convnext_demo" and group["points"] == 3 * 2  # AnB, BnB, random-frozen at 2 depths
    assert {v["comparison"] for v in group["verdicts"]} == {"AnB vs random-frozen", "AnB vs BnB"}
    assert {v["depth"] for v in group["verdicts"]} == {1, 3} and all(v["short_n"] == 2 for v in group["verdicts"])
    assert isinstance(report["faithful"], bool) and "rule" in report
    # the short cells are the budget sweep's own cells: same ids, one run dir each (nothing trained twice)
    sweep = load_sweep(calibrated["path"])
    main_ids = {c.id for c in plan_sweep(sweep).cells}
    short = plan_sweep(load_sweep(folder / "short.yaml"))
    full = plan_sweep(load_sweep(folder / "full.yaml"))
    assert {c.id for c in short.cells} <= main_ids and not {c.id for c in full.cells} & main_ids
    assert all(read_result(c.run_dir) for c in short.cells + full.cells)
    assert {c.arch for c in full.cells} == {"convnext_demo"}
    for c in full.cells:  # the full subset: the same cells without the budget
        config = yaml.safe_load(Path(c.run_dir, "config.yaml").read_text())
        assert not config["trainer"].get("budget") and config["trainer"]["max_epochs"] == 2
    # run of the budget sweep follows the verdict
    if report["faithful"]:
        assert main(["sweep", "plan", str(calibrated["path"])]) == 0
    else:
        assert main(["sweep", "run", str(calibrated["path"]), "--no-progress"]) == 2


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_root")
def test_run_refuses_an_uncalibrated_budget_sweep_before_training(calibrated: dict[str, Any]) -> None:
    assert calibrated["refused"] == 2  # before `mkf sweep calibrate` had run
    assert calibrated["trained_before"] == []  # nothing trained


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_root")
def test_costs_fit_refits_the_table_plan_reads_from_the_calibration_cells(
        calibrated: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from configs import config_path
    from launch.planning.cost import load_costs

    out = tmp_path / "costs.yaml"
    assert main(["costs", "fit", str(calibrated["folder"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "convnext_demo (cpu)" in printed and "measured (32 cells)" in printed
    table = load_costs(out)
    entry = table["throughput"]["cpu"]["convnext_demo"]
    assert entry["kind"] == "measured" and entry["cells"] >= 16 and entry["train"] > 0
    shipped = load_costs(config_path("costs.yaml"))
    assert table["throughput"]["a100"] == shipped["throughput"]["a100"]  # what was not measured keeps its source
    # the fitted table predicts the full-length cells' total training time within an order of magnitude: a unit
    # slip (batches for images, seconds for hours) is orders. On 2026-12-06 it over-predicted these tiny cells by
    # 2.2x and 3.2x in two runs (fixed per-cell overheads fitted as per-image rate): an open item of issue 25
    from pipeline.results.costs import cell_cost

    table["datasets"] = {"fashion_mnist": {"train_images": 512, "val_images": 256, "classes": 10}}
    predicted = measured = 0.0
    for path in (calibrated["folder"] / "full" / "cells").glob("*/result.json"):
        config = yaml.safe_load((path.parent / "config.yaml").read_text())
        config["data"]["split"] = None  # its 512 images are the table's whole dataset here
        predicted += cell_cost(config, table, device="cpu").train_hours * 3600
        measured += read_result(path.parent)["cost"]["train_s"]
    assert measured > 0 and 0.1 < predicted / measured < 10.0, (predicted, measured)
    (tmp_path / "empty").mkdir()  # a folder without costed cells: one line, nothing written
    assert main(["costs", "fit", str(tmp_path / "empty"), "--out", str(tmp_path / "x.yaml")]) == 2
    assert not (tmp_path / "x.yaml").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_root")
def test_status_and_report_sum_what_the_cells_recorded_per_stage_and_sweep(
        calibrated: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """The cost each finished cell wrote (result.json) is summed per stage and per sweep by `mkf sweep status` and
    in the report's summary.md; the sums are checked against the cells' own files read independently here."""
    full = calibrated["folder"] / "full.yaml"
    plan = plan_sweep(load_sweep(full))
    by_stage: dict[str, float] = {}
    for c in plan.cells:
        cost = read_result(c.run_dir)["cost"]
        assert cost["cpu_core_hours"] > 0 and cost["train_s"] > 0
        by_stage[c.stage] = by_stage.get(c.stage, 0.0) + cost["cpu_core_hours"]
    assert set(by_stage) == {"base", "transfer"}
    capsys.readouterr()
    assert main(["sweep", "status", str(full)]) == 0
    out = capsys.readouterr().out
    total = sum(by_stage.values())
    assert f"spent by finished cells (their result.json cost): {len(plan.cells)} cells: {total:,.4f} CPU core-hours" \
        in out, out
    for stage, hours in by_stage.items():
        assert f"{stage:>8}: " + f"{sum(1 for c in plan.cells if c.stage == stage)} cells: {hours:,.4f}" in out
    assert "allocations (sacct" not in out  # local cells recorded no Slurm job: sacct is not asked
    assert main(["sweep", "report", str(full)]) == 0
    summary = (Path(plan.output_dir) / "summary.md").read_text()
    assert "## What it cost" in summary and f"{total:,.4f} CPU core-hours" in summary


def test_the_cost_table_of_docs_costs_md_is_what_plan_computes() -> None:
    """docs/costs.md §8 quotes the catalog at each budget and under sequential seeds (the README quotes §8):
    every figure there is recomputed from the planner, so neither can drift from `mkf sweep plan`."""
    import re

    from configs import config_path
    from launch.planning.catalog import plan_catalog
    from tests.conftest import REPO

    text = (REPO / "docs" / "costs.md").read_text()
    section = text[text.index("## 8."):text.index("## 9.")]

    def row(label: str) -> list[int]:
        line = next(x for x in section.splitlines() if x.startswith(f"| {label}"))
        return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", line.split("|")[2])]

    plan = plan_catalog(config_path("paper"))
    full = round(estimate(plan).total_hours)
    assert row("new model")[0] == full
    assert row("budget 40 epochs")[0] == round(estimate(plan, budget_epochs=40).total_hours)
    assert row("budget 16 epochs")[0] == round(estimate(plan, budget_epochs=16).total_hours)
    for label, budget in (("sequential seeds at 90 epochs", None), ("sequential seeds at 16 epochs", 16)):
        lines = sequential_lines(plan, budget_epochs=budget)
        printed = [int(n.replace(",", "")) for n in re.findall(r"~([\d,]+) GPU-hours", " ".join(lines))]
        best, worst, null, effect = printed
        assert row(label) == [best, null, effect, worst], label
