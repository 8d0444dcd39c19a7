"""ImageNet-layout folders: ``ROOT/train/<wnid>/*.JPEG`` and ``ROOT/val/<wnid>/*.JPEG``.

The class list is the sorted folder names (the standard ILSVRC-2012 order when the folders are wnids), which
is what Yosinski's man-made/natural split indexes into.

The epoch contract (datamodules.loaders.samplers, kept by the base's DataLoader): each training epoch is one seeded
permutation of the kept images, split into equal disjoint rank shares, continued after the trained batches on a
mid-epoch resume; validation scores each image once across ranks. Which images are kept is the class-split half,
then ``data.subset`` / ``max_*_samples`` (seeded, stratified: datamodules.sources.subsets), the same choice the FFCV loader
makes from the same labels. Crops are seeded per sample (SeededSamples), so loader workers do not change them,
and the dataset pickles (no lambdas): DataLoader workers under a spawn or forkserver start method receive it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Subset
from torchvision import datasets
from torchvision.transforms import v2

from datamodules.errors import UserError
from datamodules.loaders.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentSpec,
    torchvision_train_transform,
    torchvision_val_transform,
)
from datamodules.loaders.base import SplitDataModule
from datamodules.sources.subsets import cap_indices, reference_train_count, subset_train_indices

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageFolderDataModule", "train_transform", "val_transform"]


def train_transform(image_size: int, scale: tuple[float, float] = (0.08, 1.0)) -> v2.Compose:
    """Train-time augmentation of the shared contract (datamodules.loaders.augment): RandomResizedCrop + flip."""
    return torchvision_train_transform(AugmentSpec(train_resolution=image_size, scale=scale))


def val_transform(image_size: int, crop_ratio: float = 224 / 256) -> v2.Compose:
    """Evaluation: resize the short side to image_size / crop_ratio, then a centre crop."""
    return torchvision_val_transform(AugmentSpec(val_resolution=image_size, crop_ratio=crop_ratio))


class _Relabel:
    """Original class index -> this run's label; a class, not a lambda, so the dataset pickles into workers."""

    def __init__(self, label_map: dict[int, int]) -> None:
        self.label_map = label_map

    def __call__(self, y: int) -> int:
        return self.label_map[y]


def _class_folders(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir())


class ImageFolderDataModule(SplitDataModule):
    """Class-folder trees (ImageNet, its halves, any cross-domain set laid out the same way)."""

    seed_per_sample = True  # crops and RandAugment in workers resume exactly mid-epoch

    def __init__(
        self,
        root: str | None = None,
        split: dict[str, Any] | None = None,
        half: str = "B",
        image_size: int = 224,
        batch_size: int = 128,
        num_workers: int = 4,
        max_train_samples: int | None = None,
        max_val_samples: int | None = None,
        seed: int = 0,
        val_image_size: int | None = None,
        scale: tuple[float, float] | list[float] = (0.08, 1.0),
        crop_ratio: float = 224 / 256,
        subset: dict[str, Any] | None = None,
        interpolation: str = "bilinear",
        rand_augment: str | None = None,
    ) -> None:
        if root is None:
            raise UserError("data.root is required for dataset image_folder; set it to a folder with train/ and val/")
        self.root = Path(root)
        for part in ("train", "val"):
            if not (self.root / part).is_dir():
                raise UserError(f"{self.root / part} is not a folder; image_folder needs ROOT/train and ROOT/val")
        classes = _class_folders(self.root / "train")
        if not classes:
            raise UserError(f"{self.root / 'train'} has no class folders; expected one folder per class")
        missing = sorted(set(classes) - set(_class_folders(self.root / "val")))
        if missing:
            raise UserError(f"{self.root / 'val'} lacks class folders {missing[:5]}; train and val need the same classes")
        super().__init__(classes, split, half, batch_size, num_workers, seed)
        self.image_size = image_size
        self.spec = AugmentSpec(train_resolution=image_size, val_resolution=val_image_size or image_size,
                                scale=(float(scale[0]), float(scale[1])), crop_ratio=crop_ratio,
                                interpolation=interpolation, rand_augment=rand_augment)
        torchvision_train_transform(self.spec)  # a bad RandAugment string fails here, before any run dir exists
        self.max_train_samples = max_train_samples
        self.max_val_samples = max_val_samples
        self.subset = subset

    def _load(self, part: str, train: bool, limit: int | None) -> Subset:
        label_map = self.label_map
        folder = datasets.ImageFolder(
            str(self.root / part),
            transform=torchvision_train_transform(self.spec) if train else torchvision_val_transform(self.spec),
            target_transform=_Relabel(label_map),
        )
        targets = np.asarray(folder.targets)
        index = np.flatnonzero(np.isin(targets, list(label_map)))
        # seeded and class-stratified (datamodules.sources.subsets), never "the first N files", i.e. the first classes
        if train:
            self.full_train_samples = reference_train_count(len(index), limit)
            index = index[subset_train_indices(targets[index], self.subset, limit, self.seed)]
        else:
            index = index[cap_indices(targets[index], limit, self.seed)]
        if not len(index):
            raise UserError(f"{self.root / part} has no images of the selected classes; check data.split/half")
        return Subset(folder, index.tolist())

    def data_sources(self) -> dict[str, list[str]]:
        # resolved: a val/ that is a link to train/ is the same images, and the audit must see that
        return {"train": [str((self.root / "train").resolve())], "val": [str((self.root / "val").resolve())]}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._load("train", True, self.max_train_samples)
            self.val_set = self._load("val", False, self.max_val_samples)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "subset": self.subset}
