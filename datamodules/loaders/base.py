"""What every classification datamodule of this project shares: a class split, a half, remapped labels.

Subclasses say where the images come from; this base owns *which* classes a run sees and how labels are
numbered, so base and transfer cells agree on it whatever the storage format.

It also owns the torch DataLoader of the map-style loaders (folder, in-memory), and with it their share of the
epoch contract (datamodules.loaders.samplers): training order from :class:`EpochShuffleSampler` (one seeded permutation
per epoch, equal disjoint rank shares, a resumed epoch continued after its trained batches), validation from
:class:`RankStridedSampler` (each sample on one rank, once). ``drop_last`` is decided on the *rank's* share, not
the whole set: a share of at least one batch trains whole batches only, a smaller share trains one short batch
(it was all dropped under DDP before, and Lightning then ended ``fit`` at once on an empty epoch), and a set too
small to give every rank one sample is a :class:`UserError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from datamodules.errors import UserError
from datamodules.loaders import samplers
from datamodules.loaders.samplers import (
    EpochShuffleSampler,
    RankStridedSampler,
    ResumePosition,
    check_trainable,
)
from datamodules.loaders.workers import ignore_preemption_signals
from datamodules.sources.splits import ClassSplit, make_split


class SeededSamples(Dataset):
    """Per-sample augmentation randomness that is a function of (seed, epoch, index) inside loader workers.

    A worker's generators are seeded once per iterator, so after a mid-epoch resume (which skips the batches
    already trained) its crops and RandAugment ops would differ from an uninterrupted run's. Seeding torch, Python
    and NumPy per sample makes them the same, and independent of the worker count. In the training process itself
    (``num_workers: 0``) nothing is reseeded: its generators are the ones a checkpoint restores.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, epoch = key
        if get_worker_info() is not None:
            from datamodules.loaders.augment import seed_batch_rngs

            seed_batch_rngs(hash((self.seed, epoch, index)) & 0x7FFFFFFF)
        return self.dataset[index]


class SplitDataModule(L.LightningDataModule):
    """A LightningDataModule restricted to one half of a :class:`ClassSplit`, labels remapped to 0..k-1."""

    seed_per_sample = False  # per-image augmentation in loader workers: seed it per sample (see SeededSamples)
    # FFCV-style progressive resizing (datamodules.progressive): loaders that crop each epoch at its own resolution
    progressive_supported = False

    def __init__(
        self,
        all_class_names: Sequence[str],
        split: dict[str, Any] | None = None,
        half: str = "B",
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise UserError(f"data.batch_size must be >= 1, got {batch_size}")
        self.split: ClassSplit = make_split(split, all_class_names)
        self.half = half
        self.class_names: tuple[str, ...] = self.split.classes(half)
        self.all_class_names = tuple(all_class_names)
        # original dataset label -> label 0..k-1 of this run
        self.label_map: dict[int, int] = {
            self.all_class_names.index(name): i for i, name in enumerate(self.class_names)
        }
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: Dataset | None = None
        self.full_train_samples: int | None = None  # set by setup(): the training set without data.subset
        # restored from a checkpoint by pipeline.training.resume.DataPosition, read by the training sampler
        self.position = ResumePosition()
        self.val_set: Dataset | None = None
        self.progressive: dict[str, Any] | None = None  # set_progressive(); None = one training resolution

    def set_progressive(self, spec: dict[str, Any] | None) -> None:
        """Ramp the training resolution per epoch (``data.progressive``, already stretched to a budget), or a
        one-line UserError for a loader that cannot."""
        if spec is not None and not self.progressive_supported:
            raise UserError(f"data.progressive is not supported by {type(self).__name__} (its crop size is fixed "
                            "when its workers start); use loader wds or an in-memory dataset, or remove "
                            "data.progressive")
        self.progressive = spec

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict[str, Any]:
        """What result.json records about the data: the split, the half and the class mapping."""
        return {
            "split": self.split.to_json(),
            "half": self.half,
            "class_mapping": {name: i for i, name in enumerate(self.class_names)},
            "train_samples": len(self.train_set) if self.train_set is not None else None,
            "val_samples": len(self.val_set) if self.val_set is not None else None,
        }

    def data_sources(self) -> dict[str, list[str]]:
        """Where the training and the validation samples are read from (files, folders, shards): the protocol
        audit checks that no validation source is ever a training source. Subclasses name their own."""
        return {}

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a loader")
        size = len(dataset)  # type: ignore[arg-type]
        world = samplers.rank_and_world()[1]  # Lightning asks for loaders after the process group exists
        per_rank = size // world
        if train:
            check_trainable(size, world, self.batch_size, full_batches=False, where=type(self).__name__)
        seeded = train and self.seed_per_sample
        sampler = (EpochShuffleSampler(size, self.seed, self.batch_size, self.position, tag_epoch=seeded) if train
                   else RankStridedSampler(size))
        if seeded:
            dataset = SeededSamples(dataset, self.seed)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            # whole batches only when the rank's share holds one (under DDP every rank has the same share, so the
            # same number of steps); a smaller share is one short batch rather than an empty epoch
            drop_last=train and per_rank >= self.batch_size,
            num_workers=self.num_workers,
            worker_init_fn=ignore_preemption_signals,  # the trainer decides when to stop on a preemption
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            # its own generator: creating an iterator must not draw from the global RNG that a resumed run
            # restores (augmentation and dropout use it)
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)
