"""Datamodules on real images: Fashion-MNIST's IDX files and an ImageNet-layout folder of real JPEGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import build_datamodule
from datamodules.loaders.memory import fashion_batch_transform
from datamodules.sources.fashion_mnist import CLASS_NAMES, read_idx


@pytest.mark.usefixtures("fashion_root")
def test_fashion_mnist_half_has_only_its_classes_relabelled() -> None:
    dm = build_datamodule("fashion_mnist", split={"kind": "random_halves", "seed": 0}, half="A",
                          max_train_samples=1000, batch_size=100)
    dm.setup()
    assert dm.num_classes == 5 and set(dm.class_names) <= set(CLASS_NAMES)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (100, 1, 28, 28)
    assert labels.min() >= 0 and labels.max() <= 4
    assert len(dm.val_set) == 5000  # 1000 test images per class
    x = fashion_batch_transform(images, 32, train=True)
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.float32
    assert abs(float(x.mean())) < 1.0


def test_truncated_idx_file_is_reported(tmp_path: Path) -> None:
    from datamodules.errors import UserError

    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x10" + b"\x01" * 3)
    with pytest.raises(UserError, match="truncated"):
        read_idx(path)


def _jpeg_tree(root: Path, classes: list[str], per_class: int) -> None:
    """A small ImageNet-layout tree of real JPEGs (Fashion-MNIST pictures, upscaled to RGB)."""
    from datamodules.loaders.memory import FashionMNISTDataModule

    dm = FashionMNISTDataModule(max_train_samples=len(classes) * per_class * 2)
    dm.setup()
    images = dm.train_set.tensors[0].numpy()  # type: ignore[union-attr]
    for part in ("train", "val"):
        for c, wnid in enumerate(classes):
            folder = root / part / wnid
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = images[(c * per_class + i) % len(images), 0]
                rgb = np.stack([pixels] * 3, axis=-1)
                Image.fromarray(rgb).resize((80, 60)).save(folder / f"{wnid}_{i}.JPEG", quality=90)


@pytest.mark.usefixtures("fashion_root")
def test_image_folder_reads_real_jpegs_with_split_and_augmentation(tmp_path: Path) -> None:
    classes = [f"n{i:08d}" for i in range(6)]
    _jpeg_tree(tmp_path, classes, per_class=3)
    dm = build_datamodule("image_folder", root=str(tmp_path), split={"kind": "explicit", "a": [0, 1, 2],
                          "b": [3, 4, 5]}, half="B", image_size=32, batch_size=4, num_workers=0)
    dm.setup()
    assert dm.class_names == tuple(classes[3:])
    assert len(dm.train_set) == 9 and len(dm.val_set) == 9
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert set(y.tolist()) <= {0, 1, 2}
    xt, _ = next(iter(dm.train_dataloader()))
    assert xt.shape == (4, 3, 32, 32)
