"""Sweeps end to end on real data: plan -> run (local executor) -> skip finished -> resume -> status -> report."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from launch.cli import main
from launch.sweep import load_sweep, plan_sweep
from pipeline.train import read_result

SWEEP = {
    "name": "mini",
    "seeds": [0],
    "data": {"dataset": "fashion_mnist", "split": {"kind": "random_halves", "seed": 1}, "batch_size": 64,
             "max_train_samples": 512, "max_val_samples": 256},
    "archs": [{"arch": "convnext_demo", "unit_kind": "depthwise"}],
    "depths": [1, 5],
    "variants": ["AnB", "BnB"],
    "train": {"trainer": {"max_epochs": 1, "progress_bar": False, "accelerator": "cpu"}},
}


def write_sweep(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, "output_dir": str(tmp_path / "out"), **changes}))
    return path


def test_plan_is_deterministic_and_ordered(tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path, archs=[{"arch": "convnext_demo"}, {"arch": "resnet_demo",
                                                                                "unit_kind": "block"}],
                                   depths="all", variants=["AnB", "BnB", "AnB+", "BnB+", "reverse"], seeds=[0, 1]))
    first, second = plan_sweep(sweep), plan_sweep(sweep)
    assert [c.id for c in first.cells] == [c.id for c in second.cells]
    assert len({c.id for c in first.cells}) == len(first.cells) == 2 * 2 * (2 + 5 * 5)
    by_id = first.by_id()
    seen_transfer = False
    for cell in first.cells:
        if cell.stage == "base":
            assert not seen_transfer, "base cells come first"
            assert not cell.depends_on
            continue
        seen_transfer = True
        (dep,) = cell.depends_on
        base = by_id[dep]
        assert (base.stage, base.arch, base.seed) == ("base", cell.arch, cell.seed)
        assert base.variant == ("base-B" if cell.variant.startswith("BnB") else "base-A")
        assert first.configs[cell.id]["transfer"]["base"] == base.run_dir
    cfg = first.configs[next(c.id for c in first.cells if c.variant == "reverse" and c.depth == 2)]
    assert cfg["transfer"]["direction"] == "last" and cfg["transfer"]["mode"] == "frozen"
    cfg = first.configs[next(c.id for c in first.cells if c.variant == "AnB+")]
    assert cfg["transfer"]["mode"] == "finetune" and cfg["data"]["half"] == "B"


def test_plan_cli_writes_manifest_and_configs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "plan", str(write_sweep(tmp_path))]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert len(manifest["cells"]) == 6
    printed = capsys.readouterr().out
    for cell in manifest["cells"]:
        assert Path(cell["config_path"]).is_file()
        assert cell["id"] in printed
    assert not (tmp_path / "out" / "cells").exists(), "planning trains nothing"


@pytest.mark.usefixtures("fashion_root")
def test_run_skip_resume_status_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = write_sweep(tmp_path)
    out = tmp_path / "out"
    assert main(["sweep", "run", str(sweep), "--slots", "2", "--no-progress"]) == 0
    plan = plan_sweep(load_sweep(sweep))
    results = {c.id: read_result(c.run_dir) for c in plan.cells}
    assert all(results.values()), "every cell finished"
    stamps = {c.id: (Path(c.run_dir) / "result.json").stat().st_mtime_ns for c in plan.cells}

    # a rerun skips all six
    capsys.readouterr()
    assert main(["sweep", "run", str(sweep), "--no-progress"]) == 0
    assert "6 already finished, 0 to run" in capsys.readouterr().out
    assert stamps == {c.id: (Path(c.run_dir) / "result.json").stat().st_mtime_ns for c in plan.cells}

    # a cell that lost its result but kept its checkpoint is 'interrupted' and is resumed, not restarted
    victim = next(c for c in plan.cells if c.variant == "AnB" and c.depth == 5)
    (Path(victim.run_dir) / "result.json").unlink()
    shutil.rmtree(Path(victim.run_dir) / "logs")
    assert main(["sweep", "status", str(out)]) == 0
    status = capsys.readouterr().out
    assert "finished: 5" in status and "interrupted: 1" in status
    assert main(["sweep", "run", str(sweep), "--no-progress"]) == 0
    assert "5 already finished, 1 to run (1 resume from a checkpoint)" in capsys.readouterr().out
    resumed = read_result(victim.run_dir)
    assert resumed is not None and resumed["resumed"] is True

    # the report: a row per cell, relative top-1 against base B of the same arch and seed, figure files
    assert main(["report", str(out)]) == 0
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    base_b = next(float(r["top1"]) for r in rows if r["variant"] == "base-B")
    for r in rows:
        if r["stage"] == "transfer":
            assert float(r["relative_top1"]) == pytest.approx(float(r["top1"]) / base_b)
    for name in ("figure.png", "figure.pdf"):
        assert (out / name).stat().st_size > 1000
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_output_dir_with_a_newline_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Cell lists and scripts are line-based: a control character in output_dir is a clear error, not a broken job."""
    assert main(["sweep", "plan", str(write_sweep(tmp_path, output_dir=str(tmp_path / "a\nb")))]) == 2
    assert "control character" in capsys.readouterr().err
    assert not (tmp_path / "a\nb").exists()


@pytest.mark.usefixtures("fashion_root")
def test_wandb_groups_cells_logs_the_figure_and_syncs_offline_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """W&B (offline, as on compute nodes): one run per cell in the sweep's group, the report figure logged as an
    image, `mkf sweep sync` hands every offline run to `wandb sync`, and the API key is stored nowhere."""
    secret = "fedcba9876543210fedcba9876543210fedcba98"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sweep = write_sweep(tmp_path, depths=[1], variants=["AnB"], wandb={"enabled": True, "project": "mkf-test"})
    out = tmp_path / "out"
    assert main(["sweep", "run", str(sweep), "--no-progress"]) == 0
    plan = plan_sweep(load_sweep(sweep))
    for cell in plan.cells:
        runs = list(Path(cell.run_dir).glob("wandb/offline-run-*"))
        assert len(runs) == 1 and runs[0].name.endswith(cell.id)
        config = yaml.safe_load((Path(cell.run_dir) / "config.yaml").read_text())["wandb"]
        assert config["group"] == "mini" and config["job_type"] == cell.stage
        assert cell.arch in config["tags"] and f"depth={cell.depth}" in config["tags"]
    assert main(["report", str(out)]) == 0
    assert "logged the figure to W&B" in capsys.readouterr().out
    images = list(out.glob("wandb/offline-run-*/files/media/images/figure3_*.png"))
    assert len(images) == 1 and images[0].stat().st_size > 1000

    calls: list[list[str]] = []

    class Done:
        returncode = 0

    monkeypatch.setattr("launch.wandb_sync.subprocess.run", lambda cmd, **kw: calls.append(cmd) or Done())
    assert main(["sweep", "sync", str(out)]) == 0
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "wandb", "sync"] and len(cmd[4:]) == 4  # 3 cells + the report
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"API key leaked into {path}"
