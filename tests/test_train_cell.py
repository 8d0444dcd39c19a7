"""`mkf train`: what a finished run directory holds, skipping finished cells, resuming killed ones, W&B offline."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from pipeline.config import dump_yaml, to_dict
from pipeline.train import read_result, train_cell
from tests.conftest import cell_config

pytestmark = pytest.mark.usefixtures("fashion_root")
REPO = Path(__file__).resolve().parents[1]


def test_run_directory_has_everything_a_user_needs(tmp_path: Path) -> None:
    run = tmp_path / "cell"
    result = train_cell(cell_config(run))
    for name in ("config.yaml", "split.json", "metrics.csv", "checkpoints/last.ckpt", "checkpoints/best.ckpt",
                 "weights.safetensors", "result.json"):
        assert (run / name).is_file(), name
    saved = json.loads((run / "result.json").read_text())
    assert saved == result
    assert 0.0 <= result["top1"] <= 1.0 and result["top1"] > 0.4, "5-class Fashion-MNIST should beat chance"
    assert result["steps"] == 8 and result["epochs"] == 1  # 512 samples / batch 64, one epoch
    assert result["frozen_params"] == 0 and result["trainable_params"] > 100_000
    assert result["class_mapping"] == {"T-shirt/top": 0, "Pullover": 1, "Coat": 2, "Shirt": 3, "Ankle boot": 4}
    assert result["wall_time_s"] > 0
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("val/top1") for r in rows) and any(r.get("train/loss") for r in rows)
    # the final weights are a plain timm state_dict: a stock model loads them strictly
    model = timm.create_model("convnext_demo", num_classes=5)
    model.load_state_dict(load_file(str(run / "weights.safetensors")))
    assert torch.isfinite(model(torch.zeros(1, 3, 32, 32))).all()


def test_finished_cell_is_not_trained_again(tmp_path: Path) -> None:
    run = tmp_path / "cell"
    first = train_cell(cell_config(run))
    stamp = (run / "result.json").stat().st_mtime_ns
    assert train_cell(cell_config(run)) == first
    assert (run / "result.json").stat().st_mtime_ns == stamp


def test_killed_cell_resumes_mid_epoch_and_ends_like_an_uninterrupted_run(tmp_path: Path) -> None:
    """SIGKILL mid-training, rerun the same command: it continues from last.ckpt (mid-epoch: same data order,
    same RNG) and ends with exactly the weights of a run that was never interrupted."""
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def command(name: str) -> list[str]:
        cfg = cell_config(tmp_path / name, data={"max_train_samples": 2048},
                          trainer={"max_epochs": 3, "checkpoint_every_n_steps": 5})
        dump_yaml(to_dict(cfg), tmp_path / f"{name}.yaml")
        return [sys.executable, "-m", "launch.cli", "train", "--config", str(tmp_path / f"{name}.yaml")]

    subprocess.run(command("reference"), cwd=REPO, env=env, check=True, capture_output=True)
    run = tmp_path / "cell"
    cmd = command("cell")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "training ended before it could be killed"
    assert read_result(run) is None
    step_at_kill = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 0 < step_at_kill < 96 and step_at_kill % 32 != 0, "the kill must land mid-epoch"
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
    result = read_result(run)
    assert result is not None and result["resumed"] is True
    assert result["steps"] == 96  # 2048 / 64 x 3 epochs: the resumed run finishes the same schedule
    assert len(list((run / "logs").glob("version_*/metrics.csv"))) == 2  # both attempts' logs are kept
    reference, resumed_weights = load_file(str(tmp_path / "reference" / "weights.safetensors")), load_file(
        str(run / "weights.safetensors"))
    for key, value in reference.items():
        assert torch.equal(value, resumed_weights[key]), f"{key} differs from the uninterrupted run"
    assert result["top1"] == read_result(tmp_path / "reference")["top1"]  # type: ignore[index]


def test_wandb_offline_run_never_stores_the_api_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "cell"
    train_cell(cell_config(run, wandb={"enabled": True, "project": "mkf-test", "tags": ["unit"]},
                           labels={"cell_id": "abc123def456"}))
    offline = list((run / "wandb").glob("offline-run-*-abc123def456"))
    assert len(offline) == 1, "one offline W&B run named after the cell id"
    for path in run.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"API key leaked into {path}"
