"""The webdataset datamodule on real shards: batches, per-epoch order, bad samples, errors before training."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from test_data_writer import photo_tree

from datamodules import build_datamodule
from datamodules.errors import UserError
from datamodules.loaders.wds import WebDatasetDataModule
from datamodules.shards.writer import WriteOptions, write_dataset


def _shards(tmp_path: Path, shard_size: int = 5, split: str = "none", **tree) -> Path:  # type: ignore[no-untyped-def]
    photo_tree(tmp_path / "src", **tree)
    write_dataset(str(tmp_path / "src"), tmp_path / "wds", WriteOptions(shard_size=shard_size), split=split,
                  progress=False)
    return tmp_path / "wds"


def _labels_of_epoch(dm: WebDatasetDataModule, epoch: int) -> list[int]:
    loader = dm.train_dataloader()
    dm.train_set.set_context(epoch, 0, 1)  # type: ignore[union-attr]
    loader._context = lambda: (epoch, 0, 1)  # type: ignore[attr-defined]
    return [y for _, labels, _ in loader for y in labels.tolist()]


def test_batches_and_deterministic_per_epoch_order(tmp_path: Path) -> None:
    root = _shards(tmp_path, classes=4, train=8, val=3)
    kwargs = dict(loader="wds", shards=str(root), split=None, half="B", image_size=24, batch_size=4,
                  num_workers=2, shuffle_buffer=8)
    dm = build_datamodule("image_folder", **kwargs)
    dm.setup()
    assert isinstance(dm, WebDatasetDataModule) and dm.num_classes == 4
    x, y, skipped = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 24, 24) and x.dtype == torch.uint8 and len(skipped) == 0
    xn, _ = dm.on_after_batch_transfer(dm.on_before_batch_transfer((x, y, ()), 0), 0)
    assert xn.dtype == torch.float32 and -3 < float(xn.min()) and float(xn.max()) < 3
    assert len(dm.train_dataloader()) == 32 // 4
    epoch0, epoch1 = _labels_of_epoch(dm, 0), _labels_of_epoch(dm, 1)
    assert len(epoch0) == len(epoch1) == 32
    assert epoch0 != epoch1  # a new order every epoch
    again = build_datamodule("image_folder", **kwargs)
    again.setup()
    assert _labels_of_epoch(again, 1) == epoch1  # a resumed run at epoch 1 replays epoch 1, not epoch 0
    val = [y for _, labels, _ in dm.val_dataloader() for y in labels.tolist()]
    assert sorted(val) == sorted([c for c in range(4) for _ in range(3)])
    assert dm.describe()["loader"] == "wds" and dm.describe()["samples_skipped"] == 0


def test_mid_epoch_resume_continues_the_epoch(tmp_path: Path) -> None:
    root = _shards(tmp_path, classes=4, train=8, val=1)
    kwargs = dict(loader="wds", shards=str(root), split=None, half="B", image_size=16, batch_size=4,
                  num_workers=2, shuffle_buffer=8)

    def epoch_batches(position: tuple[int, int] | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        dm = build_datamodule("image_folder", **kwargs)
        dm.setup()
        if position is not None:
            dm.position.set(*position)  # what pipeline.training.resume.TrainingState does on restore
        loader = dm.train_dataloader()
        loader._context = lambda: (0, 0, 1)  # type: ignore[attr-defined]  # the restored position names the epoch
        return [(x, y) for x, y, _ in loader]

    dm = build_datamodule("image_folder", **kwargs)
    dm.setup()
    loader = dm.train_dataloader()
    loader._context = lambda: (1, 0, 1)  # type: ignore[attr-defined]
    uninterrupted = [(x, y) for x, y, _ in loader]
    resumed = epoch_batches((1, 3))
    assert len(uninterrupted) == 8 and len(resumed) == 5
    for (x, y), (rx, ry) in zip(uninterrupted[3:], resumed, strict=True):
        assert torch.equal(y, ry) and torch.equal(x, rx)  # same samples, same crops
    assert len(epoch_batches((1, 8))) == 0


def test_split_specific_shards_pick_the_half(tmp_path: Path) -> None:
    root = _shards(tmp_path, split="random_halves:0", classes=4, train=4, val=1)
    dm = build_datamodule("image_folder", loader="wds", shards=str(root), split={"kind": "random_halves", "seed": 0},
                          half="A", image_size=16, batch_size=2, num_workers=0)
    dm.setup()
    assert dm.set_name == "A" and dm.train_set.total == 8  # type: ignore[union-attr]
    with pytest.raises(UserError, match="written for split"):
        build_datamodule("image_folder", loader="wds", shards=str(root), split={"kind": "random_halves", "seed": 1},
                         half="A")


def _bad_shard(path: Path, good_jpeg: bytes) -> int:
    """A shard with every kind of bad sample plus two good ones; returns the number of bad samples."""
    members = {
        "good_1.jpg": good_jpeg, "good_1.cls": b"0",
        "truncated.jpg": good_jpeg[: len(good_jpeg) // 3], "truncated.cls": b"0",
        "empty.jpg": b"", "empty.cls": b"1",
        "notimage.txt": b"hello", "notimage.cls": b"1",
        "nolabel.jpg": good_jpeg,
        "unknown.xyz": good_jpeg, "unknown.cls": b"0",
        "badlabel.jpg": good_jpeg, "badlabel.cls": b"zero",
        "good_2.jpg": good_jpeg, "good_2.cls": b"1",
    }
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return 6


def test_bad_samples_are_skipped_counted_and_reach_result_json(tmp_path: Path, caplog) -> None:
    from conftest import cell_config

    from pipeline.training.train import train_cell

    root = _shards(tmp_path, shard_size=4, classes=2, train=4, val=2)
    good = next((tmp_path / "src" / "train").glob("*/*.JPEG")).read_bytes()
    bad = _bad_shard(root / "all" / "val-bad.tar", good)
    index = json.loads((root / "index.json").read_text())
    index["sets"]["all"]["val"]["files"].append({"name": "all/val-bad.tar", "samples": 2 + bad, "bytes": 0})
    (root / "index.json").write_text(json.dumps(index))

    dm = build_datamodule("image_folder", loader="wds", shards=str(root), image_size=16, batch_size=3,
                          num_workers=0, split=None)
    dm.setup()
    labels = []
    for batch in dm.val_dataloader():
        labels += dm.on_before_batch_transfer(batch, 0)[1].tolist()
    assert len(labels) == 4 + 2 and dm.samples_skipped == bad  # type: ignore[attr-defined]
    assert "val-bad.tar:truncated" in caplog.text and "val-bad.tar:nolabel" in caplog.text

    cfg = cell_config(tmp_path / "run", data={"loader": "wds", "shards": str(root), "split": None,
                                              "max_train_samples": None, "max_val_samples": None,
                                              "image_size": 32, "batch_size": 2, "num_workers": 1})
    result = train_cell(cfg)
    assert result["samples_skipped"] == bad and result["loader"] == "wds"
    assert json.loads((tmp_path / "run" / "result.json").read_text())["samples_skipped"] == bad


def test_missing_shard_or_bad_index_fails_before_training(tmp_path: Path) -> None:
    root = _shards(tmp_path, classes=2, train=2, val=1)
    (root / "all" / "val-000000.tar").unlink()
    dm = build_datamodule("image_folder", loader="wds", shards=str(root))
    with pytest.raises(UserError, match="val-000000.tar .*missing"):
        dm.setup()
    (root / "index.json").write_text("[]")
    with pytest.raises(UserError, match="not a valid index"):
        build_datamodule("image_folder", loader="wds", shards=str(root))
    with pytest.raises(UserError, match="does not exist"):
        build_datamodule("image_folder", loader="wds", shards=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="unknown data.loader"):
        build_datamodule("image_folder", loader="tfrecord")
