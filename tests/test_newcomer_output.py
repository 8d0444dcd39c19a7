"""Issue 26, a run you can follow: one line per finished cell with its top-1 and relative top-1, the reason for
every unfinished cell, clean cell logs, `mkf sweep status` explaining the folder it was given and naming each
cell's source -> target. Real tiny cells (convnext_demo, 256 Fashion-MNIST images, one epoch)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from launch.cli import main
from launch.planning.planner import plan_sweep
from launch.planning.schema import load_sweep

pytestmark = pytest.mark.usefixtures("fashion_root")

SWEEP = {
    "name": "newcomer",
    "seeds": [0],
    "data": {"dataset": "fashion_mnist", "split": {"kind": "random_halves", "seed": 1}, "batch_size": 64,
             "max_train_samples": 256, "max_val_samples": 128},
    "archs": [{"arch": "convnext_demo", "unit_kind": "depthwise"}],
    "depths": [1, 5],
    "variants": ["AnB", "BnB"],
    "train": {"trainer": {"max_epochs": 1, "progress_bar": False, "accelerator": "cpu", "log_every_n_steps": 1}},
}

# started by the local executor's `mkf train` of one cell (found in /proc/self/cmdline): fails it at once
FAIL_HOOK = """
import os, sys
victim = os.environ.get("MKF_TEST_FAIL_CONFIG")
if victim:
    with open("/proc/self/cmdline", "rb") as f:
        if victim in f.read().decode(errors="replace"):
            print("RuntimeError: injected failure of this cell", file=sys.stderr)
            sys.exit(3)
"""


def test_a_local_run_names_each_result_and_why_each_unfinished_cell_did_not_finish(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Base A fails: its two AnB cells are skipped because of it (not just '3 cells did not finish'), the base B
    and BnB cells finish, each with a line of its top-1 (and relative top-1 against base B)."""
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, "output_dir": str(tmp_path / "out")}))
    plan = plan_sweep(load_sweep(path))
    base_a = next(c for c in plan.cells if c.variant == "base-A")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAIL_HOOK)
    monkeypatch.setenv("PYTHONPATH", f"{hook}:{Path(__file__).resolve().parents[1]}")
    monkeypatch.setenv("MKF_TEST_FAIL_CONFIG", base_a.config_path)
    assert main(["sweep", "run", str(path), "--executor", "local", "--no-bundle", "--no-progress"]) == 1
    err = capsys.readouterr().err
    lines = err.splitlines()
    finished = [line for line in lines if line.startswith("finished ")]
    assert len(finished) == 3, err  # base B, BnB n=1, BnB n=5
    for cell in plan.cells:
        if cell.variant == "base-B":
            assert any(f"({cell.id}): top-1 0." in line and "relative" not in line for line in finished), err
        elif cell.variant == "BnB":
            assert any(f"({cell.id}): top-1 0." in line and ", relative top-1 " in line for line in finished), err
    assert "3 of 6 cells did not finish:" in err
    log = tmp_path / "out" / "logs" / f"{base_a.id}.log"
    assert f"  failed {base_a.label} ({base_a.id}): see {log}" in err
    skipped = [line for line in lines if line.startswith("  skipped ")]
    assert len(skipped) == 2 and all(f"its base {base_a.label} ({base_a.id}) failed" in line for line in skipped)
    for cell in plan.cells:  # a cell run as its own `mkf train` process (--no-bundle): a clean log too
        if cell.variant in ("base-B", "BnB"):
            text = (tmp_path / "out" / "logs" / f"{cell.id}.log").read_text()
            assert "srun" not in text and "Tip:" not in text and "💡" not in text, text

    # status names each cell's source -> target, and explains folders that are not a sweep
    assert main(["sweep", "status", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "source -> target" in out and "A -> B" in out and "B -> B" in out
    base_b = next(c for c in plan.cells if c.variant == "base-B")
    assert main(["sweep", "status", base_b.run_dir]) == 2
    err = capsys.readouterr().err
    assert "is a cell folder" in err and "not a sweep" in err and f"its sweep is {tmp_path / 'out'}" in err
    assert "unknown key" not in err and len(err.strip().splitlines()) == 1
    assert main(["sweep", "status", str(tmp_path / "out" / "cells")]) == 2
    assert "cells/ folder of the sweep" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["sweep", "status", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "is empty" in err and "manifest.json" in err
    assert main(["sweep", "status", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_local_cell_log_is_clean_and_its_folder_tidy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bundled cells (the default for short cells): no Lightning srun hint (srun may be installed; this is no
    Slurm step), no third-party tips; a finished cell keeps no optimizer checkpoints and its metrics.csv has no
    all-empty column and one row per step."""
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, "depths": [1], "variants": ["AnB"],
                                    "output_dir": str(tmp_path / "out")}))
    assert main(["sweep", "run", str(path), "--executor", "local", "--no-progress"]) == 0
    plan = plan_sweep(load_sweep(path))
    logs = [p for p in (tmp_path / "out" / "logs").glob("*.log")]
    assert logs
    for log in logs:
        text = log.read_text()
        for noise in ("srun", "💡", "Tip:", "lightning.ai", "litlogger"):
            assert noise not in text, f"{log.name}: {noise!r} in\n{text}"
    for cell in plan.cells:
        run = Path(cell.run_dir)
        assert json.loads((run / "result.json").read_text())["status"] == "finished"
        assert not list(run.rglob("*.ckpt")), "a finished cell keeps no best.ckpt / last.ckpt unless asked"
        with (run / "metrics.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert rows and all(any(r[c] for r in rows) for c in rows[0]), "no all-empty column"
        steps = [(r.get("epoch"), r["step"]) for r in rows]
        assert len(steps) == len(set(steps)), "one row per (epoch, step)"
        assert any(r.get("val/top1") for r in rows) and any(r.get("train/loss") for r in rows)


def test_unfinished_reasons_group_the_cells_a_failed_base_takes_down(tmp_path: Path) -> None:
    """Many cells after one failed base read as one line, not one each; a cell whose base did not run waits."""
    from launch.execution.base import SweepOutcome, unfinished_lines

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, "depths": [1, 2, 3, 4, 5], "output_dir": str(tmp_path / "out")}))
    plan = plan_sweep(load_sweep(path))
    base_a = next(c for c in plan.cells if c.variant == "base-A")
    base_b = next(c for c in plan.cells if c.variant == "base-B")
    states = {base_a.id: "failed", base_b.id: "pending"}
    states.update({c.id: "blocked" for c in plan.cells if c.stage == "transfer"})
    lines = unfinished_lines(plan, SweepOutcome(states))
    assert lines[0] == f"failed {base_a.label} ({base_a.id}): see {base_a.run_dir}"
    assert "skipped 5 cells (" in lines[1] and f"their base {base_a.label} ({base_a.id}) failed" in lines[1]
    bnb = [line for line in lines if line.startswith("waiting ") and " BnB " in line]
    assert len(bnb) == 5 and all(f"its base {base_b.label} has not finished" in line for line in bnb), lines
    assert f"waiting {base_b.label} ({base_b.id}): not started" in "\n".join(lines)
