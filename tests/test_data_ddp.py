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
from datamodules.shards.writer import WriteOptions, write_dataset

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


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_lightning_ddp_val_after_training_equals_a_one_rank_evaluation(uneven_shards: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Train with 2 gloo ranks through ``fit`` (validation inside the fit loop, each rank reading its own share of
    the uneven val shards), then evaluate the same weights on 1 rank, with Lightning and with a plain loop.

    The model is trained so that top-1 is neither 0 nor 1 (12 classes on 6 photos: at most about half are
    separable): on an untrained model both sides are 0 and agree whatever the sharding does. A val sample read by
    both ranks or by neither changes the 2-rank top-1 by 1/12.
    """
    import lightning as L

    from pipeline.config import ModelConfig, OptimConfig
    from pipeline.training.classifier import ImageClassifier

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.manual_seed(0)
    model = ImageClassifier(ModelConfig(arch="convnext_demo"), OptimConfig(lr=0.004, warmup_steps=2), num_classes=12)

    def datamodule():  # type: ignore[no-untyped-def]
        return build_datamodule("image_folder", loader="wds", shards=str(uneven_shards), split=None,
                                image_size=32, batch_size=2, num_workers=1)

    def trainer(devices: int, epochs: int = 1) -> L.Trainer:
        return L.Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                         max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, use_distributed_sampler=False)

    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    fit = trainer(2, epochs=EPOCHS)
    fit.fit(model, datamodule=datamodule())  # ddp_spawn hands rank 0's weights and metrics back to this process
    assert any(not torch.equal(before[k], v) for k, v in model.model.state_dict().items()), "trained weights back"
    two = float(fit.callback_metrics["val/top1"])
    one = trainer(1).validate(model, datamodule=datamodule(), verbose=False)[0]["val/top1"]
    dm = datamodule()
    dm.setup()
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for batch in dm.val_dataloader():
            images, labels = dm.on_after_batch_transfer(dm.on_before_batch_transfer(batch, 0), 0)
            correct += int((model(images).argmax(1) == labels).sum())
            seen += len(labels)
    assert seen == sum(VAL_SIZES)
    plain = correct / seen
    assert 0.0 < plain < 1.0, f"top-1 {plain}: train longer or differently, the comparison must be able to fail"
    assert two == pytest.approx(plain, abs=1e-6) and one == pytest.approx(plain, abs=1e-6), (two, one, plain)


EPOCHS = 3
