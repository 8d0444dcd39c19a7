"""Fashion-MNIST's files: where the IDX files are (data.root, Debian's package, torchvision's cache) and how to
read them. The in-memory datamodule that trains on them is ``datamodules.loaders.memory``; the shard writer's
``fashion_mnist`` layout reads the same files through here.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from datamodules.errors import UserError

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
