"""FFCV .beton files on the CPU path: writer fields, train/val batches, exact per-rank val indices, verify."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_data_writer import photo_tree

from datamodules import build_datamodule
from datamodules.shards.verify import verify_dataset
from datamodules.shards.writer import WriteOptions, write_dataset

pytestmark = pytest.mark.usefixtures("ffcv_installed")


def test_ffcv_write_read_split_and_exact_val_indices(tmp_path: Path) -> None:
    photo_tree(tmp_path / "src", classes=4, train=4, val=3, size=(80, 60))
    index = write_dataset(str(tmp_path / "src"), tmp_path / "ffcv",
                          WriteOptions(format="ffcv", max_resolution=64, jpeg_quality=90, compress_probability=1.0),
                          split="random_halves:0", progress=False)
    assert index["sets"]["A"]["train"]["samples"] == 8 and index["sets"]["B"]["val"]["samples"] == 6
    assert verify_dataset(tmp_path / "ffcv")["total"] == 28
    dm = build_datamodule("image_folder", loader="ffcv", shards=str(tmp_path / "ffcv"),
                          split={"kind": "random_halves", "seed": 0}, half="B", image_size=32, batch_size=4,
                          num_workers=1)
    dm.setup()
    train = dm.train_dataloader()
    assert len(train) == 2
    x, y = dm.on_before_batch_transfer(next(iter(train)), 0)
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8 and x.is_contiguous(memory_format=torch.channels_last)
    assert set(y.tolist()) <= {0, 1}
    xn, _ = dm.on_after_batch_transfer((x, y), 0)
    assert xn.dtype == torch.float32
    val = [int(v) for batch in dm.val_dataloader() for v in dm.on_before_batch_transfer(batch, 0)[1]]
    assert sorted(val) == [0, 0, 0, 1, 1, 1]
    # under DDP each rank reads its own val images: together every image exactly once, no padding
    def val_images(rank: int, world: int) -> list[bytes]:
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world, current_epoch=0,  # type: ignore[assignment]
                                     strategy=SimpleNamespace(root_device=torch.device("cpu")))
        batches = [dm.on_before_batch_transfer(batch, 0)[0] for batch in dm.val_dataloader()]
        return [img.numpy().tobytes() for x in batches for img in x]

    everything, rank0, rank1 = val_images(0, 1), val_images(0, 2), val_images(1, 2)
    assert len(everything) == len(set(everything)) == 6
    assert rank0 and rank1 and not set(rank0) & set(rank1)
    assert sorted(rank0 + rank1) == sorted(everything)
    assert dm.describe()["loader"] == "ffcv"
