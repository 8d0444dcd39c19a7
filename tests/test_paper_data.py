"""The catalog's smoke-run data (tests/paper_data.py): what a smoke run of configs/paper relies on from it.

Every shard set a paper config reads is written (by `mkf data write`), has the real class counts, passes
`mkf data verify`, and a catalog-shaped cell builds its datamodule from it; the timm stand-in weights load
through the project's ``timm:`` base loading. The data is written once per module (about 20 s of the test's
time).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
import yaml
from paper_data import (
    CIFAR10_CLASSES,
    EXPECTED_CLASSES,
    FOOD101_CLASSES,
    MARKER,
    PAPER_SHARDS,
    PETS_BREEDS,
    RAW_DIRS,
    class_images,
    write_cifar10,
    write_flowers102,
    write_food101,
    write_oxford_pets,
    write_paper_shards,
    write_timm_weights,
)

from datamodules.shards.writer import read_index
from datamodules.sources.layouts import resolve_source
from launch.cli import main
from pipeline.config import CellConfig, from_dict
from pipeline.training.train import build_datamodule_for, validate_config

REPO = Path(__file__).resolve().parents[1]
LAYOUT_OF = {dataset: layout for dataset, layout, _, _ in PAPER_SHARDS.values()}


@pytest.fixture(scope="module")
def paper_shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_paper_shards(tmp_path_factory.mktemp("paper-data"))


def _shards_paths(node: Any) -> set[str]:
    """Every ``shards:`` value anywhere in a parsed YAML document."""
    if isinstance(node, dict):
        found = {str(v) for k, v in node.items() if k == "shards" and v}
        return found.union(*(_shards_paths(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_shards_paths(v) for v in node))
    return set()


def test_the_generator_covers_every_shard_set_the_catalog_reads() -> None:
    """Torch-free and instant: a catalog YAML that names a new shard set fails here, not in the smoke run."""
    configs = sorted((REPO / "configs/paper").glob("*.yaml"))
    named = set().union(*(_shards_paths(yaml.safe_load(p.read_text())) for p in configs))
    assert {Path(s).name for s in named} == set(PAPER_SHARDS)


def test_images_are_seeded_real_photo_crops() -> None:
    first = list(class_images(0, "imagenet", 7, 3, 48))
    again = list(class_images(0, "imagenet", 7, 3, 48))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))  # a function of (seed, class)
    assert not np.array_equal(first[0], next(class_images(1, "imagenet", 7, 1, 48)))
    for image in first:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert min(image.shape[:2]) == 48
        assert image.std() > 10  # a photo, not a flat colour


def _tree_bytes(root: Path) -> dict[str, bytes]:
    """What the readers see: every file but the generator's parameter marker."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MARKER}


@pytest.mark.parametrize("write", [write_food101, write_oxford_pets, write_flowers102, write_cifar10])
def test_raw_trees_are_byte_identical_for_a_seed(write: Callable[..., Path], tmp_path: Path) -> None:
    """Same seed, same bytes (the .mat headers included); the ImageNet tree is the same code, 1000 classes."""
    first, again = write(tmp_path / "a"), write(tmp_path / "b")
    assert _tree_bytes(first) == _tree_bytes(again) and len(_tree_bytes(first)) >= 7  # CIFAR: 7 files
    assert _tree_bytes(write(tmp_path / "c", seed=1)) != _tree_bytes(first)


def test_a_finished_tree_is_reused_only_with_the_same_arguments(tmp_path: Path) -> None:
    """Rerunning keeps a finished tree's files (and mtimes: the shard writer's fingerprint); other counts raise."""
    tree = write_oxford_pets(tmp_path / "pets")
    mtimes = {p: p.stat().st_mtime_ns for p in tree.rglob("*")}
    assert write_oxford_pets(tmp_path / "pets") == tree
    assert {p: p.stat().st_mtime_ns for p in tree.rglob("*")} == mtimes
    with pytest.raises(ValueError, match="written with"):
        write_oxford_pets(tmp_path / "pets", train_per_class=3)


@pytest.mark.slow
def test_every_shard_set_has_the_real_classes_and_verifies(paper_shards: dict[str, Path]) -> None:
    assert set(paper_shards) == set(PAPER_SHARDS)
    for name, folder in paper_shards.items():
        assert folder.name == name
        index = read_index(folder)
        sets = index["sets"]
        assert {s: len(entry["classes"]) for s, entry in sets.items()} == EXPECTED_CLASSES[name], name
        for set_name, entry in sets.items():
            assert sorted(entry["train"]["per_class"]) == sorted(entry["classes"]), (name, set_name)
            # 2 train and 1 val image a class
            assert set(entry["train"]["per_class"].values()) == {2}, (name, set_name)
            assert set(entry["val"]["per_class"].values()) == {1}, (name, set_name)
            # several shards: the readers plan across them
            assert len(entry["train"]["files"]) > 1, (name, set_name)
        assert index["skipped_count"] == 0, name
        assert main(["data", "verify", str(folder), "--workers", "1"]) == 0, name


@pytest.mark.slow
def test_raw_trees_read_back_with_the_real_class_names(paper_shards: dict[str, Path]) -> None:
    """The readers' view of the raw trees: the class lists of the real datasets, in the real order."""
    raw = next(iter(paper_shards.values())).parent / "raw"
    classes = {d: resolve_source(f"{LAYOUT_OF[d]}:{raw / RAW_DIRS[d]}").listing().classes for d in RAW_DIRS}
    assert classes["food101"] == sorted(FOOD101_CLASSES) and len(classes["food101"]) == 101
    assert classes["pets"] == PETS_BREEDS and len(set(classes["pets"])) == 37
    assert classes["cifar10"] == list(CIFAR10_CLASSES)
    assert len(classes["flowers102"]) == 102 and len(classes["imagenet"]) == 1000


@pytest.mark.slow
def test_a_manmade_cell_builds_its_datamodule_from_the_shards(paper_shards: dict[str, Path],
                                                               tmp_path: Path) -> None:
    """fig3's man-made cell (imagenet-wds-mn, half A, loader wds) at 32 px: the trainer's datamodule."""
    cfg = from_dict(CellConfig, {
        "run_dir": str(tmp_path / "cell"), "seed": 0, "model": {"arch": "convnext_tiny"},
        "data": {"dataset": "image_folder", "loader": "wds", "shards": str(paper_shards["imagenet-wds-mn"]),
                 "split": {"kind": "imagenet_manmade_natural"}, "half": "A", "image_size": 32,
                 "val_image_size": 32, "batch_size": 32, "num_workers": 0},
    })
    validate_config(cfg)
    dm = build_datamodule_for(cfg)
    dm.setup("fit")
    assert dm.num_classes == 551
    assert len(dm.train_dataloader()) == 1102 // 32  # 2 images of each man-made class, ranks kept even
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        batch = dm.on_after_batch_transfer(dm.on_before_batch_transfer(next(iter(loader)), 0), 0)
        images, labels = batch
        assert images.shape == (32, 3, 32, 32) and images.dtype == torch.float32
        assert labels.shape == (32,) and 0 <= int(labels.min()) and int(labels.max()) < 551


@pytest.mark.slow
def test_timm_weights_load_as_the_catalogs_external_source(tmp_path: Path) -> None:
    """cross_domain's ``timm:convnext_tiny.fb_in1k`` with the written file as its base_file: offline, the
    file's tensors."""
    from safetensors.torch import load_file

    from pipeline.models.weights import load_weights

    path = write_timm_weights(tmp_path / "convnext_tiny.safetensors")
    saved = load_file(str(path))
    tensors, meta = load_weights("timm:convnext_tiny.fb_in1k", base_file=path)
    assert meta["arch"] == "convnext_tiny" and meta["num_classes"] == "1000"
    assert tensors.keys() == saved.keys() and all(torch.equal(tensors[k], saved[k]) for k in saved)
    with torch.random.fork_rng():  # seeded: timm's model at seed 0 (checked in memory: the file is 110 MB)
        torch.manual_seed(0)
        fresh = timm.create_model("convnext_tiny").state_dict()
    assert all(torch.equal(fresh[k], saved[k]) for k in saved)
