"""Bundles: cells one after another in one worker process give exactly what each gives alone, a failing cell stays
its own, each keeps its log, run folder, attempts and W&B run, and a SIGTERM keeps the finished cells and resumes
the current one. Real fits on real Fashion-MNIST, real worker processes (``python -m launch.worker.bundle``)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import dump_yaml, to_dict
from pipeline.results import run_folder
from tests.conftest import REPO, cell_config

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", WANDB_MODE="offline",
           WANDB_SILENT="true")


def write_cell(path: Path, run_dir: Path, **sections: Any) -> Path:
    dump_yaml(to_dict(cell_config(run_dir, **sections)), path)
    return path


def transfer_of(base: Path) -> dict[str, Any]:
    return {"base": str(base), "unit_kind": "depthwise", "depth": 2, "mode": "frozen", "init": "copy"}


def bundle(*configs: Path, log_dir: Path, wait: bool = True) -> subprocess.Popen[bytes] | int:
    cmd = [sys.executable, "-m", "launch.worker.bundle", "--log-dir", str(log_dir), *map(str, configs)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if not wait:
        return proc
    _, err = proc.communicate(timeout=600)
    (log_dir / "worker.err").write_bytes(err)
    return proc.returncode


def alone(config: Path, log: Path, env: dict[str, str] | None = None) -> None:
    with log.open("wb") as out:
        subprocess.run([sys.executable, "-m", "launch.cli", "train", "--config", str(config)], cwd=REPO,
                       env={**ENV, **(env or {})},
                       stdout=out, stderr=subprocess.STDOUT, check=True, timeout=600)


def learned_metrics(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv without its perf/ columns: those are wall-clock measurements, different in any two runs."""
    with (run_dir / "metrics.csv").open(newline="") as f:
        return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in csv.DictReader(f)]


def weights(path: Path) -> tuple[dict[str, str], dict[str, bytes]]:
    """(metadata, tensor name -> raw bytes) of a weights file. Not the file's bytes: safetensors writes its
    metadata from a Rust HashMap, whose order is random per process, so two runs of one cell, each alone, differ
    there (measured: 2 orders in 6 fresh processes) while every tensor is the same to the bit."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return dict(f.metadata() or {}), {k: f.get_tensor(k).numpy().tobytes() for k in sorted(f.keys())}


def outcome(run_dir: Path) -> dict[str, Any]:
    result = run_folder.read_result(run_dir)
    assert result is not None, f"{run_dir} did not finish"
    return {"weights": weights(run_dir / "weights.safetensors"), "metrics": learned_metrics(run_dir),
            **{k: result[k] for k in ("top1", "top5", "val_loss", "steps", "epochs", "trainable_params")}}


@pytest.mark.slow
def test_bundled_base_and_transfer_cells_equal_cells_run_alone(fashion_root: Path, tmp_path: Path) -> None:
    # alone: a base cell, then a transfer cell from it, each its own `mkf train` process
    a = tmp_path / "alone"
    a.mkdir()
    alone(write_cell(a / "base.yaml", a / "base"), a / "base.log")
    alone(write_cell(a / "transfer.yaml", a / "transfer", seed=1, transfer=transfer_of(a / "base")), a / "t.log")
    # bundled, after a cell that changes every global it can: another arch and seed, deterministic algorithms on
    b = tmp_path / "bundle"
    b.mkdir()
    other = write_cell(b / "other.yaml", b / "other", seed=7, model={"arch": "resnet_demo"},
                       trainer={"deterministic": True, "max_epochs": 1})
    configs = [other, write_cell(b / "base.yaml", b / "base"),
               write_cell(b / "transfer.yaml", b / "transfer", seed=1, transfer=transfer_of(b / "base"))]
    assert bundle(*configs, log_dir=b / "logs") == 0, (b / "logs" / "worker.err").read_text()
    for name in ("base", "transfer"):
        got, want = outcome(b / name), outcome(a / name)
        assert got["weights"] == want["weights"], f"{name}: weights differ from the cell run alone"
        assert got == want, f"{name}: top-1 / metrics.csv differ from the cell run alone"
    transferred = json.loads((b / "transfer" / "result.json").read_text())
    assert transferred["transfer"]["units"] and transferred["frozen_params"] > 0  # a real transfer cell


@pytest.mark.slow
def test_a_failing_cell_does_not_stop_its_bundle_and_every_cell_keeps_its_own_files(
        fashion_root: Path, tmp_path: Path) -> None:
    wandb = {"enabled": True, "project": "bundle-test"}
    configs = [
        write_cell(tmp_path / "c1.yaml", tmp_path / "c1", wandb=wandb, labels={"cell_id": "cellone"}),
        # its base does not exist: fails while building the transfer, after the data were read
        write_cell(tmp_path / "bad.yaml", tmp_path / "bad", transfer=transfer_of(tmp_path / "missing")),
        write_cell(tmp_path / "c3.yaml", tmp_path / "c3", seed=3, wandb=wandb, labels={"cell_id": "cellthree"}),
    ]
    logs = tmp_path / "logs"
    assert bundle(*configs, log_dir=logs) == 1  # one failed, the rest finished
    for name, run_id in (("c1", "cellone"), ("c3", "cellthree")):
        run_dir = tmp_path / name
        assert run_folder.read_result(run_dir) is not None
        log = (logs / f"{name}.log").read_text()
        assert f"{run_dir}: top-1" in log and "Traceback" not in log
        other = tmp_path / ("c3" if name == "c1" else "c1")
        assert f"{other}: top-1" not in log, "another cell's output leaked into this cell's log"
        runs = run_folder.offline_wandb_runs(run_dir)
        assert len(runs) == 1 and runs[0].name.endswith(run_id), "each cell has its own offline W&B run"
        assert [h["outcome"] for h in run_folder.read_attempts(run_dir)["history"]] == ["started", "finished"]
    bad_log = (logs / "bad.log").read_text()
    assert "Traceback" not in bad_log and "mkf: error: base weights" in bad_log and "top-1" not in bad_log
    attempts = run_folder.read_attempts(tmp_path / "bad")  # bad input: not charged, the cell marked failed
    assert attempts["failures"] == 0 and attempts["history"][-1]["outcome"] == "bad_input"
    assert run_folder.read_failure(tmp_path / "bad") is not None
    assert run_folder.read_result(tmp_path / "bad") is None


@pytest.mark.slow
def test_sigterm_keeps_finished_cells_and_the_next_run_resumes_the_current_one(
        fashion_root: Path, tmp_path: Path) -> None:
    long = {"max_train_samples": 4000}
    configs = [
        write_cell(tmp_path / "first.yaml", tmp_path / "first"),
        write_cell(tmp_path / "long.yaml", tmp_path / "long", data=long,
                   trainer={"max_epochs": 3, "checkpoint_every_n_steps": 4}),
        write_cell(tmp_path / "last.yaml", tmp_path / "last", seed=2),
    ]
    logs = tmp_path / "logs"
    proc = bundle(*configs, log_dir=logs, wait=False)
    assert isinstance(proc, subprocess.Popen)
    deadline = time.time() + 300
    started = tmp_path / "long" / "checkpoints" / "last.ckpt"  # the long cell trains: its first periodic save
    while not started.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, err.decode()  # stopped by a preemption
    assert run_folder.read_result(tmp_path / "first") is not None
    assert (tmp_path / "long" / "checkpoints" / "preempt.ckpt").is_file()
    assert run_folder.read_attempts(tmp_path / "long")["history"][-1]["outcome"] == "preempted"
    assert run_folder.read_result(tmp_path / "long") is None
    assert not (tmp_path / "last").exists(), "the bundle went on after the preemption"
    assert bundle(*configs, log_dir=logs) == 0  # the requeued bundle
    result = run_folder.read_result(tmp_path / "long")
    assert result is not None and result["resumed_from"] == "preempt.ckpt"
    assert run_folder.read_result(tmp_path / "last") is not None
    assert [h["outcome"] for h in run_folder.read_attempts(tmp_path / "first")["history"]] == ["started", "finished"]


def test_the_cost_table_decides_which_cells_share_a_worker(tmp_path: Path) -> None:
    from configs import config_path
    from launch.execution.local import LocalExecutor, bundled
    from launch.planning.planner import plan_sweep
    from launch.planning.schema import load_sweep

    plan = plan_sweep(load_sweep(config_path("demo.yaml")))
    ids = {c.id for c in plan.cells}
    assert bundled(plan, plan.cells, below_min=30) == ids  # demo cells: seconds by the cost table
    assert bundled(plan, plan.cells, below_min=0) == set()
    one = plan.cells[0]
    plan.configs[one.id]["model"]["arch"] = "not_in_the_table"  # unknown cost: its own process
    plan.configs[plan.cells[1].id]["trainer"]["devices"] = 2  # several devices: its own process (DDP)
    assert bundled(plan, plan.cells, below_min=30) == ids - {one.id, plan.cells[1].id}
    assert LocalExecutor.from_options({"slots": 2}).bundle


def test_no_bundle_and_bundle_below_reach_the_executor_of_that_run_only(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`mkf sweep run --no-bundle` / `--bundle-below MIN` are the executor's options for that run: they must not
    stay behind in the process (they once did, as environment variables) and unbundle every later sweep."""
    import yaml

    from configs import config_path
    from launch.cli import main
    from launch.execution.base import SweepOutcome
    from launch.execution.local import LocalExecutor

    seen: list[tuple[bool, float]] = []

    def record(self: LocalExecutor, plan: Any, cells: Any) -> SweepOutcome:  # what would run, without training
        seen.append((self.bundle, self.bundle_below_min))
        return SweepOutcome({c.id: "finished" for c in cells})

    monkeypatch.setattr(LocalExecutor, "run", record)
    sweep = yaml.safe_load(config_path("demo.yaml").read_text())
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump({**sweep, "output_dir": str(tmp_path / "out")}))
    run = ["sweep", "run", str(path), "--no-progress"]
    assert main([*run, "--no-bundle"]) == 0
    assert main([*run, "--bundle-below", "5"]) == 0
    assert main(run) == 0
    assert seen == [(False, 30.0), (True, 5.0), (True, 30.0)]
