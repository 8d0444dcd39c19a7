"""Two real CPU ranks (gloo): equal batches per rank on deliberately uneven shards, exact validation."""

from __future__ import annotations

import io
import json
import os
import tarfile
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_data_writer import photo_tree

from datamodules import build_datamodule
from datamodules.shard_writer import WriteOptions, write_dataset

TRAIN_SIZES = [1, 2, 13, 4, 16]  # 36 samples, as uneven as it gets
VAL_SIZES = [1, 5, 6]  # 12 samples, fewer shards than 2 ranks x 2 workers


def _reshard(root: Path, part: str, sizes: list[int]) -> None:
    """Rewrite one part's shards with the given (uneven) sizes and update the index."""
    index = json.loads((root / "index.json").read_text())
    entry = index["sets"]["all"][part]
    members: list[list[tuple[str, bytes]]] = []
    for f in entry["files"]:
        with tarfile.open(root / f["name"]) as tar:
            current: dict[str, list[tuple[str, bytes]]] = {}
            for m in tar:
                current.setdefault(m.name.split(".")[0], []).append((m.name, tar.extractfile(m).read()))  # type: ignore[union-attr]
            members += current.values()
        (root / f["name"]).unlink()
    assert sum(sizes) == len(members)
    files, start = [], 0
    for k, n in enumerate(sizes):
        name = f"all/{part}-uneven-{k}.tar"
        with tarfile.open(root / name, "w") as tar:
            for sample in members[start:start + n]:
                for member_name, data in sample:
                    info = tarfile.TarInfo(member_name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        files.append({"name": name, "samples": n, "bytes": (root / name).stat().st_size})
        start += n
    entry["files"] = files
    (root / "index.json").write_text(json.dumps(index))


@pytest.fixture(scope="module")
def uneven_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ddp")
    photo_tree(tmp / "src", classes=12, train=3, val=1, size=(40, 32))  # one val image per class: label = identity
    write_dataset(str(tmp / "src"), tmp / "wds", WriteOptions(shard_size=5), progress=False)
    _reshard(tmp / "wds", "train", TRAIN_SIZES)
    _reshard(tmp / "wds", "val", VAL_SIZES)
    return tmp / "wds"


def _rank_main(rank: int, world: int, root: str, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    dm = build_datamodule("image_folder", loader="wds", shards=root, split=None, image_size=16, batch_size=4,
                          num_workers=2, shuffle_buffer=4)
    dm.setup()
    train = dm.train_dataloader()
    record: dict[str, list] = {"batches": [], "labels": [], "val": []}
    for _epoch in range(2):
        n, labels = 0, []
        for _, y, _ in train:
            step = torch.ones(1)
            dist.all_reduce(step)  # what DDP does every step: a rank that ran dry would hang here
            n += 1
            labels += y.tolist()
        record["batches"].append(n)
        record["labels"].append(labels)
    record["len"] = len(train)
    record["val"] = [y for _, labels, _ in dm.val_dataloader() for y in labels.tolist()]
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(180)
def test_two_ranks_get_equal_batches_and_every_val_sample_once(uneven_shards: Path, tmp_path: Path) -> None:
    mp.spawn(_rank_main, args=(2, str(uneven_shards), _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    expected = sum(TRAIN_SIZES) // (2 * 4)
    assert r0["batches"] == r1["batches"] == [expected, expected] and r0["len"] == r1["len"] == expected
    assert r0["labels"][0] != r0["labels"][1]  # a new order each epoch
    assert r0["labels"][0] != r1["labels"][0]  # ranks read different data
    assert sorted(r0["val"] + r1["val"]) == list(range(12))  # exactly once across ranks
    assert r0["val"] and r1["val"]


@pytest.mark.timeout(240)
def test_lightning_ddp_two_rank_val_equals_one_rank(uneven_shards: Path, monkeypatch) -> None:
    import lightning as L

    from pipeline.classifier import ImageClassifier
    from pipeline.config import ModelConfig, OptimConfig

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.manual_seed(0)
    model = ImageClassifier(ModelConfig(arch="convnext_demo"), OptimConfig(), num_classes=12)

    def datamodule():  # type: ignore[no-untyped-def]
        return build_datamodule("image_folder", loader="wds", shards=str(uneven_shards), split=None,
                                image_size=32, batch_size=2, num_workers=1)

    def trainer(devices: int) -> L.Trainer:
        return L.Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                         max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)

    one = trainer(1).validate(model, datamodule=datamodule(), verbose=False)[0]
    two = trainer(2).validate(model, datamodule=datamodule(), verbose=False)[0]
    assert two["val/top1"] == one["val/top1"] and two["val/top5"] == one["val/top5"]
