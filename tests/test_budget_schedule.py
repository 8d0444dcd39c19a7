"""Budget schedules: a shorter run of a recipe with its schedule stretched to it, on real cells and as arithmetic."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from datamodules.errors import UserError
from pipeline.schedule import budget_length, lr_factor, warmup_steps
from pipeline.training.train import train_cell
from tests.conftest import cell_config


def test_budget_length_and_its_one_line_errors() -> None:
    full = budget_length(90, -1, None)
    assert (full.max_epochs, full.max_steps, full.stretch, full.budget) == (90, -1, 1.0, None)
    short = budget_length(90, -1, {"epochs": 16, "steps": None})
    assert (short.max_epochs, short.max_steps) == (16, -1) and short.stretch == pytest.approx(16 / 90)
    assert short.record(90, -1) == {"epochs": 16, "full_epochs": 90, "full_steps": None, "stretch": 0.177778}
    steps = budget_length(4, -1, {"steps": 12}, steps_per_epoch=8)  # 12 of 32 optimizer steps
    assert (steps.max_epochs, steps.max_steps, steps.stretch) == (2, 12, 12 / 32)
    for budget, message in (({"epochs": 2, "steps": 10}, "not both"), ({"epochs": 91}, "between 1 and"),
                            ({"epoch": 3}, "unknown key trainer.budget.epoch"), ({"steps": 40}, "between 1 and")):
        with pytest.raises(UserError, match=message) as err:
            budget_length(90 if "epochs" in budget or "epoch" in budget else 4, -1, budget, steps_per_epoch=8)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="use trainer.budget.steps"):
        budget_length(90, 1000, {"epochs": 10})


def test_warmup_keeps_its_share_of_a_shortened_run() -> None:
    """5 warmup epochs of a 90-epoch recipe are 1/18 of the run; at a 18-epoch budget they must stay 1/18
    (1 epoch), not become 5 of 18. warmup_fraction is a share already."""
    per_epoch = 100
    assert warmup_steps({"warmup_epochs": 5}, 18 * per_epoch, per_epoch, stretch=18 / 90) == per_epoch
    assert warmup_steps({"warmup_epochs": 5}, 18 * per_epoch, per_epoch) == 5 * per_epoch  # unstretched
    assert warmup_steps({"warmup_steps": 900}, 1800, per_epoch, stretch=0.2) == 180
    assert warmup_steps({"warmup_fraction": 0.05}, 1800, per_epoch, stretch=0.2) == 90  # 5% of the budget run


def test_a_budget_cell_stretches_warmup_and_cosine_and_records_the_budget(tmp_path: Path) -> None:
    """A 4-epoch recipe (warmup 2 epochs) trained at a 1-epoch budget: 8 steps, warmup 4 of them (2 x 8 x 1/4),
    the cosine reaching its floor at the last step, and the record saying 1 of 4 epochs."""
    cfg = cell_config(tmp_path / "cell", trainer={"max_epochs": 4, "budget": {"epochs": 1}},
                      optim={"lr": 0.004, "warmup_epochs": 2, "warmup_steps": 0, "min_lr_ratio": 0.1})
    result = train_cell(cfg)
    assert result["steps"] == 8 and result["epochs"] == 1
    assert result["schedule"]["budget"] == {"epochs": 1, "full_epochs": 4, "full_steps": None, "stretch": 0.25}
    evidence = json.loads((tmp_path / "cell" / "evidence.json").read_text())
    schedule = evidence["schedule"]
    assert (schedule["warmup_steps"], schedule["total_steps"], schedule["stretch"]) == (4, 8, 0.25)
    assert schedule["budget"]["full_epochs"] == 4 and evidence["recipe"]["trainer"]["budget"] == {"epochs": 1,
                                                                                                 "steps": None}
    # every logged learning rate is the stretched schedule's (unstretched, warmup would be 7 of the 8 steps)
    optim = {"warmup_start_factor": 0.01, "min_lr_ratio": 0.1}
    rows = list(csv.DictReader((tmp_path / "cell" / "metrics.csv").open()))
    logged = [(int(r["step"]), float(r["lr-AdamW/pg1"])) for r in rows if r.get("lr-AdamW/pg1")]
    assert [s for s, _ in logged] == [1, 3, 5, 7]
    for step, lr in logged:
        assert lr == pytest.approx(0.004 * lr_factor(step, 4, 8, optim), rel=1e-6), step
    assert logged[-1][1] < 0.004 * 0.25  # step 7: near the cosine's floor (0.1), not still warming up


def test_a_step_budget_trains_that_many_steps(tmp_path: Path) -> None:
    result = train_cell(cell_config(tmp_path / "cell", trainer={"max_epochs": 2, "budget": {"steps": 12}}))
    assert result["steps"] == 12
    assert result["schedule"]["budget"]["stretch"] == pytest.approx(12 / 16)


def test_bad_budget_is_one_line_before_the_run_dir_exists(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="trainer.budget.epochs = 5 must be between 1 and trainer.max_epochs"):
        train_cell(cell_config(tmp_path / "cell", trainer={"max_epochs": 2, "budget": {"epochs": 5}}))
    assert not (tmp_path / "cell").exists()


def test_unset_budget_and_progressive_keys_leave_every_cells_content_id_unchanged() -> None:
    """launch.sweep hashes a cell's resolved config (to_dict) into its content id: a store planned before these
    keys existed must keep its ids, and a cell that sets one is a different run (and reads back the same)."""
    from pipeline.config import CellConfig, from_dict, to_dict

    plain = to_dict(CellConfig())
    assert "budget" not in plain["trainer"] and "progressive" not in plain["data"]
    short = from_dict(CellConfig, {"trainer": {"budget": {"epochs": 16}, "max_epochs": 90},
                                   "data": {"image_size": 192, "progressive": {"start": 160, "start_epoch": 65,
                                                                               "end_epoch": 76}}})
    written = to_dict(short)
    assert written["trainer"]["budget"] == {"epochs": 16, "steps": None}
    assert from_dict(CellConfig, written) == short
