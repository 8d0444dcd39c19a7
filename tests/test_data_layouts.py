"""Food-101, Oxford-IIIT Pets and Flowers-102 layouts on tiny trees in each dataset's own layout, via the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from launch.cli import main


def _jpeg(path: Path, seed: int) -> None:
    """A real photo crop (scikit-image sample photos), saved as a quality-90 JPEG."""
    import skimage.data as sk

    photo = np.asarray([sk.astronaut, sk.coffee, sk.chelsea][seed % 3]())[..., :3]
    y, x = 7 * seed % 100, 11 * seed % 100
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo[y:y + 96, x:x + 128]).resize((40, 32)).save(path, quality=90)


def _write_and_verify(source: str, out: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["data", "write", "--source", source, "--format", "wds", "--out", str(out), "--shard-size", "4",
                 "--workers", "1", "--no-progress"]) == 0
    assert main(["data", "verify", str(out), "--workers", "1"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert f"{index['total_samples']} samples decode" in " ".join(capsys.readouterr().out.split())
    return index


def _check(index: dict, classes: list[str], train: dict[str, int], val: dict[str, int]) -> None:
    entry = index["sets"]["all"]
    assert index["classes"] == classes
    assert entry["train"]["per_class"] == train and entry["val"]["per_class"] == val
    assert entry["train"]["samples"] == sum(train.values()) and entry["val"]["samples"] == sum(val.values())
    assert index["total_samples"] == sum(train.values()) + sum(val.values())


def test_food101_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--source food101:ROOT` on the extracted archive: classes from images/, train/val from meta/*.txt."""
    root = tmp_path / "food-101"
    counts = {"apple_pie": (3, 1), "baby_back_ribs": (2, 2), "ramen": (1, 1)}
    lines: dict[str, list[str]] = {"train": [], "test": []}
    seed = 0
    for name, (n_train, n_test) in counts.items():
        for i in range(n_train + n_test):
            seed += 1
            _jpeg(root / "images" / name / f"{1000 + i}.jpg", seed)
            lines["train" if i < n_train else "test"].append(f"{name}/{1000 + i}")
    (root / "meta").mkdir()
    for part, rows in lines.items():
        (root / "meta" / f"{part}.txt").write_text("\n".join(rows) + "\n")
    (root / "meta" / "classes.txt").write_text("\n".join(counts) + "\n")
    index = _write_and_verify(f"food101:{root}", tmp_path / "out", capsys)
    _check(index, list(counts), {c: n for c, (n, _) in counts.items()}, {c: n for c, (_, n) in counts.items()})


def test_oxford_pets_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--source oxford_pets:ROOT`: class names from file stems (breed_123), ids from annotations/*.txt."""
    root = tmp_path / "oxford-iiit-pet"
    breeds = {"Abyssinian": (2, 1), "american_bulldog": (1, 2), "Bengal": (3, 1)}  # class ids 1, 2, 3
    rows: dict[str, list[str]] = {"trainval": [], "test": []}
    seed = 0
    for class_id, (breed, (n_train, n_test)) in enumerate(breeds.items(), 1):
        for i in range(n_train + n_test):
            seed += 1
            stem = f"{breed}_{100 + i}"
            _jpeg(root / "images" / f"{stem}.jpg", seed)
            species = 1 if breed[0].isupper() else 2  # cats are capitalised, dogs are not
            rows["trainval" if i < n_train else "test"].append(f"{stem} {class_id} {species} {class_id}")
    (root / "annotations").mkdir()
    for part, lines in rows.items():
        (root / "annotations" / f"{part}.txt").write_text("\n".join(lines) + "\n")
    index = _write_and_verify(f"oxford_pets:{root}", tmp_path / "out", capsys)
    _check(index, list(breeds), {b: n for b, (n, _) in breeds.items()}, {b: n for b, (_, n) in breeds.items()})


def test_flowers102_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--source flowers102:ROOT`: labels from imagelabels.mat; train = trnid + valid, val = tstid (setid.mat)."""
    from scipy.io import savemat

    root = tmp_path / "flowers"
    labels = [1, 1, 5, 5, 5, 102, 102, 1, 5, 102]  # 1-based, image_00001 .. image_00010
    for i in range(1, len(labels) + 1):
        _jpeg(root / "jpg" / f"image_{i:05d}.jpg", i)
    savemat(str(root / "imagelabels.mat"), {"labels": np.array([labels], dtype=np.uint8)})
    savemat(str(root / "setid.mat"), {"trnid": np.array([[1, 3, 6]], dtype=np.uint16),
                                      "valid": np.array([[2, 4]], dtype=np.uint16),
                                      "tstid": np.array([[5, 7, 8, 9, 10]], dtype=np.uint16)})
    index = _write_and_verify(f"flowers102:{root}", tmp_path / "out", capsys)
    classes = [f"flower_{i:03d}" for i in range(1, 103)]
    _check(index, classes, {"flower_001": 2, "flower_005": 2, "flower_102": 1},
           {"flower_001": 1, "flower_005": 2, "flower_102": 2})
