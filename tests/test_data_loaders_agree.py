"""One augmentation contract: the same JPEGs through folder, wds and FFCV give the same shapes, dtypes, ranges,
and (for validation) the same pixels up to resampling differences."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_data_writer import photo_tree

from datamodules import build_datamodule
from datamodules.shards.writer import WriteOptions, write_dataset


def _val_by_label(dm, batches) -> dict[int, torch.Tensor]:  # type: ignore[no-untyped-def]
    out = {}
    for batch in batches:
        if hasattr(dm, "on_before_batch_transfer") and len(batch) == 3 or dm.__class__.__name__ == "FFCVDataModule":
            batch = dm.on_before_batch_transfer(batch, 0)
            batch = dm.on_after_batch_transfer(batch, 0)
        x, y = batch
        for img, label in zip(x, y.tolist(), strict=True):
            out[label] = img
    return out


def test_folder_wds_and_ffcv_follow_one_contract(tmp_path: Path) -> None:
    try:
        import ffcv  # noqa: F401
    except ImportError:
        pytest.skip("FFCV is not installed (pip install '.[ffcv]'); CI installs it")
    photo_tree(tmp_path / "src", classes=6, train=4, val=1, size=(120, 90))  # one val image per class
    write_dataset(str(tmp_path / "src"), tmp_path / "wds", WriteOptions(shard_size=4), progress=False)
    write_dataset(str(tmp_path / "src"), tmp_path / "ffcv", WriteOptions(format="ffcv", compress_probability=0.0),
                  progress=False)
    common = dict(split=None, image_size=32, batch_size=3, num_workers=1, scale=[0.25, 1.0])
    modules = {
        "folder": build_datamodule("image_folder", root=str(tmp_path / "src"), **common),
        "wds": build_datamodule("image_folder", loader="wds", shards=str(tmp_path / "wds"), **common),
        "ffcv": build_datamodule("image_folder", loader="ffcv", shards=str(tmp_path / "ffcv"), **common),
    }
    val = {}
    for name, dm in modules.items():
        dm.setup()
        assert dm.num_classes == 6
        train = next(iter(dm.train_dataloader()))
        if name != "folder":
            train = dm.on_after_batch_transfer(dm.on_before_batch_transfer(train, 0), 0)
        x, y = train
        assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32, name
        assert -2.2 < float(x.min()) and float(x.max()) < 2.7, name  # ImageNet-normalised [0, 1] pixels
        assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) < 6
        val[name] = _val_by_label(dm, dm.val_dataloader())
        assert sorted(val[name]) == list(range(6)), name
    for name in ("wds", "ffcv"):
        for label in range(6):
            same = (val[name][label] - val["folder"][label]).abs().mean().item()
            other = (val[name][label] - val["folder"][(label + 1) % 6]).abs().mean().item()
            # the same crop: only the resampling (and wds's DCT-domain downscale) differs, ~10/255 on average
            assert same < 0.25 and same < other / 2, (name, label, same, other)
