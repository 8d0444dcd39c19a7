"""FFCV .beton files under two real CPU ranks (gloo): equal batches, disjoint train samples, exact val, resume order;
and a cell reading FFCV data with 2 decoding threads, killed mid-epoch and rerun, ends bit-identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from test_data_ddp import _free_port
from test_data_writer import photo_tree

from datamodules import build_datamodule
from launch.cli import main
from pipeline.config import dump_yaml, to_dict
from pipeline.results.run_folder import read_result
from tests.conftest import REPO, cell_config, kill_once_checkpointed

pytestmark = pytest.mark.usefixtures("ffcv_installed")

CLASSES = 26  # one train and one val image per class: the label identifies the sample
BATCH = 4


@pytest.fixture(scope="module")
def beton(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ffcv_ddp")
    photo_tree(tmp / "src", classes=CLASSES, train=1, val=1, size=(40, 32))
    assert main(["data", "write", "--source", str(tmp / "src"), "--format", "ffcv", "--out", str(tmp / "ffcv"),
                 "--workers", "1", "--no-progress", "--max-resolution", "32"]) == 0
    return tmp / "ffcv"


def _fake_trainer(rank: int, world: int, epoch: int) -> SimpleNamespace:
    """What the datamodule reads from a Lightning trainer: rank, world size, device and the (resumed) epoch."""
    return SimpleNamespace(global_rank=rank, world_size=world, current_epoch=epoch,
                           strategy=SimpleNamespace(root_device=torch.device("cpu")))


def _labels(dm, loader) -> tuple[int, list[int]]:  # type: ignore[no-untyped-def]
    n, labels = 0, []
    for batch in loader:
        step = torch.ones(1)
        dist.all_reduce(step)  # what DDP does every step: a rank that ran dry would hang here
        n += 1
        labels += dm.on_before_batch_transfer(batch, 0)[1].tolist()
    return n, labels


def _rank_main(rank: int, world: int, root: str, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=120))

    def datamodule(epoch: int):  # type: ignore[no-untyped-def]
        dm = build_datamodule("image_folder", loader="ffcv", shards=root, split=None, image_size=16,
                              batch_size=BATCH, num_workers=1)
        dm.trainer = _fake_trainer(rank, world, epoch)
        dm.setup()
        return dm

    dm = datamodule(0)
    train = dm.train_dataloader()
    record: dict[str, list] = {"batches": [], "labels": []}
    for epoch in range(3):  # the trainer advances its epoch between passes
        dm.trainer.current_epoch = epoch
        n, labels = _labels(dm, train)
        record["batches"].append(n)
        record["labels"].append(labels)
    record["len"] = len(train)
    record["val"] = _labels(dm, dm.val_dataloader())[1]
    resumed = datamodule(2)  # a run resumed at epoch 2: fresh process state, trainer already at epoch 2
    record["resumed"] = _labels(resumed, resumed.train_dataloader())[1]
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.timeout(240)
def test_ffcv_two_ranks_equal_disjoint_exact_and_resumed_order(beton: Path, tmp_path: Path, monkeypatch) -> None:
    """DDP on .beton files: no rank hangs waiting for another, no sample is trained twice in an epoch, val
    metrics count every sample once, and a resumed run continues with its epoch's shuffle, not epoch 0's."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(_rank_main, args=(2, str(beton), _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    expected = CLASSES // 2 // BATCH  # 13 per rank -> 3 full batches, drop_last
    assert r0["batches"] == r1["batches"] == [expected] * 3 and r0["len"] == r1["len"] == expected
    for epoch in range(3):
        a, b = r0["labels"][epoch], r1["labels"][epoch]
        assert len(a) == len(b) == expected * BATCH
        assert len(set(a)) == len(a) and len(set(b)) == len(b) and not set(a) & set(b)  # disjoint within an epoch
        assert set(a) | set(b) <= set(range(CLASSES))
        assert CLASSES - len(a + b) <= 2 * BATCH - 1  # a permutation: at most world x batch - 1 left out
    assert r0["labels"][0] != r0["labels"][1] != r0["labels"][2]  # a new order each epoch
    assert r0["resumed"] == r0["labels"][2] and r1["resumed"] == r1["labels"][2]  # resumed epoch = fresh run's
    assert r0["resumed"] != r0["labels"][0]
    assert sorted(r0["val"] + r1["val"]) == list(range(CLASSES))  # every val sample exactly once across ranks
    assert r0["val"] and r1["val"]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("fashion_root")
def test_killed_ffcv_cell_resumes_mid_epoch_and_ends_like_an_uninterrupted_run(tmp_path: Path) -> None:
    """SIGKILL after the first periodic checkpoint (mid-epoch), rerun: the resumed epoch trains the remaining
    batches with the crops and flips the uninterrupted run drew (FFCV's own draws are per thread and seeded from
    OS entropy, so no two FFCV runs agreed), and the final weights are the uninterrupted run's, bit for bit."""
    beton = tmp_path / "ffcv"
    subprocess.run([sys.executable, "-m", "launch.cli", "data", "write", "--source", "fashion_mnist", "--format",
                    "ffcv", "--out", str(beton), "--split", "random_halves:0", "--max-per-class", "100",
                    "--no-progress"], cwd=REPO, check=True, capture_output=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def command(name: str) -> list[str]:
        cfg = cell_config(tmp_path / name, data={"loader": "ffcv", "shards": str(beton), "num_workers": 2,
                                                 "batch_size": 32, "max_train_samples": 256, "max_val_samples": 64},
                          trainer={"max_epochs": 2, "checkpoint_every_n_steps": 3})
        dump_yaml(to_dict(cfg), tmp_path / f"{name}.yaml")
        return [sys.executable, "-m", "launch.cli", "train", "--config", str(tmp_path / f"{name}.yaml")]

    subprocess.run(command("reference"), cwd=REPO, env=env, check=True, capture_output=True)
    run, cmd = tmp_path / "cell", command("cell")
    last = run / "checkpoints" / "last.ckpt"
    kill_once_checkpointed(cmd, last, env)
    assert read_result(run) is None
    step_at_kill = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 0 < step_at_kill < 16 and step_at_kill % 8 != 0, "the kill must land mid-epoch"
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
    result, reference = read_result(run), read_result(tmp_path / "reference")
    assert result is not None and result["resumed"] is True and reference is not None
    assert result["steps"] == reference["steps"] == 16  # 256 / 32 x 2 epochs
    want, got = (load_file(str(d / "weights.safetensors")) for d in (tmp_path / "reference", run))
    for key, value in want.items():
        assert torch.equal(value, got[key]), f"{key} differs from the uninterrupted run"
    assert result["top1"] == reference["top1"]
