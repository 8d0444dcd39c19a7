"""Food-101, Oxford-IIIT Pets and Flowers-102 layouts on tiny trees in each dataset's own layout, via the CLI."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from launch.cli import main
from tests.test_bad_input import assert_user_error


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


FOOD = {"apple_pie": (3, 1), "baby_back_ribs": (2, 2), "ramen": (1, 1)}  # class: (train, test) images


def _food101_tree(root: Path) -> Path:
    """Food-101 as extracted: images/<class>/<id>.jpg, meta/{train,test}.txt of <class>/<id>, meta/classes.txt."""
    lines: dict[str, list[str]] = {"train": [], "test": []}
    seed = 0
    for name, (n_train, n_test) in FOOD.items():
        for i in range(n_train + n_test):
            seed += 1
            _jpeg(root / "images" / name / f"{1000 + i}.jpg", seed)
            lines["train" if i < n_train else "test"].append(f"{name}/{1000 + i}")
    (root / "meta").mkdir()
    for part, rows in lines.items():
        (root / "meta" / f"{part}.txt").write_text("\n".join(rows) + "\n")
    (root / "meta" / "classes.txt").write_text("\n".join(FOOD) + "\n")
    return root


def test_food101_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--source food101:ROOT` on the extracted archive: classes from images/, train/val from meta/*.txt."""
    root = _food101_tree(tmp_path / "food-101")
    index = _write_and_verify(f"food101:{root}", tmp_path / "out", capsys)
    _check(index, list(FOOD), {c: n for c, (n, _) in FOOD.items()}, {c: n for c, (_, n) in FOOD.items()})


def test_food101_unknown_class_is_one_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A meta/test.txt line whose class has no images/<class> folder: one error line naming the file, the line
    number and the class, with the fix -- not a KeyError traceback -- and no --out folder."""
    root = _food101_tree(tmp_path / "food-101")
    test_txt = root / "meta" / "test.txt"
    with test_txt.open("a") as f:
        f.write("no_such_class/123\n")
    line_no = len(test_txt.read_text().splitlines())  # the appended line: 5
    out = tmp_path / "out"
    assert_user_error(capsys, ["data", "write", "--source", f"food101:{root}", "--out", str(out), "--workers", "1",
                               "--no-progress"],
                      f"{test_txt}:{line_no}:", "'no_such_class'", str(root / "images"),
                      must_not_exist=out, untouched=root)


PETS = {"Abyssinian": (2, 1), "american_bulldog": (1, 2), "Bengal": (3, 1), "yorkshire_terrier": (2, 2)}


def _pets_tree(root: Path) -> Path:
    """Oxford-IIIT Pets as extracted: images/<Breed>_<n>.jpg, annotations/{trainval,test}.txt with
    ``<stem> <class id> <species> <breed id>`` rows; PETS in class-id order (1, 2, 3, 4)."""
    rows: dict[str, list[str]] = {"trainval": [], "test": []}
    seed = 0
    for class_id, (breed, (n_train, n_test)) in enumerate(PETS.items(), 1):
        for i in range(n_train + n_test):
            seed += 1
            stem = f"{breed}_{100 + i}"
            _jpeg(root / "images" / f"{stem}.jpg", seed)
            species = 1 if breed[0].isupper() else 2  # cats are capitalised, dogs are not
            rows["trainval" if i < n_train else "test"].append(f"{stem} {class_id} {species} {class_id}")
    (root / "annotations").mkdir()
    for part, lines in rows.items():
        (root / "annotations" / f"{part}.txt").write_text("\n".join(lines) + "\n")
    return root


def _shard_labels(folder: Path, classes: list[str]) -> dict[str, str]:
    """{sample key: the class name its stored label points at}, over every shard in ``folder``."""
    named = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".cls"):
                    file = tar.extractfile(member)
                    assert file is not None
                    named[member.name[:-len(".cls")]] = classes[int(file.read())]
    return named


def test_oxford_pets_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--source oxford_pets:ROOT`: class names from file stems (breed_123), ids from annotations/*.txt."""
    root = _pets_tree(tmp_path / "oxford-iiit-pet")
    index = _write_and_verify(f"oxford_pets:{root}", tmp_path / "out", capsys)
    _check(index, list(PETS), {b: n for b, (n, _) in PETS.items()}, {b: n for b, (_, n) in PETS.items()})


@pytest.mark.parametrize("missing", ["Abyssinian", "Bengal"])  # class id 1 (the first), class id 3 (a middle one)
def test_oxford_pets_missing_class_id(tmp_path: Path, capsys: pytest.CaptureFixture[str], missing: str) -> None:
    """Annotations without one class id (`sed -i '/^Abyssinian_/d' annotations/*.txt`): the remaining breeds get
    contiguous labels that name their own images -- no name shifted by one, no class's images dropped."""
    root = _pets_tree(tmp_path / "oxford-iiit-pet")
    for txt in (root / "annotations").glob("*.txt"):
        txt.write_text("".join(line for line in txt.read_text().splitlines(True) if not line.startswith(f"{missing}_")))
    kept = {b: n for b, n in PETS.items() if b != missing}
    out = tmp_path / "out"
    index = _write_and_verify(f"oxford_pets:{root}", out, capsys)
    _check(index, list(kept), {b: n for b, (n, _) in kept.items()}, {b: n for b, (_, n) in kept.items()})
    assert index["skipped_count"] == 0
    named = _shard_labels(out / "all", index["classes"])
    assert len(named) == sum(a + b for a, b in kept.values())  # every listed image is in a shard
    assert {key: key.rsplit("_", 1)[0] for key in named} == named  # and its label names its own breed


@pytest.mark.parametrize("new_id, named", [("2", "'american_bulldog'"), ("5", "trainval.txt:")])
def test_oxford_pets_inconsistent_class_id_is_one_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        new_id: str, named: str) -> None:
    """A Bengal row (class id 3) given american_bulldog's id 2, or an unused id 5: one label could not name one
    breed, so one error line naming the file, the line, the breed and the other side; no --out folder."""
    root = _pets_tree(tmp_path / "oxford-iiit-pet")
    test_txt = root / "annotations" / "test.txt"
    lines = test_txt.read_text().splitlines()
    n = next(i for i, line in enumerate(lines, 1) if line.startswith("Bengal_"))
    lines[n - 1] = lines[n - 1].replace(" 3 1 3", f" {new_id} 1 3")
    test_txt.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert_user_error(capsys, ["data", "write", "--source", f"oxford_pets:{root}", "--out", str(out),
                               "--workers", "1", "--no-progress"],
                      f"{test_txt}:{n}:", "'Bengal'", named, must_not_exist=out, untouched=root)


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
