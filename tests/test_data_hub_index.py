"""`mkf data index`: our index.json for third-party (Hub-style) shards, which the wds datamodule then trains on."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import skimage.data as sk
from PIL import Image

from datamodules import build_datamodule
from datamodules.errors import UserError
from datamodules.shards.hub_index import index_hub_shards
from launch.cli import main


def _encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((40, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


def _hub_tar(path: Path, samples: list[dict[str, bytes]], prefix: str) -> None:
    """A shard as the Hub's ImageNet repos write them: key.jpg (or png/webp) + key.cls, optional key.json."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for i, members in enumerate(samples):
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{prefix}/{prefix}_{i:04d}.{ext}")
                info.size, info.mtime = len(data), 1700000000.5  # a float mtime: PAX headers, as many tools write
                tar.addfile(info, io.BytesIO(data))


def test_index_for_hub_shards_trains_with_the_wds_loader(tmp_path: Path) -> None:
    photo = np.asarray(sk.astronaut())[..., :3]
    for shard in range(2):
        _hub_tar(tmp_path / f"train-{shard:04d}.tar", [
            {"jpg": _encoded(photo, "JPEG"), "cls": str(i % 3).encode(), "json": b'{"source": "test"}'}
            for i in range(6)] + [{"png": _encoded(photo, "PNG"), "cls": b"2"}, {"webp": _encoded(photo, "WEBP"),
                                                                               "cls": b"1"}], f"s{shard}")
    _hub_tar(tmp_path / "val-0000.tar", [{"jpeg": _encoded(photo, "JPEG"), "cls": str(i % 3).encode()}
                                         for i in range(3)] + [{"jpg": _encoded(photo, "JPEG")}], "v")  # no cls
    (tmp_path / "classes.txt").write_text("cat\ndog\nfish\n")
    out = tmp_path / "index"
    code = main(["data", "index", "--train", str(tmp_path / "train-{0000..0001}.tar"),
                 "--val", str(tmp_path / "val-0000.tar"), "--out", str(out), "--classes",
                 str(tmp_path / "classes.txt"), "--workers", "1"])
    assert code == 0
    index = json.loads((out / "index.json").read_text())
    entry = index["sets"]["all"]
    assert index["classes"] == ["cat", "dog", "fish"] and index["format"] == "wds"
    assert [f["samples"] for f in entry["train"]["files"]] == [8, 8]
    assert entry["train"]["per_class"] == {"cat": 4, "dog": 6, "fish": 6}
    assert entry["val"]["samples"] == 3 and entry["val"]["skipped"] == 1

    dm = build_datamodule("image_folder", loader="wds", shards=str(out), split=None, half="B", image_size=16,
                          batch_size=4, num_workers=0)
    dm.setup()
    assert dm.num_classes == 3
    batches = list(dm.train_dataloader())
    assert len(batches) == 4 and all(x.shape == (4, 3, 16, 16) for x, _, _ in batches)
    assert sorted(y for _, labels, _ in dm.val_dataloader() for y in labels.tolist()) == [0, 1, 2]

    without_names = index_hub_shards([str(tmp_path / "train-0000.tar")], [], tmp_path / "plain")
    assert without_names["classes"] == ["0", "1", "2"]
    with pytest.raises(UserError, match="outside the 2 classes"):
        index_hub_shards([str(tmp_path / "train-0000.tar")], [], tmp_path / "few", classes=["a", "b"])
    with pytest.raises(UserError, match="does not exist"):
        index_hub_shards([str(tmp_path / "train-{0000..0002}.tar")], [], tmp_path / "missing")
