"""Sample-identity audits of the epoch contract for the in-memory, folder and FFCV loaders.

Long (~490 lines) because it is one grid over three loaders that share its id-carrying fixtures.

Every sample carries a recoverable id (in-memory: two pixels; folder and FFCV: one class per sample, so the
label is the id), and each test checks ids, not class counts: a training epoch is a permutation of the kept set
(no id twice, at most ``world * batch - 1`` dropped, every rank the same number of steps), the order changes with
the epoch and the seed, a mid-epoch restart continues the same permutation (batches before + after the restart ==
the uninterrupted epoch, ``len()`` unchanged), and validation scores every id exactly once across ranks.

Ranks are simulated one at a time in this process (``samplers.rank_and_world`` for the torch loaders, the
trainer's rank for FFCV), with real DataLoader worker processes (0, 1, 3) and real FFCV threads (1, 3); the
zero-batch error runs on two real gloo ranks.
"""

from __future__ import annotations

import json
import os
import pickle
import random
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from test_data_ddp import _free_port

from datamodules import build_datamodule
from datamodules.errors import UserError
from datamodules.loaders import samplers
from datamodules.loaders.folder import ImageFolderDataModule
from datamodules.loaders.memory import FashionMNISTDataModule

WORLDS = (1, 2, 4, 16)
WORKERS = (0, 1, 3)


# ---- what every audit checks ---------------------------------------------------------------------------------
def check_epoch(per_rank: list[list[list[int]]], kept: set[int], world: int, batch: int) -> list[int]:
    """``per_rank[r]`` = rank r's batches of ids in one epoch; returns the epoch's ids, checked against the contract."""
    steps = {len(batches) for batches in per_rank}
    assert len(steps) == 1 and steps != {0}, f"ranks ran {steps} steps"  # a rank that runs dry hangs DDP
    seen = [i for batches in per_rank for b in batches for i in b]
    assert len(seen) == len(set(seen)), "an id was trained twice in one epoch"
    assert set(seen) <= kept, f"ids outside the kept set: {sorted(set(seen) - kept)[:5]}"
    assert len(kept) - len(seen) <= world * batch - 1, f"{len(kept) - len(seen)} of {len(kept)} dropped"
    if len(kept) // world >= batch:
        assert all(len(b) == batch for batches in per_rank for b in batches)  # whole batches only
    return seen


def check_val(per_rank: list[list[int]], kept: set[int]) -> None:
    seen = [i for ids in per_rank for i in ids]
    assert sorted(seen) == sorted(kept), "validation must score every id exactly once across ranks"


# ---- in-memory (the Fashion-MNIST / MNIST datamodule) ----------------------------------------------------------
N_MEM, N_MEM_VAL, BATCH_MEM = 437, 61, 4
HALF_B = [5, 6, 7, 8, 9]


class IdDigits(FashionMNISTDataModule):
    """The real in-memory datamodule over 28x28 images whose pixels (0,0) and (0,1) spell the sample id."""

    class_names = tuple(str(d) for d in range(10))

    def _locate(self, root: str | None, download: bool) -> Path | None:
        return None

    def _arrays(self, part: str) -> tuple[np.ndarray, np.ndarray]:
        ids = np.arange(N_MEM if part == "train" else N_MEM_VAL)
        images = np.zeros((len(ids), 28, 28), dtype=np.uint8)
        images[:, 0, 0], images[:, 0, 1] = ids // 256, ids % 256
        return images, ids % 10


def mem_ids(images: torch.Tensor) -> list[int]:
    return (images[:, 0, 0, 0].long() * 256 + images[:, 0, 0, 1].long()).tolist()


MEM_KEPT = {i for i in range(N_MEM) if i % 10 in HALF_B}
MEM_VAL_KEPT = {i for i in range(N_MEM_VAL) if i % 10 in HALF_B}


def id_digits(**kwargs: Any) -> IdDigits:
    args = {"split": {"kind": "explicit", "a": [0, 1, 2, 3, 4], "b": HALF_B}, "half": "B",
            "batch_size": BATCH_MEM, "num_workers": 0, "seed": 0, **kwargs}
    dm = IdDigits(**args)
    dm.setup()
    return dm


def simulate(monkeypatch: pytest.MonkeyPatch, rank: int, world: int) -> None:
    monkeypatch.setattr(samplers, "rank_and_world", lambda: (rank, world))


def torch_epoch(monkeypatch: pytest.MonkeyPatch, loader: Any, world: int, epoch: int, ids: Any) -> list[list[list[int]]]:
    """One epoch of every simulated rank through the same DataLoader (persistent workers stay up)."""
    per_rank = []
    for rank in range(world):
        simulate(monkeypatch, rank, world)
        loader.sampler.set_epoch(epoch)  # what Lightning does before each epoch
        per_rank.append([ids(batch) for batch in loader])
    return per_rank


@pytest.mark.timeout(240)
def test_in_memory_epochs_are_permutations_for_ranks_and_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    orders: dict[tuple[int, int, int], list[int]] = {}
    for workers in WORKERS:
        dm = id_digits(num_workers=workers)
        for world in WORLDS:
            simulate(monkeypatch, 0, world)
            train, val = dm.train_dataloader(), dm.val_dataloader()
            for epoch in (0, 1):
                per_rank = torch_epoch(monkeypatch, train, world, epoch, lambda b: mem_ids(b[0]))
                assert [len(b) for b in per_rank] == [len(train)] * world
                orders[workers, world, epoch] = check_epoch(per_rank, MEM_KEPT, world, BATCH_MEM)
            val_ids = []
            for rank in range(world):
                simulate(monkeypatch, rank, world)
                val_ids.append([i for x, _ in val for i in mem_ids(x)])
            check_val(val_ids, MEM_VAL_KEPT)
    assert orders[0, 4, 0] != orders[0, 4, 1]  # a new order each epoch
    assert all(orders[w, 4, 1] == orders[0, 4, 1] for w in WORKERS)  # the workers never change the order
    simulate(monkeypatch, 0, 1)
    other_seed = id_digits(seed=1).train_dataloader()
    assert [i for x, _ in other_seed for i in mem_ids(x)] != orders[0, 1, 0]  # and each seed


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [0, 3])
def test_in_memory_resume_at_a_random_batch_continues_the_permutation(monkeypatch: pytest.MonkeyPatch,
                                                                       workers: int) -> None:
    world, epoch = 4, 3
    rng = random.Random(workers)
    dm = id_digits(num_workers=workers)
    simulate(monkeypatch, 0, world)
    uninterrupted = torch_epoch(monkeypatch, dm.train_dataloader(), world, epoch, lambda b: mem_ids(b[0]))
    per_rank = []
    for rank in range(world):
        k = rng.randrange(1, len(uninterrupted[rank]))  # the batch the job was preempted after
        simulate(monkeypatch, rank, world)
        restarted = id_digits(num_workers=workers)  # a fresh process: new datamodule, position from the checkpoint
        restarted.position.set(epoch, k)
        loader = restarted.train_dataloader()
        loader.sampler.set_epoch(epoch)
        after = [mem_ids(x) for x, _ in loader]
        assert len(loader) == len(uninterrupted[rank]) == k + len(after)  # Lightning counts k + what it fetches
        assert uninterrupted[rank][:k] + after == uninterrupted[rank]
        per_rank.append(uninterrupted[rank][:k] + after)
    check_epoch(per_rank, MEM_KEPT, world, BATCH_MEM)


# ---- folder (ImageFolder of real PNGs, one class per sample: the label is the id) ------------------------------
N_FOLDER, BATCH_FOLDER = 97, 3


@pytest.fixture(scope="module")
def id_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("id_tree")
    rng = np.random.default_rng(0)
    for i in range(N_FOLDER):
        for part in ("train", "val"):
            folder = root / part / f"c{i:03d}"
            folder.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def folder_dm(root: Path, **kwargs: Any) -> ImageFolderDataModule:
    args = {"root": str(root), "split": None, "image_size": 8, "batch_size": BATCH_FOLDER, "num_workers": 0,
            "seed": 0, **kwargs}
    dm = ImageFolderDataModule(**args)
    dm.setup()
    return dm


@pytest.mark.timeout(240)
def test_folder_epochs_are_permutations_and_resume_with_seeded_workers(id_tree: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    everything = set(range(N_FOLDER))
    firsts: dict[int, list[int]] = {}
    for workers in WORKERS:
        dm = folder_dm(id_tree, num_workers=workers)
        for world in WORLDS:
            simulate(monkeypatch, 0, world)
            train, val = dm.train_dataloader(), dm.val_dataloader()
            for epoch in (0, 1):
                per_rank = torch_epoch(monkeypatch, train, world, epoch, lambda b: b[1].tolist())
                seen = check_epoch(per_rank, everything, world, BATCH_FOLDER)
                if world == 1:
                    firsts[2 * workers + epoch] = seen
            val_ids = []
            for rank in range(world):
                simulate(monkeypatch, rank, world)
                val_ids.append([i for _, y in val for i in y.tolist()])
            check_val(val_ids, everything)
    assert firsts[0] != firsts[1] and firsts[0] == firsts[2] == firsts[6]  # per epoch, not per worker count
    # workers started by spawn or forkserver (Python 3.14's default) receive the dataset pickled
    simulate(monkeypatch, 0, 1)
    dataset = pickle.loads(pickle.dumps(folder_dm(id_tree, split={"kind": "explicit", "a": [0], "b": [5]})
                                        .train_dataloader().dataset))
    assert dataset[(0, 0)][1] == 0

    # a restart after a random batch, 3 workers on 2 ranks: same ids *and* the same augmented pixels
    # (SeededSamples seeds each sample's crop by (seed, epoch, index), whatever worker draws it)
    world, epoch, rng = 2, 1, random.Random(1)
    dm = folder_dm(id_tree, num_workers=3)
    simulate(monkeypatch, 0, world)
    train = dm.train_dataloader()
    for rank in range(world):
        simulate(monkeypatch, rank, world)
        train.sampler.set_epoch(epoch)
        full = list(train)
        k = rng.randrange(1, len(full))
        restarted = folder_dm(id_tree, num_workers=3)
        restarted.position.set(epoch, k)
        loader = restarted.train_dataloader()
        loader.sampler.set_epoch(epoch)
        after = list(loader)
        assert len(loader) == len(full) == k + len(after)
        assert [y.tolist() for _, y in full[k:]] == [y.tolist() for _, y in after]
        assert all(torch.equal(a[0], b[0]) for a, b in zip(full[k:], after, strict=True))


# ---- FFCV (.beton written by FFCV's own DatasetWriter, label = id) ---------------------------------------------
N_FFCV, N_FFCV_VAL, BATCH_FFCV = 207, 37, 4
# explicit split: the odd ids are half B, an "all" set filtered to it. 103 kept: on 2 ranks a padded split
# (DistributedSampler, drop_last=False) gives each rank 52 = 13 whole batches, one of them repeating an id
FFCV_HALF_B = list(range(1, N_FFCV, 2))


def write_beton(path: Path, labels: list[int], size: int = 8) -> None:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    class Source:
        def __len__(self) -> int:
            return len(labels)

        def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
            return np.full((size, size, 3), i % 256, dtype=np.uint8), labels[i]

    path.parent.mkdir(parents=True, exist_ok=True)
    DatasetWriter(str(path), {"image": RGBImageField(write_mode="raw"), "label": IntField()},
                  num_workers=1).from_indexed_dataset(Source())


def write_index(root: Path, classes: list[str]) -> None:
    from datamodules.shards.writer import INDEX_VERSION

    sets = {"all": {part: {"files": [{"name": f"all/{part}.beton"}]} for part in ("train", "val")}}
    (root / "index.json").write_text(json.dumps({"version": INDEX_VERSION, "format": "ffcv", "classes": classes,
                                                 "split": None, "sets": sets}))


@pytest.fixture(scope="module")
def id_beton(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("ffcv")  # the tests using it require ffcv_installed, which fails CI when it is missing
    root = tmp_path_factory.mktemp("id_beton")
    write_beton(root / "all/train.beton", list(range(N_FFCV)))
    write_beton(root / "all/val.beton", list(range(N_FFCV_VAL)))
    write_index(root, [f"c{i:03d}" for i in range(N_FFCV)])
    return root


def fake_trainer(rank: int, world: int, epoch: int) -> SimpleNamespace:
    return SimpleNamespace(global_rank=rank, world_size=world, current_epoch=epoch,
                           strategy=SimpleNamespace(root_device=torch.device("cpu")))


def ffcv_dm(root: Path, rank: int = 0, world: int = 1, epoch: int = 0, **kwargs: Any) -> Any:
    from datamodules.loaders.ffcv import FFCVDataModule

    args = {"shards": str(root), "split": {"kind": "explicit", "a": list(range(0, N_FFCV, 2)), "b": FFCV_HALF_B},
            "half": "B", "image_size": 8, "batch_size": BATCH_FFCV, "num_workers": 1, "seed": 0, **kwargs}
    dm = FFCVDataModule(**args)
    dm.trainer = fake_trainer(rank, world, epoch)
    dm.setup()
    return dm


def ffcv_ids(dm: Any, batch: Any) -> list[int]:
    return [int(dm.class_names[j][1:]) for j in dm.on_before_batch_transfer(batch, 0)[1].tolist()]


def ffcv_epoch(dm: Any, loader: Any, world: int, epoch: int) -> list[list[list[int]]]:
    """Every simulated rank's batches through one compiled Loader: its order is rank 0's plan, re-aimed per rank
    (``order.rank``); FFCV compiles a pipeline per Loader (seconds), so one Loader per (world, threads)."""
    per_rank = []
    for rank in range(world):
        loader.order.rank = rank
        dm.trainer.current_epoch = epoch
        per_rank.append([ffcv_ids(dm, batch) for batch in loader])
    loader.order.rank = 0
    return per_rank


@pytest.mark.usefixtures("ffcv_installed")
@pytest.mark.timeout(300)
def test_ffcv_epochs_are_permutations_resume_and_exact_val(id_beton: Path) -> None:
    from datamodules.loaders.ffcv import plan_epoch

    kept = set(FFCV_HALF_B)
    epochs: dict[tuple[int, int], list[list[list[int]]]] = {}
    # FFCV compiles its pipeline per Loader (seconds each): one Loader per world size, threads alternating
    for world, threads in ((1, 1), (2, 3), (4, 1), (16, 3)):
        dm = ffcv_dm(id_beton, world=world, num_workers=threads)
        loader = dm.train_dataloader()
        assert loader.loader.num_workers == min(threads, os.cpu_count() or 1)  # numba allows no more threads
        for rank in (0, world - 1):  # the datamodule aims each rank's loader at its own share
            dm.trainer = fake_trainer(rank, world, 0)
            assert dm.train_dataloader().order.rank == rank
        dm.trainer = fake_trainer(0, world, 0)
        for epoch in (0, 1):
            per_rank = epochs[world, epoch] = ffcv_epoch(dm, loader, world, epoch)
            assert [len(b) for b in per_rank] == [len(loader)] * world
            check_epoch(per_rank, kept, world, BATCH_FFCV)
            for rank, batches in enumerate(per_rank):  # the batches are the plan's, whatever the thread count
                assert sum(batches, []) == plan_epoch(dm.indices["train"], 0, epoch, rank, world, BATCH_FFCV).tolist()
    assert epochs[2, 0] != epochs[2, 1]  # a new order each epoch
    indices = dm.indices["train"]
    assert plan_epoch(indices, 1, 0, 0, 1, BATCH_FFCV).tolist() != plan_epoch(indices, 0, 0, 0, 1, BATCH_FFCV).tolist()

    # a restart after a random batch (rank 1 of 2, epoch 1): a fresh datamodule whose position came from the
    # checkpoint continues after the k trained batches; FFCV alone would restart the epoch from its first batch
    world, epoch = 2, 1
    uninterrupted = epochs[world, epoch][1]
    k = random.Random(2).randrange(1, len(uninterrupted))
    restarted = ffcv_dm(id_beton, rank=1, world=world, epoch=epoch)
    restarted.position.set(epoch, k)
    loader = restarted.train_dataloader()
    after = [ffcv_ids(restarted, b) for b in loader]
    assert len(loader) == len(uninterrupted) == k + len(after)  # Lightning counts k + what it fetches
    assert uninterrupted[:k] + after == uninterrupted
    assert [ffcv_ids(restarted, b) for b in loader] == uninterrupted  # the next pass of that epoch: whole again

    # validation on 2 ranks (18 kept ids of 37: no padding to even them): every kept id exactly once
    val_ids = []
    for rank in range(2):
        dm = ffcv_dm(id_beton, rank=rank, world=2)
        val_ids.append([i for b in dm.val_dataloader() for i in ffcv_ids(dm, b)])
    check_val(val_ids, {i for i in range(N_FFCV_VAL) if i % 2})


class _IdRecorder(L.LightningModule):
    """A linear model that records, per epoch, the ids of the samples each training step sees."""

    def __init__(self, dm: Any) -> None:
        super().__init__()
        self.dm, self.layer = dm, torch.nn.Linear(3 * 8 * 8, 2)
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.seen.setdefault(self.current_epoch, []).extend(int(self.dm.class_names[j][1:]) for j in y.tolist())
        return self.layer(x.flatten(1)).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


@pytest.mark.usefixtures("ffcv_installed")
@pytest.mark.timeout(240)
def test_ffcv_resume_through_lightning_trains_each_sample_once(id_beton: Path, tmp_path: Path) -> None:
    """The real fit loop: stopped after a random batch of epoch 1, resumed from that checkpoint by a fresh trainer
    and datamodule; the steps before and after train epoch 1's permutation once (Lightning ends the epoch at
    ``len()``, counting the restored batches)."""
    from datamodules.loaders.ffcv import plan_epoch
    from pipeline.training.resume import TrainingState

    def fit(max_steps: int, ckpt: Path | None) -> tuple[Any, _IdRecorder]:
        dm = ffcv_dm(id_beton)
        dm.trainer = None
        model = _IdRecorder(dm)
        checkpoints = L.pytorch.callbacks.ModelCheckpoint(tmp_path, every_n_train_steps=max(max_steps, 0),
                                                          save_top_k=-1)
        trainer = L.Trainer(max_epochs=2, max_steps=max_steps, accelerator="cpu", logger=False, limit_val_batches=0,
                            enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                            callbacks=[TrainingState(dm.position), checkpoints])
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
        return dm, model

    planned = [plan_epoch(ffcv_dm(id_beton).indices["train"], 0, e, 0, 1, BATCH_FFCV).tolist() for e in (0, 1)]
    n = len(planned[0]) // BATCH_FFCV
    k = random.Random(3).randrange(1, n)
    dm, first = fit(n + k, None)
    assert len(dm.train_dataloader()) == n
    (ckpt,) = tmp_path.glob(f"*step={n + k}.ckpt")
    _, second = fit(-1, ckpt)
    assert first.seen[0] == planned[0] and first.seen[1] == planned[1][: k * BATCH_FFCV]
    assert list(second.seen) == [1] and first.seen[1] + second.seen[1] == planned[1]



# ---- FFCV augmentation: a sample's crop and flip are a function of (seed, epoch, id) --------------------------
N_TEX = 48  # textured 16 px images (noise, so every crop and flip changes the pixels), label = id, all classes


@pytest.fixture(scope="module")
def textured_beton(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    pytest.importorskip("ffcv")
    root = tmp_path_factory.mktemp("textured_beton")

    class Source:
        def __init__(self, n: int) -> None:
            self.n = n

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
            return np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8), i

    for part, n in (("train", N_TEX), ("val", 8)):
        (root / "all").mkdir(exist_ok=True)
        DatasetWriter(str(root / "all" / f"{part}.beton"), {"image": RGBImageField(write_mode="raw"),
                                                            "label": IntField()},
                      num_workers=1).from_indexed_dataset(Source(n))
    write_index(root, [f"c{i:03d}" for i in range(N_TEX)])
    return root


def ffcv_pixel_pass(dm: Any, loader: Any) -> list[tuple[list[int], np.ndarray]]:
    return [(ffcv_ids(dm, batch), batch[0].numpy().copy()) for batch in loader]


def assert_same_batches(got: list[tuple[list[int], np.ndarray]], want: list[tuple[list[int], np.ndarray]]) -> None:
    assert [ids for ids, _ in got] == [ids for ids, _ in want]
    for b, ((_, x), (_, y)) in enumerate(zip(got, want, strict=True)):
        assert np.array_equal(x, y), f"batch {b}: crops/flips differ from the uninterrupted pass"


@pytest.mark.usefixtures("ffcv_installed")
@pytest.mark.timeout(240)
def test_ffcv_resumed_pass_draws_the_uninterrupted_crops_and_flips(textured_beton: Path) -> None:
    """Pixels, not ids: with 2 decoding threads, a pass restarted after batch k yields exactly batches k.. of the
    uninterrupted pass, crops and flips included; a second pass of the same epoch and 1 thread draw the same.
    FFCV's own draws come from numba's per-thread random state, seeded from OS entropy: they never repeat."""
    def dm_for(threads: int) -> Any:
        return ffcv_dm(textured_beton, epoch=1, split=None, num_workers=threads)

    dm = dm_for(2)
    loader = dm.train_dataloader()
    assert loader.loader.num_workers == min(2, os.cpu_count() or 1)
    uninterrupted = ffcv_pixel_pass(dm, loader)
    assert len(uninterrupted) == N_TEX // BATCH_FFCV
    assert_same_batches(ffcv_pixel_pass(dm, loader), uninterrupted)  # the same epoch again: the same draws

    k = random.Random(4).randrange(1, len(uninterrupted))
    restarted = dm_for(2)
    restarted.position.set(1, k)
    assert_same_batches(ffcv_pixel_pass(restarted, restarted.train_dataloader()), uninterrupted[k:])

    single = dm_for(1)  # the thread count changes nothing
    assert_same_batches(ffcv_pixel_pass(single, single.train_dataloader()), uninterrupted)

    # the augmentation is real and changes with the epoch: a sample's pixels differ between epochs 0 and 1
    dm.trainer.current_epoch = 0
    epoch0 = {i: x for ids, xs in ffcv_pixel_pass(dm, loader) for i, x in zip(ids, xs, strict=True)}
    epoch1 = {i: x for ids, xs in uninterrupted for i, x in zip(ids, xs, strict=True)}
    assert sum(not np.array_equal(epoch0[i], epoch1[i]) for i in epoch1) > 0.8 * len(epoch1)

# ---- subsets: the FFCV loader picks the images the folder loader picks ----------------------------------------
@pytest.mark.usefixtures("ffcv_installed")
def test_ffcv_subset_and_caps_match_the_folder_loader(tmp_path: Path) -> None:
    """A folder tree and a .beton written in the folder's sample order (same labels, same positions): subset,
    max_train_samples and max_val_samples keep the same images, stratified, after the same class-half filter."""
    counts = [7, 12, 5, 9, 16, 3]
    rng = np.random.default_rng(0)
    for c, n in enumerate(counts):
        for part in ("train", "val"):
            folder = tmp_path / "tree" / part / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    from torchvision.datasets import ImageFolder

    for part in ("train", "val"):
        write_beton(tmp_path / "beton" / "all" / f"{part}.beton", ImageFolder(str(tmp_path / "tree" / part)).targets)
    write_index(tmp_path / "beton", [f"c{c}" for c in range(len(counts))])
    split = {"kind": "explicit", "a": [0, 2], "b": [1, 3, 4, 5]}
    for kwargs in ({"subset": {"fraction": 0.5, "seed": 3}}, {"subset": {"per_class": 4}, "max_train_samples": 9},
                   {"max_train_samples": 11, "max_val_samples": 13}):
        folder = folder_dm(tmp_path / "tree", split=split, **kwargs)
        ffcv = build_datamodule("image_folder", loader="ffcv", shards=str(tmp_path / "beton"), split=split,
                                image_size=8, batch_size=4, num_workers=1, **kwargs)  # as a cell's data builds it
        ffcv.setup()
        assert ffcv.indices["train"].tolist() == folder.train_set.indices  # type: ignore[union-attr]
        assert ffcv.indices["val"].tolist() == folder.val_set.indices  # type: ignore[union-attr]
        assert ffcv.describe()["subset"] == kwargs.get("subset")
    targets = np.asarray(ImageFolder(str(tmp_path / "tree" / "train")).targets)
    chosen = targets[ffcv_dm(tmp_path / "beton", split=split, subset={"fraction": 0.5}).indices["train"]]
    assert np.bincount(chosen, minlength=6).tolist() == [0, 6, 0, 4, 8, 2]  # half of each class of half B


# ---- a run that cannot train is an error: two real gloo ranks ---------------------------------------------------
def _zero_batch_rank(rank: int, world: int, port: int, beton: str, tree: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=120))
    record: dict[str, Any] = {}

    def attempt(name: str, make: Any) -> None:
        try:
            loader = make()
            record[name] = {"batches": len(loader), "ids": [len(b[1]) for b in loader]}
        except UserError as exc:
            record[name] = {"error": str(exc)}

    # 6 kept samples, batch 4: each rank's share (3) is below one batch; all of it was dropped before the fix
    attempt("memory_short", lambda: _prepared(IdDigits(split={"kind": "explicit", "a": [0], "b": [1]}, half="B",
                                                        batch_size=4, max_train_samples=6)).train_dataloader())
    attempt("memory_empty", lambda: _prepared(IdDigits(split={"kind": "explicit", "a": [0], "b": [1]}, half="B",
                                                        batch_size=4, max_train_samples=1)).train_dataloader())
    attempt("folder_short", lambda: _prepared(ImageFolderDataModule(root=tree, image_size=8, batch_size=4,
                                                                    max_train_samples=6, num_workers=0)).train_dataloader())
    attempt("folder_empty", lambda: _prepared(ImageFolderDataModule(root=tree, image_size=8, batch_size=4,
                                                                    max_train_samples=1, num_workers=0)).train_dataloader())

    def ffcv_loader() -> Any:
        from datamodules.loaders.ffcv import FFCVDataModule

        return _prepared(FFCVDataModule(shards=beton, image_size=8, batch_size=4, max_train_samples=7,
                                        num_workers=1)).train_dataloader()

    attempt("ffcv_short", ffcv_loader)
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()


def _prepared(dm: Any) -> Any:
    dm.setup()
    return dm


@pytest.mark.usefixtures("ffcv_installed")
@pytest.mark.timeout(240)
def test_two_ranks_never_get_an_empty_epoch(id_tree: Path, id_beton: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(_zero_batch_rank, args=(2, _free_port(), str(id_beton), str(id_tree), str(tmp_path)), nprocs=2,
             join=True)
    for rank in (0, 1):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for name in ("memory_short", "folder_short"):  # a share below one batch trains one short batch
            assert record[name] == {"batches": 1, "ids": [3]}, (name, record[name])
        for name, fix in (("memory_empty", "use fewer ranks"), ("folder_empty", "use fewer ranks"),
                          ("ffcv_short", "lower data.batch_size or use fewer ranks")):
            error = record[name].get("error", "")
            assert "each of 2 ranks" in error and fix in error and "\n" not in error, (name, record[name])
