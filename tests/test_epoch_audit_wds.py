"""Sample-identity audits of the webdataset loader's epoch contract (see datamodules/loaders/wds.py).

Every sample carries its id (``shard:key``, the loader's ``with_ids`` batches), and the ground truth is read
straight from the tars the project's writer (``write_dataset``) and indexer (``index_hub_shards``) produced, not
from the planner. Simulated ranks: one datamodule per (rank, world) in this process, the union of what they
yield; workers are real DataLoader worker processes. Checked: each training epoch is a permutation of the cell's
training set minus at most ``world * batch - 1`` samples, every rank the same number of full batches, labels
matching the sample; a resume at a random batch continues the same batches; validation exactly once across ranks;
a different order per epoch and per seed, the same for the same (seed, epoch).
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from datamodules import build_datamodule
from datamodules.errors import UserError
from datamodules.loaders.wds import ShardStream, WebDatasetDataModule
from datamodules.shards.hub_index import index_hub_shards
from datamodules.shards.tar import read_samples, sample_label
from datamodules.shards.writer import WriteOptions, write_dataset
from datamodules.sources.subsets import subset_train_indices

CLASSES = 6
TRAIN_PER_CLASS = (40, 25, 30, 15, 35, 20)  # uneven classes: 165 training samples
VAL_PER_CLASS = 5
SPLIT = {"kind": "random_halves", "seed": 0}


def _tree(root: Path) -> None:
    """An ImageNet-layout folder of tiny 8x8 PNGs (some JPEGs), each a distinct colour pattern."""
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        for part, n in (("train", TRAIN_PER_CLASS[c]), ("val", VAL_PER_CLASS)):
            folder = root / part / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
                fmt = "JPEG" if i % 4 == 0 else "PNG"
                Image.fromarray(pixels).save(folder / f"c{c}_{part}_{i}.{'jpg' if fmt == 'JPEG' else 'png'}",
                                             format=fmt)


def _repack_uneven(src: Path, out: Path, sizes: list[int]) -> list[str]:
    """The samples of ``src`` tars re-cut into shards of the given (uneven) sizes, as third-party shards are."""
    samples = [s for tar in sorted(src.glob("train-*.tar")) for s in read_samples(str(tar))]
    assert sum(sizes) == len(samples)
    out.mkdir(parents=True)
    urls, start = [], 0
    for k, n in enumerate(sizes):
        path = out / f"train-{k:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for sample in samples[start:start + n]:
                for ext in (e for e in sample if not e.startswith("__")):
                    info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                    info.size = len(sample[ext])
                    tar.addfile(info, io.BytesIO(sample[ext]))
        urls.append(str(path))
        start += n
    return urls


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Index folders: one shard, few shards (fewer than slots), many uneven (Hub-indexed), per-half shards."""
    tmp = tmp_path_factory.mktemp("audit")
    _tree(tmp / "src")
    out = {}
    for name, size in (("one", 1000), ("few", 60)):
        write_dataset(str(tmp / "src"), tmp / name, WriteOptions(shard_size=size), progress=False)
        out[name] = tmp / name
    write_dataset(str(tmp / "src"), tmp / "halves", WriteOptions(shard_size=9), split="random_halves:0",
                  progress=False)
    out["halves"] = tmp / "halves"
    sizes = [1, 37, 3, 60, 2, 9, 20, 5, 11, 17]  # 165 samples in 10 shards of very different sizes
    train = _repack_uneven(tmp / "one" / "all", tmp / "uneven_tars", sizes)
    index_hub_shards(train, [str(tmp / "one" / "all" / "val-000000.tar")], tmp / "uneven",
                     classes=[f"c{c}" for c in range(CLASSES)])
    out["uneven"] = tmp / "uneven"
    return out


def _truth(root: Path, set_name: str, part: str) -> list[tuple[str, int]]:
    """(id, original label) of every sample of a (set, part), in index order, read from the tars themselves."""
    index = json.loads((root / "index.json").read_text())
    out = []
    for f in index["sets"][set_name][part]["files"]:
        url = f.get("url") or str(root / f["name"])
        out += [(f"{url}:{s['__key__']}", sample_label(s)) for s in read_samples(url)]
    return out


def _dm(root: Path, split: dict[str, Any] | None = SPLIT, half: str = "A", batch: int = 4, workers: int = 0,
        seed: int = 0, **extra: Any) -> WebDatasetDataModule:
    dm = build_datamodule("image_folder", loader="wds", shards=str(root), split=split, half=half, image_size=8,
                          batch_size=batch, num_workers=workers, shuffle_buffer=16, seed=seed, **extra)
    dm.setup()
    dm.train_set.with_ids = dm.val_set.with_ids = True  # type: ignore[union-attr]
    return dm  # type: ignore[return-value]


def _epoch(dm: WebDatasetDataModule, epoch: int, rank: int, world: int, train: bool = True,
           resume_at: int = 0) -> list[tuple[tuple[str, ...], list[int]]]:
    """(ids, labels) of each batch one simulated rank gets, through the datamodule's own loader."""
    dm._context = lambda: (epoch, rank, world)  # type: ignore[method-assign]
    if resume_at:
        dm.position.set(epoch, resume_at)  # what pipeline.training.resume does on restore
    loader = dm.train_dataloader() if train else dm.val_dataloader()
    batches = [(ids, labels.tolist()) for _, labels, skipped, ids in loader]
    assert len(batches) == len(loader) - resume_at  # the loader sizes the whole epoch, as Lightning expects
    return batches


def _audit_train(dm: WebDatasetDataModule, truth: list[tuple[str, int]], world: int, epoch: int = 0) -> list[str]:
    """One epoch over ``world`` simulated ranks; asserts the contract, returns the epoch's ids in rank order."""
    label_of = dict(truth)
    expected = {i for i, lbl in truth if lbl in dm.label_map}
    per_rank = [_epoch(dm, epoch, rank, world) for rank in range(world)]
    counts = {len(batches) for batches in per_rank}
    assert len(counts) == 1 and counts.pop() >= 1, "ranks must run the same number of batches"
    seen = [i for batches in per_rank for ids, _ in batches for i in ids]
    assert all(len(ids) == dm.batch_size for batches in per_rank for ids, _ in batches)
    duplicates = [i for i, n in Counter(seen).items() if n > 1]
    assert not duplicates, f"{len(duplicates)} samples seen twice in one epoch"
    assert set(seen) <= expected, "a sample outside the cell's training set"
    assert len(expected) - len(seen) < world * dm.batch_size, f"{len(expected) - len(seen)} samples never seen"
    assert len(seen) == len(expected) // (world * dm.batch_size) * world * dm.batch_size
    for batches in per_rank:
        for ids, labels in batches:
            assert labels == [dm.label_map[label_of[i]] for i in ids]
    return seen


GRID = [  # (layout, split-filtered 'all' set?, world, workers)
    ("one", True, 1, 0), ("one", True, 2, 3), ("one", False, 4, 1), ("one", True, 16, 0),
    ("few", True, 1, 3), ("few", False, 2, 1), ("few", True, 4, 3), ("few", True, 16, 1),
    ("uneven", True, 1, 1), ("uneven", False, 2, 0), ("uneven", True, 4, 0), ("uneven", True, 16, 3),
    ("halves", False, 1, 0), ("halves", False, 2, 1), ("halves", False, 4, 3), ("halves", False, 16, 0),
]


@pytest.mark.parametrize(("layout", "filtered", "world", "workers"), GRID)
def test_train_epoch_is_a_permutation_and_resume_continues_it(layouts: dict[str, Path], layout: str,
                                                              filtered: bool, world: int, workers: int) -> None:
    root = layouts[layout]
    set_name = "A" if layout == "halves" else "all"
    batch = 2 if world == 16 else 4
    split = SPLIT if filtered or layout == "halves" else None
    dm = _dm(root, split=split, batch=batch, workers=workers)
    assert dm.set_name == set_name
    truth = _truth(root, set_name, "train")
    kept = sum(lbl in dm.label_map for _, lbl in truth)
    if filtered:  # the epoch is sized by the kept classes, not by the whole 'all' set
        assert kept < len(truth) and dm.train_set.total == kept  # type: ignore[union-attr]
    epoch1 = _audit_train(dm, truth, world, epoch=1)
    # a resume at a random batch: the batches before plus the batches after are the uninterrupted epoch
    rank = random.Random(f"{layout}{world}{workers}").randrange(world)
    full = _epoch(dm, 1, rank, world)
    if len(full) > 1:
        k = random.Random(f"{layout}{world}").randrange(1, len(full))
        resumed = _epoch(dm, 1, rank, world, resume_at=k)
        assert resumed == full[k:], f"resume at batch {k} of {len(full)} diverged"
    if world <= 4:
        epoch2 = _audit_train(dm, truth, world, epoch=2)
        assert epoch2 != epoch1, "the same order in two epochs"


@pytest.mark.parametrize(("layout", "world", "workers"), [("one", 4, 3), ("few", 16, 1), ("uneven", 2, 3),
                                                          ("halves", 4, 0)])
def test_validation_reads_each_sample_exactly_once_across_ranks(layouts: dict[str, Path], layout: str,
                                                                world: int, workers: int) -> None:
    """Also with one val shard for 12 slots: each slot seeks to its own share instead of reading everything."""
    root = layouts[layout]
    set_name = "A" if layout == "halves" else "all"
    dm = _dm(root, split=SPLIT, batch=3, workers=workers)
    truth = dict(_truth(root, set_name, "val"))
    expected = {i for i, lbl in truth.items() if lbl in dm.label_map}
    per_rank = [[i for ids, _ in _epoch(dm, 0, r, world, train=False) for i in ids] for r in range(world)]
    seen = [i for ids in per_rank for i in ids]
    assert sorted(seen) == sorted(expected)
    assert max(map(len, per_rank)) - min(map(len, per_rank)) <= 1  # an even share per rank


def test_order_differs_per_epoch_and_seed_and_repeats_for_the_same_pair(layouts: dict[str, Path]) -> None:
    root = layouts["few"]
    order = {(seed, epoch): [i for ids, _ in _epoch(_dm(root, seed=seed, workers=0), epoch, 0, 1) for i in ids]
             for seed in (0, 1) for epoch in (0, 1)}
    assert len({tuple(v) for v in order.values()}) == 4
    assert len({frozenset(v) for v in order.values()}) >= 2  # the dropped tail differs too
    assert [i for ids, _ in _epoch(_dm(root, seed=1), 1, 0, 1) for i in ids] == order[(1, 1)]


@pytest.mark.parametrize(("layout", "world", "workers"), [("uneven", 2, 3), ("halves", 4, 1)])
def test_subset_is_chosen_as_for_every_loader_and_is_an_exact_epoch(layouts: dict[str, Path], layout: str,
                                                                    world: int, workers: int) -> None:
    root = layouts[layout]
    set_name = "A" if layout == "halves" else "all"
    subset = {"per_class": 6, "seed": 3}
    dm = _dm(root, split=SPLIT, batch=2, workers=workers, subset=subset, max_train_samples=17)
    truth = _truth(root, set_name, "train")
    in_half = [(i, lbl) for i, lbl in truth if lbl in dm.label_map]
    chosen = subset_train_indices(np.array([lbl for _, lbl in in_half]), subset, 17, seed=0)
    expected = [in_half[j] for j in chosen]
    assert dm.train_set.total == len(expected) == 17  # type: ignore[union-attr]
    seen = _audit_train(dm, expected, world)
    assert len(seen) == 17 // (world * 2) * world * 2
    val = _dm(root, split=SPLIT, batch=2, workers=0, max_val_samples=7)
    assert sum(len(ids) for ids, _ in _epoch(val, 0, 0, 1, train=False)) == 7


def test_a_rank_without_a_batch_is_a_user_error(layouts: dict[str, Path]) -> None:
    dm = _dm(layouts["few"], split=None, batch=100)  # 165 samples: one rank fills a batch, two ranks cannot
    assert len(_epoch(dm, 0, 0, 1)) == 1
    for rank in range(2):
        dm._context = lambda rank=rank: (0, rank, 2)  # type: ignore[method-assign]
        with pytest.raises(UserError, match="lower data.batch_size to at most 82"):
            dm.train_dataloader()


def test_an_index_without_labels_fails_clearly_where_it_would_size_the_epoch_wrongly(
        tmp_path: Path, layouts: dict[str, Path]) -> None:
    root = tmp_path / "old"
    root.mkdir()
    index = json.loads((layouts["few"] / "index.json").read_text())
    for part in ("train", "val"):
        for f in index["sets"]["all"][part]["files"]:
            f.pop("labels")
            f["url"] = str(layouts["few"] / f["name"])
    (root / "index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="predates per-sample labels.*re-index"):
        _dm(root, split=SPLIT)
    with pytest.raises(UserError, match="re-index"):
        _dm(root, split=None, subset={"per_class": 3})
    dm = _dm(root, split=None, workers=1)  # nothing filtered: the per-shard counts are enough
    _audit_train(dm, _truth(layouts["few"], "all", "train"), 2)


def test_a_corrupt_image_keeps_ranks_even_and_is_reported(tmp_path: Path, layouts: dict[str, Path],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A JPEG that only fails at decode leaves its slot one short: the slot repeats its previous sample."""
    src = layouts["one"] / "all" / "train-000000.tar"
    samples = list(read_samples(str(src)))[:40]
    victim = next(s for s in samples[5:] if "jpg" in s)
    victim["jpg"] = victim["jpg"][:30]
    tar_path = tmp_path / "train-0.tar"
    with tarfile.open(tar_path, "w") as tar:
        for sample in samples:
            for ext in (e for e in sample if not e.startswith("__")):
                info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                info.size = len(sample[ext])
                tar.addfile(info, io.BytesIO(sample[ext]))
    index_hub_shards([str(tar_path)], [str(tar_path)], tmp_path / "idx", classes=[f"c{c}" for c in range(6)])
    dm = _dm(tmp_path / "idx", split=None, batch=4, workers=1)
    per_rank = [_epoch(dm, 0, r, 2) for r in range(2)]
    assert [len(b) for b in per_rank] == [5, 5]
    seen = [i for batches in per_rank for ids, _ in batches for i in ids]
    bad_id = f"{tar_path}:{victim['__key__']}"
    assert bad_id not in seen and len(seen) == 40 and len(set(seen)) == 39  # one repeat
    dm._context = lambda: (0, 0, 2)  # type: ignore[method-assign]
    reported = [i for _, _, skipped, _ in dm.train_dataloader() for i in skipped]  # from the worker process
    dm._context = lambda: (0, 1, 2)  # type: ignore[method-assign]
    reported += [i for _, _, skipped, _ in dm.train_dataloader() for i in skipped]
    assert reported == [bad_id]

    shard = ShardStream(dm.train_set.shards, train=False, spec=dm.spec, batch_size=4,  # type: ignore[union-attr]
                        label_map=dm.label_map, seed=0, num_workers=0)
    skipped = [s for _, _, sk in shard for s in sk]
    assert skipped == [bad_id] and f"skipping sample {bad_id}" in caplog.text  # val: one sample fewer
