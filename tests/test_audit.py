"""The protocol audit (`mkf sweep audit`, pipeline.results.audit) on real trained cells: it passes a sweep trained
as the protocol says, and fails -- naming the cell and the invariant -- each way a sweep can silently measure
something else: frozen units that drift, a random-frozen block left an identity, re-initialised layers that are
base B's init, cells of a comparison trained alike in name only, validation images trained on."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_data_writer import photo_tree

from launch.cli import main
from launch.core.plan import write_plan
from launch.planning.planner import plan_sweep
from launch.planning.schema import load_sweep
from pipeline.config import CellConfig, from_dict
from pipeline.results.audit import audit

pytestmark = pytest.mark.usefixtures("fashion_root")

SWEEP: dict[str, Any] = {
    "name": "audit-test", "seeds": [0],
    "data": {"split": {"kind": "random_halves", "seed": 0}, "batch_size": 32, "max_train_samples": 128,
             "max_val_samples": 64},
    "archs": [{"arch": "resnet_demo", "unit_kind": "block"}],
    "depths": [2], "variants": ["AnB", "BnB", "random-frozen"],
    "train": {"trainer": {"max_epochs": 1, "progress_bar": False, "accelerator": "cpu", "devices": 1}},
}


def run_sweep(tmp_path: Path, **changes: Any) -> Path:
    """Plan the sweep as `mkf sweep plan` does and train its cells in plan order, in this process (so a test can
    patch the training code to reproduce a defect)."""
    from pipeline.training.train import train_cell

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, **changes, "output_dir": str(tmp_path / "out")}))
    plan = plan_sweep(load_sweep(path))
    write_plan(plan)
    for cell in plan.cells:
        train_cell(from_dict(CellConfig, plan.configs[cell.id]))
    return tmp_path / "out"


def failures(out: Path, invariant: str) -> list[str]:
    return [f"{f.subject}: {f.detail}" for f in audit(out).findings if f.invariant == invariant and not f.ok]


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield run_sweep(tmp_path_factory.mktemp("clean"))


def test_a_sweep_trained_by_the_protocol_passes_every_invariant(clean: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    report = audit(clean)
    rows = {r["invariant"]: r for r in report.rows()}
    assert report.passed, [f.detail for f in report.findings if not f.ok]
    assert rows["transferred units"]["checked"] == 2  # AnB and BnB
    assert rows["control units"]["checked"] == 1 and rows["comparison"]["checked"] == 1
    assert main(["sweep", "audit", str(clean)]) == 0
    assert json.loads((clean / "audit.json").read_text())["passed"] is True
    assert main(["report", str(clean)]) == 0
    assert "audit failed" not in (clean / "summary.md").read_text()


def test_frozen_batchnorm_statistics_that_drift_fail_the_transferred_units(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The defect the audit found while it was written: a probe's model.train() put frozen BatchNorms back into
    training. Reproduced by a module whose train() forgets them."""
    from lightning import LightningModule

    from pipeline.training.classifier import ImageClassifier

    monkeypatch.setattr(ImageClassifier, "train", lambda self, mode=True: LightningModule.train(self, mode))
    out = run_sweep(tmp_path, variants=["AnB"])
    found = failures(out, "transferred units")
    assert found and "running_mean" in found[0] and "changed during training" in found[0], found


def test_a_random_frozen_block_left_an_identity_fails_the_control(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """resnet_demo's blocks are zero-init: frozen as built (the old control) they are identity maps."""
    import pipeline.transfer.apply as apply

    monkeypatch.setattr(apply, "draw_branch_scales", lambda *args, **kwargs: [])
    out = run_sweep(tmp_path, variants=["random-frozen"])
    found = failures(out, "control units")
    assert found and "identity map" in found[0] and "layer1.0" in found[0], found
    assert main(["report", str(out)]) == 1, "a report with a failed audit says so by its exit status"
    summary = (out / "summary.md").read_text()
    assert "✗ protocol audit failed (control units)" in summary and "✗ control units" in summary


def test_reinitialised_layers_that_are_base_bs_init_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The old behaviour (every cell of a seed built from the seed) while the cells say reinit: fresh."""
    import pipeline.training.train as train

    monkeypatch.setattr(train, "init_seed", lambda cfg: cfg.seed)
    out = run_sweep(tmp_path, variants=["AnB"])
    found = failures(out, "re-initialised tensors")
    assert found and "reference base's initial tensors" in found[0], found


def test_cells_of_a_comparison_trained_unalike_fail_the_comparison(tmp_path: Path) -> None:
    """A stage override that trains transfer cells longer: relative top-1 would compare unlike runs."""
    out = run_sweep(tmp_path, variants=["AnB"], stages={"transfer": {"trainer": {"max_epochs": 2}}})
    found = failures(out, "comparison")
    assert found and ("max_epochs" in found[0] or "steps" in found[0]), found


def test_validation_images_that_are_training_images_fail_the_split(tmp_path: Path) -> None:
    """An image folder whose val/ is a link to train/: every top-1 would be measured on trained images."""
    photo_tree(tmp_path / "photos", classes=4, train=8, val=2)
    os.rename(tmp_path / "photos" / "val", tmp_path / "photos" / "val_real")
    os.symlink(tmp_path / "photos" / "train", tmp_path / "photos" / "val")
    out = run_sweep(tmp_path, variants=["AnB"], data={"dataset": "image_folder", "root": str(tmp_path / "photos"),
                                                      "split": {"kind": "random_halves", "seed": 0},
                                                      "batch_size": 4, "image_size": 32})
    found = failures(out, "split")
    assert found and "as training and validation data" in found[0], found
