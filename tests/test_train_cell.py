"""`mkf train`: what a finished run directory holds, skipping finished cells, resuming killed ones, W&B offline."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from pipeline.config import dump_yaml, to_dict
from pipeline.training.train import read_result, train_cell
from tests.conftest import cell_config, kill_once_checkpointed

pytestmark = pytest.mark.usefixtures("fashion_root")
REPO = Path(__file__).resolve().parents[1]


def test_run_directory_has_everything_a_user_needs(tmp_path: Path) -> None:
    run = tmp_path / "cell"
    result = train_cell(cell_config(run))
    for name in ("config.yaml", "split.json", "metrics.csv", "weights.safetensors", "result.json", "evidence.json"):
        assert (run / name).is_file(), name
    assert not (run / "checkpoints").exists(), "a finished cell keeps no optimizer checkpoints by default"
    kept = tmp_path / "kept"
    train_cell(cell_config(kept, trainer={"keep_checkpoints": True}))
    assert (kept / "checkpoints" / "last.ckpt").is_file() and (kept / "checkpoints" / "best.ckpt").is_file()
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
    last = run / "checkpoints" / "last.ckpt"
    kill_once_checkpointed(cmd, last, env)
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
    # the killed attempt kept its cost up to a checkpoint (written as each checkpoint is): both attempts add up
    # to every batch of the run; the killed one's batches after its record (at most one checkpoint interval,
    # spent and lost) are the only ones that can be counted twice
    attempts = json.loads((run / "cost.json").read_text())["attempts"]
    assert [a["status"] for a in attempts] == ["running", "finished"]  # killed: it never said how it ended
    assert result["cost"]["attempts"] == 2
    assert 96 * 64 <= result["cost"]["train_images"] <= (96 + 5) * 64


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


# ---- GPU-path defects, tested on CPU (only the GPU itself is mocked) -----------------------------------------
def test_resume_picks_the_furthest_checkpoint_not_the_newest_file(tmp_path: Path) -> None:
    from pipeline.training.train import resume_checkpoint

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    for name, step in (("last.ckpt", 40), ("preempt.ckpt", 25)):
        torch.save({"state_dict": {}, "loops": {}, "global_step": step}, ckpts / name)
    os.utime(ckpts / "last.ckpt", (1, 1))  # an NFS client can see the further checkpoint as older
    (ckpts / "torn.ckpt").write_bytes(b"not a checkpoint")
    assert resume_checkpoint(tmp_path) == ckpts / "last.ckpt"


class _FakeCuda:
    """Four GPUs whose generator states are distinguishable; only torch.cuda's RNG calls are replaced."""

    def __init__(self, count: int, current: int) -> None:
        self.states = {i: torch.full((8,), i, dtype=torch.uint8) for i in range(count)}
        self.current, self.count = current, count

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=0: self.states[device].clone())

        def set_state(state: torch.Tensor, device: int = 0) -> None:
            if device >= self.count:
                raise IndexError(device)
            self.states[device] = state.clone()

        monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)


def test_each_rank_saves_and_restores_its_own_cuda_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    from datamodules.loaders.samplers import ResumePosition
    from pipeline.training import resume

    gpus = _FakeCuda(count=4, current=2)  # local rank 2 of a 4-GPU node
    gpus.install(monkeypatch)
    state = resume.TrainingState(ResumePosition()).state_dict()
    assert len(state["cuda_rng"]) == 1 and int(state["cuda_rng"][0][0]) == 2, "only this rank's device"
    # rank 0 writes the checkpoint with every rank's state (gathered); rank 2 must get its own back
    ranks = [{**state, "cuda_rng": [torch.full((8,), 10 + r, dtype=torch.uint8)]} for r in range(4)]
    monkeypatch.setattr(resume, "_rank", lambda: 2)
    resume.TrainingState(ResumePosition()).load_state_dict({**state, "ranks": ranks})
    assert int(gpus.states[2][0]) == 12 and int(gpus.states[0][0]) == 0, "rank 2 restored its own stream only"
    # resumed on a node with one GPU, from an old checkpoint holding four devices' states: no IndexError
    one = _FakeCuda(count=1, current=0)
    one.install(monkeypatch)
    monkeypatch.setattr(resume, "_rank", lambda: 0)
    old = {**state, "cuda_rng": [torch.full((8,), 20 + d, dtype=torch.uint8) for d in range(4)]}
    old.pop("ranks")
    resume.TrainingState(ResumePosition()).load_state_dict(old)
    assert int(one.states[0][0]) == 20


def test_slurm_defaults_loader_workers_and_turns_the_progress_bar_off(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    from pipeline.training.train import resolve_num_workers, under_slurm

    folder = cell_config(tmp_path, data={"dataset": "image_folder", "loader": "folder", "root": "/x"})
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert resolve_num_workers(folder) == 0 and not under_slurm()
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    assert resolve_num_workers(folder) == 7
    assert resolve_num_workers(cell_config(tmp_path)) == 0, "Fashion-MNIST batches are tensors: no workers needed"
    assert resolve_num_workers(cell_config(tmp_path, data={"num_workers": 2})) == 2, "an explicit value wins"
    assert under_slurm()  # pytest's stderr is not a terminal, as a batch job's is not


def test_offline_wandb_clean_up_runs_on_rank_zero_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.training.loggers import make_loggers

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "cell"
    earlier = run / "wandb" / "offline-run-20260101_000000-cid42"
    earlier.mkdir(parents=True)
    monkeypatch.setenv("RANK", "1")  # a rank > 0 of a DDP job: its W&B experiment is a dummy with a truthy id
    make_loggers(cell_config(run, wandb={"enabled": True}, labels={"cell_id": "cid42"}), run)
    assert earlier.is_dir(), "a rank other than 0 deleted rank 0's offline run"


def test_bf16_true_precision_trains_with_the_normalisation_hooks(tmp_path: Path) -> None:
    result = train_cell(cell_config(tmp_path / "cell", trainer={"precision": "bf16-true"}))
    assert result["steps"] == 8 and result["top1"] is not None


def test_a_run_resumes_after_toggling_compile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Epoch 1 without compile, then the same cell with `model.compile: true` resumes from its checkpoint."""
    original = torch.nn.Module.compile
    # TorchDynamo's tracing and guards without inductor's code generation (minutes on this CPU)
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: original(self, backend="eager"))
    run = tmp_path / "cell"
    train_cell(cell_config(run, trainer={"max_epochs": 1, "keep_checkpoints": True}))
    (run / "result.json").unlink()  # pretend the cell was stopped after epoch 1 of 2 (its last.ckpt kept)
    result = train_cell(cell_config(run, model={"arch": "convnext_demo", "compile": True},
                                    trainer={"max_epochs": 2}))
    assert result["resumed"] is True and result["steps"] == 16
