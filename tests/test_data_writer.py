"""`mkf data write` / `verify` on real JPEGs: split-specific shuffled shards, the index, resuming a killed write."""

from __future__ import annotations

import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.errors import UserError
from datamodules.shards.verify import verify_dataset
from datamodules.shards.writer import WriteOptions, write_dataset
from launch.cli import main


def photo_tree(root: Path, classes: int = 4, train: int = 6, val: int = 2, size: tuple[int, int] = (64, 48),
               flat_val: bool = False) -> list[str]:
    """An ImageNet-layout tree of real photo crops (scikit-image's sample photos), quality-90 JPEGs."""
    import skimage.data as sk

    photos = [sk.astronaut(), sk.coffee(), sk.chelsea(), sk.rocket(), sk.immunohistochemistry(), sk.retina()]
    rng = random.Random(0)
    names = [f"n{c:08d}" for c in range(classes)]
    for c, wnid in enumerate(names):
        photo = Image.fromarray(np.asarray(photos[c % len(photos)])[..., :3])
        for part, n in (("train", train), ("val", val)):
            for i in range(n):
                w, h = photo.size
                x, y = rng.randint(0, w // 3), rng.randint(0, h // 3)
                img = photo.crop((x, y, x + w // 2, y + h // 2)).resize(size)
                folder = root / part / ("" if part == "val" and flat_val else wnid)
                folder.mkdir(parents=True, exist_ok=True)
                img.save(folder / f"{wnid}_{part}_{i}.JPEG", quality=90)
    return names


def shard_keys(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return sorted({m.name.split(".")[0] for m in tar if m.isfile()})


def test_split_specific_shuffled_shards_and_index(tmp_path: Path) -> None:
    names = photo_tree(tmp_path / "src")
    out = tmp_path / "out"
    index = write_dataset(str(tmp_path / "src"), out, WriteOptions(shard_size=4), split="random_halves:0",
                          workers=2, progress=False)
    assert set(index["sets"]) == {"A", "B"} and index["classes"] == names
    for half in ("A", "B"):
        entry = index["sets"][half]
        assert entry["train"]["samples"] == 12 and entry["val"]["samples"] == 4
        assert [f["samples"] for f in entry["train"]["files"]] == [4, 4, 4]  # even shards within a half
        shard_classes = set()
        for f in entry["train"]["files"]:
            keys = shard_keys(out / f["name"])
            assert {k.split("/")[0] for k in keys} <= set(entry["classes"])  # only this half's classes
            shard_classes.add(tuple(sorted({k.split("/")[0] for k in keys})))
        assert any(len(c) > 1 for c in shard_classes)  # samples shuffled across shards, not one class per shard
        assert entry["train"]["per_class"] == {c: 6 for c in entry["classes"]}
    assert index["source"]["fingerprint"] and index["split"]["kind"] == "random_halves"
    report = verify_dataset(out)
    assert report["total"] == 32


def test_flat_val_with_label_file(tmp_path: Path) -> None:
    names = photo_tree(tmp_path / "src", classes=2, train=2, val=2, flat_val=True)
    labels = tmp_path / "val.txt"
    labels.write_text("".join(f"{n}_val_{i}.JPEG {n}\n" for n in names for i in range(2)))
    index = write_dataset(str(tmp_path / "src"), tmp_path / "out", WriteOptions(), val_labels=str(labels),
                          progress=False)
    assert index["sets"]["all"]["val"]["per_class"] == {n: 2 for n in names}
    with pytest.raises(UserError, match="--val-labels"):
        write_dataset(str(tmp_path / "src"), tmp_path / "out2", WriteOptions(), progress=False)


def _boom_on_third(layout, plan, out, opts):  # type: ignore[no-untyped-def]
    from datamodules.shards import writer as shard_writer

    if plan.name.endswith("train-000002.tar"):
        (out / plan.name).with_name(".train-000002.tar.tmp-999").write_bytes(b"half a shard")
        raise RuntimeError("killed")
    return shard_writer._original_write(layout, plan, out, opts)  # type: ignore[attr-defined]


def test_interrupted_write_completes_on_rerun_without_duplicates(tmp_path: Path, monkeypatch) -> None:
    from datamodules.shards import writer as shard_writer

    photo_tree(tmp_path / "src", classes=3, train=5, val=1)
    opts = WriteOptions(shard_size=2)
    reference = write_dataset(str(tmp_path / "src"), tmp_path / "ref", opts, workers=1, progress=False)

    monkeypatch.setattr(shard_writer, "_original_write", shard_writer.write_wds_shard, raising=False)
    monkeypatch.setattr(shard_writer, "write_wds_shard", _boom_on_third)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="killed"):
        write_dataset(str(tmp_path / "src"), out, opts, workers=1, progress=False)
    assert not (out / "index.json").exists() and (out / ".progress").is_dir()
    monkeypatch.setattr(shard_writer, "write_wds_shard", shard_writer._original_write)

    index = write_dataset(str(tmp_path / "src"), out, opts, workers=2, progress=False)
    assert index["total_samples"] == reference["total_samples"] == 18
    keys = [k for f in index["sets"]["all"]["train"]["files"] for k in shard_keys(out / f["name"])]
    assert len(keys) == len(set(keys)) == 15
    for f in index["sets"]["all"]["train"]["files"]:  # the same plan: identical shards
        assert shard_keys(out / f["name"]) == shard_keys(tmp_path / "ref" / f["name"])
    assert not list(out.glob("*/.*tmp*")) and not (out / ".progress").exists()
    verify_dataset(out)
    # a finished write is a no-op; another source into the same folder is refused
    assert write_dataset(str(tmp_path / "src"), out, opts, progress=False)["plan_fingerprint"] == index["plan_fingerprint"]
    with pytest.raises(UserError, match="another write"):
        write_dataset(str(tmp_path / "src"), out, WriteOptions(shard_size=3), progress=False)


def test_verify_catches_a_corrupted_shard(tmp_path: Path) -> None:
    photo_tree(tmp_path / "src", classes=2, train=3, val=1)
    out = tmp_path / "out"
    write_dataset(str(tmp_path / "src"), out, WriteOptions(shard_size=3), progress=False)
    shard = out / "all" / "train-000000.tar"
    shard.write_bytes(shard.read_bytes()[:2000])
    with pytest.raises(UserError, match="failed verification"):
        verify_dataset(out)
    (out / "all" / "val-000000.tar").unlink()
    with pytest.raises(UserError, match="missing"):
        verify_dataset(out)


def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["data", "write", "--source", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert main(["data", "write", "--source", "food101", "--out", str(out)]) == 2
    assert main(["data", "write", "--source", "fashion_mnist", "--out", str(out), "--split", "halves"]) == 2
    err = capsys.readouterr().err
    assert err.count("mkf: error:") == 3 and "food101:ROOT" in err
    assert not out.exists()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "index.json").write_text("{not json")
    assert main(["data", "verify", str(tmp_path / "bad")]) == 2
    assert "not a valid index" in capsys.readouterr().err


def test_cli_write_and_verify(tmp_path: Path, capsys) -> None:
    photo_tree(tmp_path / "src", classes=2, train=3, val=1)
    out = tmp_path / "out"
    assert main(["data", "write", "--source", str(tmp_path / "src"), "--out", str(out), "--shard-size", "2",
                 "--workers", "1", "--no-progress"]) == 0
    assert main(["data", "verify", str(out), "--workers", "1"]) == 0
    assert json.loads((out / "index.json").read_text())["total_samples"] == 8
    assert "8 samples decode" in " ".join(capsys.readouterr().out.split())
