"""`mkf sweep plan`'s per-arch schedule (launch.views.schedule): the effective LR after the recipe's scaling, the
optimizer steps per cell and the EMA horizon, with the warnings, checked against what the trainer really does."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import yaml

from configs import config_path
from launch.planning.planner import plan_sweep
from launch.planning.schema import load_sweep
from launch.views.schedule import schedule, schedule_table
from pipeline.config import to_dict
from tests.conftest import REPO, cell_config


def fig3_at_batch(tmp_path: Path, batch: int, global_batch: int | None | str = "recipe") -> Any:
    """The fig3 catalog sweep as a user would shrink it: the shipped recipes per arch, batch ``batch``; optionally
    with the recipes' trainer.global_batch_size overridden (None: the per-device batch alone decides)."""
    raw = yaml.safe_load(config_path("paper/fig3_manmade_natural.yaml").read_text())
    raw["data"]["batch_size"] = batch
    raw["output_dir"] = str(tmp_path / "out")
    if global_batch != "recipe":
        raw["train"]["trainer"]["global_batch_size"] = global_batch
    path = tmp_path / "fig3.yaml"
    path.write_text(yaml.safe_dump(raw))
    return plan_sweep(load_sweep(path))


def test_fig3_keeps_the_recipes_global_batch_at_any_device_batch(tmp_path: Path) -> None:
    """The recipes fix the optimizer's batch (trainer.global_batch_size): a smaller device batch accumulates more,
    the LR stays the published one and nothing warns; without it the LR is cut 64-fold and the table says so."""
    plan = fig3_at_batch(tmp_path, 64)
    table, lines = schedule_table(plan)
    # one row per arch and half: the man-made half (551 classes) trains more steps per epoch than the natural (449)
    assert sorted(set(table.columns[0]._cells)) == sorted(a.arch for a in load_sweep(tmp_path / "fig3.yaml").archs)
    template = next(t for k, t in plan.templates.items() if k.startswith("base|convnext_tiny|"))
    convnext = schedule(template)
    assert convnext.effective_lr == pytest.approx(4e-3) and convnext.global_batch == 4096
    assert convnext.accumulate == 64 and convnext.ema_horizon == pytest.approx(10_000)
    # the cost table's ImageNet, the half's share of the classes: man-made 551 of 1,000, natural 449
    half = 1_281_167 * (551 if template["data"]["half"] == "A" else 449) / 1000
    assert convnext.steps_per_epoch == math.ceil((int(half) // 64) / 64)
    assert convnext.steps == convnext.steps_per_epoch * 90
    assert convnext.warmup_steps == round(0.0667 * convnext.steps)  # the recipe's share, not 20 epochs
    resnet = schedule(next(t for k, t in plan.templates.items() if k.startswith("base|resnet50|")))
    assert resnet.effective_lr == pytest.approx(0.5) and resnet.global_batch == 1024
    assert resnet.ema_horizon == pytest.approx(32 / ((1 - 0.99998) * 1024 * 32 / 90))  # torchvision's rule
    assert not lines or all(line.startswith("*") for line in lines), lines

    cut = fig3_at_batch(tmp_path, 64, global_batch=None)
    _, lines = schedule_table(cut)
    lr_warnings = [line for line in lines if "convnext_tiny" in line and "scaled to 6.25e-05" in line]
    assert len(lr_warnings) == 1 and "< 1/10 of the recipe's" in lr_warnings[0]


def test_short_runs_warn_about_the_ema_horizon(tmp_path: Path) -> None:
    """The issue's CPU run: Fashion-MNIST halves, batch 64, 2 epochs under the ConvNeXt recipe: 468 steps per
    epoch x 2 < the EMA's 10,000-step horizon, and the warmup of 20 epochs never ends; a warmup fraction that
    takes more than a fifth of the run is named too."""
    cfg = to_dict(cell_config(tmp_path / "c", data={"max_train_samples": None, "max_val_samples": None},
                              model={"ema": {"decay": 0.9999}}, trainer={"max_epochs": 2},
                              optim={"lr_scaling": "linear", "base_batch_size": 4096, "warmup_epochs": 20}))
    s = schedule(cfg)
    assert s.train_images == 30_000 and s.steps_per_epoch == 30_000 // 64 and s.steps == 2 * (30_000 // 64)
    assert any("EMA horizon 10,000 steps > 936 steps per cell" in w for w in s.warnings), s.warnings
    assert any("warmup" in w for w in s.warnings) and any("scaled to" in w for w in s.warnings)
    long_warmup = schedule({**cfg, "optim": {**cfg["optim"], "warmup_epochs": None, "warmup_fraction": 0.25}})
    assert any("25% of the run" in w for w in long_warmup.warnings), long_warmup.warnings
    unknown = schedule({**cfg, "data": {**cfg["data"], "dataset": "image_folder", "root": "/nowhere"}})
    assert unknown.steps is None and not any("EMA" in w for w in unknown.warnings)


class RecordOptimizer(L.Callback):
    """What the trainer really built: the optimizer's starting LR (before the schedule's factor)."""

    lr: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.lr = trainer.optimizers[0].param_groups[0]["initial_lr"]


@pytest.mark.usefixtures("fashion_root")
def test_schedule_matches_the_trainer_on_a_real_cell(tmp_path: Path) -> None:
    """The torch-free rules reproduce the trainer's LR scaling and step count (they cannot drift apart silently)."""
    from pipeline.training.train import train_cell

    cfg = cell_config(tmp_path / "cell", data={"batch_size": 32, "max_train_samples": 200},
                      optim={"lr": 4e-3, "lr_scaling": "linear", "base_batch_size": 4096},
                      trainer={"max_epochs": 2, "accumulate_grad_batches": 2}, model={"ema": {"decay": 0.9}})
    expected = schedule(to_dict(cfg))
    recorder = RecordOptimizer()
    result = train_cell(cfg, callbacks=[recorder])
    assert recorder.lr == pytest.approx(expected.effective_lr) and expected.effective_lr == pytest.approx(
        4e-3 * 32 * 2 / 4096)
    assert result["steps"] == expected.steps == 2 * 3  # 200 images // 32 = 6 batches -> 3 steps per epoch


def test_the_schedule_is_torch_free() -> None:
    code = ("import sys; from launch.views.schedule import schedule_table; from launch.planning.schema import "
            "load_sweep; from launch.planning.planner import plan_sweep; "
            "schedule_table(plan_sweep(load_sweep('configs/paper/fig3_manmade_natural.yaml'))); "
            "print(sorted(m for m in ('torch', 'lightning', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
