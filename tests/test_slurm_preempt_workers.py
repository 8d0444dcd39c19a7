"""A real preemption with loader workers on the real test cluster, for every loader: in-memory Fashion-MNIST, wds
shards and FFCV files, each read by 2 worker processes (FFCV: threads) with W&B running (offline).

`scontrol requeue` at a random moment after the first periodic checkpoint: Slurm sends TERM to every process of
the step (the training process, its loader workers, W&B's service), KILL after KillWait. The cell must checkpoint
``preempt.ckpt`` between optimizer steps, record the attempt as a preemption (no failure: the profile allows
none), resume from that checkpoint and end with the weights of an uninterrupted run, bit for bit.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from launch.planning.planner import plan_sweep
from launch.planning.schema import load_sweep
from pipeline.results.run_folder import read_attempts, read_result
from tests.conftest import REPO
from tests.test_slurm import (
    all_finished,
    cell_job,
    job_state,
    release_requeued,
    submit,
    wait_for,
    write_profiles,
    write_sweep,
)

pytestmark = [pytest.mark.usefixtures("slurm_cluster", "fashion_root"), pytest.mark.slow]

SPLIT = {"kind": "random_halves", "seed": 0}


def _write_shards(tmp_path: Path, fmt: str) -> Path:
    out = tmp_path / f"fashion-{fmt}"
    subprocess.run([sys.executable, "-m", "launch.cli", "data", "write", "--source", "fashion_mnist", "--format", fmt,
                    "--out", str(out), "--split", "random_halves:0", "--shard-size", "200", "--max-per-class", "400",
                    "--no-progress"], cwd=REPO, check=True, capture_output=True)
    return out


def _data(tmp_path: Path, loader: str) -> dict[str, Any]:
    common = {"dataset": "fashion_mnist", "split": SPLIT, "batch_size": 32, "num_workers": 2}
    if loader == "memory":
        return {**common, "max_train_samples": 2000, "max_val_samples": 128}
    return {**common, "max_val_samples": 128, "loader": loader, "shards": str(_write_shards(tmp_path, loader))}


def _first_checkpoint(cell: Any, job: str) -> bool:
    assert job_state(job) not in ("FAILED", "CANCELLED", "TIMEOUT"), f"job {job} died before its first checkpoint"
    return (Path(cell.run_dir) / "checkpoints" / "last.ckpt").exists()


# the cluster run plus an uninterrupted reference run: FFCV's took 5 min each on this 2-core machine under load
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("loader", ["memory", "wds", "ffcv"])
def test_term_requeue_with_loader_workers_is_a_preemption_and_resumes_bit_identical(
        tmp_path: Path, loader: str, request: pytest.FixtureRequest) -> None:
    if loader == "ffcv":
        request.getfixturevalue("ffcv_installed")
    base = yaml.safe_load(write_profiles(tmp_path).read_text())["test"]
    profiles = write_profiles(tmp_path, strict={**base, "max_restarts": 0})
    sweep = write_sweep(
        tmp_path, profile="strict", data=_data(tmp_path, loader),
        # long enough that the cell is still training when the requeue lands (2,000 samples x 4 epochs: ~250 steps)
        train={"trainer": {"max_epochs": 4, "progress_bar": False, "checkpoint_every_n_steps": 5,
                           "log_every_n_steps": 5}},
        wandb={"enabled": True, "project": "mkf-test"},
    )
    submit(sweep, profiles)
    plan = plan_sweep(load_sweep(sweep))
    cell = plan.cells[0]
    job = cell_job(plan.output_dir, cell.id)
    wait_for(lambda: _first_checkpoint(cell, job), 240, "the first checkpoint")
    time.sleep(random.Random(os.getpid()).uniform(0.0, 2.0))  # a random step of the run
    assert read_result(cell.run_dir) is None, "the cell finished before it could be preempted: train it longer"
    subprocess.run(["scontrol", "requeue", job], check=True)  # TERM to every process of the step, then KILL
    release_requeued(job)
    wait_for(all_finished(sweep), 300, "the requeued cell to finish")
    result = read_result(cell.run_dir)
    attempts = read_attempts(cell.run_dir)
    (tmp_path / "attempts_record.json").write_text(json.dumps(attempts, indent=2))
    print(f"\n{loader} attempts.json: {json.dumps(attempts)}")
    assert attempts["preemptions"] == 1 and attempts["failures"] == 0, attempts
    assert [h["outcome"] for h in attempts["history"]] == ["started", "preempted", "started", "finished"], attempts
    assert any(h.get("signal") == "SIGTERM" for h in attempts["history"]), attempts
    assert result is not None and result["resumed_from"] == "preempt.ckpt", result
    reference = tmp_path / "reference"
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline")
    subprocess.run([sys.executable, "-m", "launch.cli", "train", "--config", cell.config_path, "--run-dir",
                    str(reference)], cwd=REPO, env=env, check=True, capture_output=True)
    ref_w = load_file(str(reference / "weights.safetensors"))
    w = load_file(str(Path(cell.run_dir) / "weights.safetensors"))
    assert all(torch.equal(ref_w[k], w[k]) for k in ref_w), "resumed weights differ from the uninterrupted run"
    assert result["top1"] == read_result(reference)["top1"]  # type: ignore[index]
