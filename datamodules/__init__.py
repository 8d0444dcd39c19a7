"""Bytes -> batches: datasets, class splits and the loaders that feed the pipeline."""

from __future__ import annotations

from typing import Any

from datamodules.base import SplitDataModule
from datamodules.errors import UserError

DATASETS = ("fashion_mnist", "image_folder")


def build_datamodule(dataset: str, **kwargs: Any) -> SplitDataModule:
    """The datamodule for ``dataset`` (a name from :data:`DATASETS`), built from the cell's ``data`` section."""
    if dataset == "fashion_mnist":
        from datamodules.fashion_mnist import FashionMNISTDataModule

        return FashionMNISTDataModule(**kwargs)
    if dataset == "image_folder":
        from datamodules.image_folder import ImageFolderDataModule

        return ImageFolderDataModule(**kwargs)
    raise UserError(f"unknown data.dataset {dataset!r}; use one of {', '.join(DATASETS)}")


__all__ = ["DATASETS", "SplitDataModule", "UserError", "build_datamodule"]
