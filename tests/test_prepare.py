"""Data preparation as a stage (launch/planning/prepare.py): a role's ``prepare:`` section becomes one write, checked
before anything runs, skipped when complete with the same fingerprint, redone when the raw source changes.

Real writes by the project's writer on a tiny class-folder dataset of PNGs (and a few Fashion-MNIST samples);
no mocks.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.errors import UserError
from datamodules.shards.writer import read_index
from launch.execution.prepare_run import run_prepare_local
from launch.planning.prepare import MARKER, PrepareSpec, parse_prepare, prepare_jobs


def _class_folders(root: Path, classes: int = 3, per_class: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def _sections(tmp_path: Path, source: str, **prepare: object) -> dict[str, dict[str, object]]:
    shards = tmp_path / "shards"
    return {"B": {"dataset": "image_folder", "loader": "wds", "shards": str(shards),
                  "prepare": {"source": source, "format": "wds", "shard_size": 8, **prepare}},
            "A": {"dataset": "fashion_mnist"}}  # a role without prepare: no write


def test_a_write_runs_once_and_a_complete_one_is_skipped(tmp_path: Path) -> None:
    raw = _class_folders(tmp_path / "raw")
    sections = _sections(tmp_path, f"class_folders:{raw}")
    jobs = prepare_jobs(sections)
    assert [j.roles for j in jobs] == [["B"]] and not jobs[0].complete()
    ran = run_prepare_local(jobs, progress=False, log=lambda *a: None)
    assert len(ran) == 1
    out = Path(str(sections["B"]["shards"]))
    index = read_index(out)
    assert index["total_samples"] == 36 and (out / MARKER).is_file()
    marker = json.loads((out / MARKER).read_text())
    assert marker["fingerprint"] == jobs[0].fingerprint and marker["roles"] == ["B"]
    assert (out / MARKER).stat().st_mtime_ns >= (out / "index.json").stat().st_mtime_ns  # marker written last
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.tar")}
    again = prepare_jobs(sections)  # a new plan: same arguments, same source
    assert again[0].fingerprint == jobs[0].fingerprint and again[0].complete()
    assert run_prepare_local(again, progress=False, log=lambda *a: None) == []
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.tar")} == mtimes, "a complete write was redone"


def test_the_fingerprint_follows_the_arguments_and_the_raw_source(tmp_path: Path) -> None:
    raw = _class_folders(tmp_path / "raw")
    base = prepare_jobs(_sections(tmp_path, f"class_folders:{raw}"))[0].fingerprint
    assert prepare_jobs(_sections(tmp_path, f"class_folders:{raw}", shard_size=9))[0].fingerprint != base
    assert prepare_jobs(_sections(tmp_path, f"class_folders:{raw}", workers=3))[0].fingerprint == base
    _class_folders(raw, classes=4)  # a class folder added: the raw listing changed
    assert prepare_jobs(_sections(tmp_path, f"class_folders:{raw}"))[0].fingerprint != base
    time.sleep(0.01)
    (raw / "class0" / "0.png").write_bytes((raw / "class1" / "0.png").read_bytes())  # an image replaced
    os.utime(raw / "class0", ns=(time.time_ns(), time.time_ns()))
    assert len({base, prepare_jobs(_sections(tmp_path, f"class_folders:{raw}"))[0].fingerprint}) == 2


def test_a_changed_source_after_a_complete_write_is_one_error_before_anything_runs(tmp_path: Path) -> None:
    raw = _class_folders(tmp_path / "raw")
    sections = _sections(tmp_path, f"class_folders:{raw}")
    run_prepare_local(prepare_jobs(sections), progress=False, log=lambda *a: None)
    _class_folders(raw, classes=4)
    with pytest.raises(UserError, match=r"datasets\.B\.shards .* already holds a write"):
        prepare_jobs(sections)


def test_a_missing_or_malformed_raw_dataset_is_one_error_naming_role_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "food-101"
    with pytest.raises(UserError) as exc:
        prepare_jobs(_sections(tmp_path, f"food101:{missing}"))
    assert "datasets.B.prepare.source" in str(exc.value) and str(missing) in str(exc.value)
    assert "\n" not in str(exc.value)
    malformed = tmp_path / "food-101"
    (malformed / "images" / "apple_pie").mkdir(parents=True)  # no meta/train.txt
    with pytest.raises(UserError, match=r"datasets\.B\.prepare\.source food101:.*meta"):
        prepare_jobs(_sections(tmp_path, f"food101:{malformed}"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=rf"datasets\.B\.prepare\.source class_folders:{empty}"):
        prepare_jobs(_sections(tmp_path, f"class_folders:{empty}"))
    assert not (tmp_path / "shards").exists(), "nothing may be written before the check"


def test_bad_prepare_sections_are_one_line_each(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"unknown key datasets\.B\.prepare\.shardsize"):
        parse_prepare("B", {"source": "mnist_5k", "shardsize": 3})
    with pytest.raises(UserError, match=r"datasets\.B\.prepare\.source is required"):
        parse_prepare("B", {"format": "wds"})
    with pytest.raises(UserError, match=r"datasets\.B\.prepare\.format = 'tfrecord'"):
        parse_prepare("B", {"source": "mnist_5k", "format": "tfrecord"})
    sections = _sections(tmp_path, "mnist_5k")
    del sections["B"]["shards"]
    with pytest.raises(UserError, match=r"datasets\.B\.prepare needs datasets\.B\.shards"):
        prepare_jobs(sections)


@pytest.mark.usefixtures("fashion_root")
def test_roles_sharing_shards_share_one_write(tmp_path: Path, fashion_root: Path) -> None:
    prepare = {"source": f"fashion_mnist:{fashion_root}", "max_per_class": 4, "split": "random_halves:0"}
    shards = str(tmp_path / "fm")
    sections = {role: {"loader": "wds", "shards": shards, "half": role, "prepare": prepare} for role in ("A", "B")}
    jobs = prepare_jobs(sections)
    assert len(jobs) == 1 and jobs[0].roles == ["A", "B"]
    run_prepare_local(jobs, progress=False, log=lambda *a: None)
    assert set(read_index(shards)["sets"]) == {"A", "B"}
    other = {**sections, "B": {**sections["B"], "prepare": {**prepare, "seed": 1}}}
    with pytest.raises(UserError, match="write the same shards"):
        prepare_jobs(other)
    assert PrepareSpec.model_validate(prepare).split_text() == "random_halves:0"
