"""One tar reader: `mkf data verify`, `mkf data index` and training group tar members into the same samples."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules import build_datamodule
from datamodules.shards.hub_index import index_hub_shards
from datamodules.shards.tar import read_samples, split_member
from datamodules.shards.verify import verify_dataset, verify_tar


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _shard(path: Path, n: int, label_offset: int = 0) -> None:
    """Keys in a directory whose name has dots (``imgs.v1.2/``) and a multi-dot extension (``meta.json``)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(n):
            for ext, data in (("jpg", _jpeg(i + label_offset)), ("cls", str((i + label_offset) % 2).encode()),
                              ("meta.json", b"{}")):
                info = tarfile.TarInfo(f"imgs.v1.2/{path.stem}_{i:03d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_member_names_split_like_webdataset() -> None:
    assert split_member("imgs.v1.2/a_001.jpg") == ("imgs.v1.2/a_001", "jpg")
    assert split_member("a.b/c.Seg.PNG") == ("a.b/c", "seg.png")
    assert split_member("dir/__meta__.json") is None and split_member("dir/README") is None


def test_verify_groups_samples_as_training_reads_them_also_through_pipe_urls(tmp_path: Path) -> None:
    for name, offset in (("train-0", 0), ("val-0", 100)):
        _shard(tmp_path / f"{name}.tar", 6, offset)
    samples = list(read_samples(str(tmp_path / "train-0.tar")))
    assert len(samples) == 6 and set(samples[0]) == {"__key__", "__url__", "__index__", "jpg", "cls", "meta.json"}
    assert verify_tar(str(tmp_path / "train-0.tar"), 2)["samples"] == 6
    # an index of `pipe:` URLs (as for Hub shards streamed by a command): verified and trained the same way
    out = tmp_path / "index"
    index_hub_shards([f"pipe:cat {tmp_path / 'train-0.tar'}"], [f"pipe:cat {tmp_path / 'val-0.tar'}"], out)
    index = json.loads((out / "index.json").read_text())
    assert index["sets"]["all"]["train"]["samples"] == 6 and index["sets"]["all"]["val"]["samples"] == 6
    report = verify_dataset(out)
    assert report["total"] == 12
    dm = build_datamodule("image_folder", loader="wds", shards=str(out), split=None, half="B", image_size=16,
                          batch_size=2, num_workers=0)
    dm.setup()
    trained = sum(len(labels) for _, labels, _ in dm.train_dataloader())
    assert trained == 6


def test_verify_reports_a_truncated_shard_behind_a_pipe(tmp_path: Path) -> None:
    _shard(tmp_path / "train-0.tar", 4)
    data = (tmp_path / "train-0.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2 + 100])  # ends inside a member
    result = verify_tar(f"pipe:cat {tmp_path / 'cut.tar'}", 2)
    assert result["samples"] < 4 and any("unreadable tar" in p for p in result["problems"])


def test_select_and_stop_read_only_the_wanted_samples_from_files_and_pipes(tmp_path: Path) -> None:
    """A slot that starts mid-shard skips members by header; a file and a pipe yield the same samples."""
    _shard(tmp_path / "s.tar", 8)
    every = list(read_samples(str(tmp_path / "s.tar")))
    for url in (str(tmp_path / "s.tar"), f"pipe:cat {tmp_path / 's.tar'}"):
        got = list(read_samples(url, select=lambda i: i in (2, 3, 5, 7), stop=6))
        assert [s["__index__"] for s in got] == [2, 3, 5]
        assert [s["jpg"] for s in got] == [every[i]["jpg"] for i in (2, 3, 5)]
        assert [s["__key__"] for s in got] == [every[i]["__key__"] for i in (2, 3, 5)]
