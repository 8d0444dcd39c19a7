"""Bytes -> batches: datasets, class splits and the loaders that feed the pipeline.

``dataset`` names where the classes come from (its own reader); ``loader`` may swap the reader for shards written
by ``mkf data write``: ``wds`` (webdataset tar shards) or ``ffcv`` (.beton files), read from ``shards``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from datamodules.errors import UserError

if TYPE_CHECKING:
    from datamodules.loaders.base import SplitDataModule


DATASETS = ("fashion_mnist", "mnist_5k", "image_folder")
LOADERS = ("default", "folder", "wds", "ffcv")
# DataConfig keys only the image loaders understand, with the defaults that mean "not used"
_IMAGE_KEYS = {"val_image_size": None, "scale": [0.08, 1.0], "crop_ratio": 224 / 256, "shuffle_buffer": 1000,
               "shards": None}
# loaders whose crop size is fixed when their workers start: progressive resizing is refused before any run dir
_FIXED_SIZE_LOADERS = {"ffcv": "loader ffcv", "folder": "loader folder"}


def _reject_unused(where: str, kwargs: dict[str, Any], keys: dict[str, Any]) -> None:
    """A knob that would be silently ignored is a mistake: say so instead."""
    for key, default in keys.items():
        value = kwargs.pop(key, default)
        if value != default and not (isinstance(value, list | tuple) and list(value) == default):
            raise UserError(f"data.{key} does not apply to {where}; remove it or pick a loader that uses it")


def build_datamodule(dataset: str, loader: str = "default", **kwargs: Any) -> SplitDataModule:
    """The datamodule for ``dataset`` (a name from :data:`DATASETS`) read by ``loader``, from a cell's ``data``."""
    if loader not in LOADERS:
        raise UserError(f"unknown data.loader {loader!r}; use one of {', '.join(LOADERS)}")
    fixed = _FIXED_SIZE_LOADERS.get("folder" if dataset == "image_folder" and loader in ("default", "folder")
                                    else loader)
    if kwargs.get("progressive") is not None and fixed:
        raise UserError(f"data.progressive is not supported by {fixed} (its crop size is fixed when its workers "
                        "start); use loader wds (or an in-memory dataset), or remove data.progressive")
    if kwargs.get("progressive") is None:
        kwargs.pop("progressive", None)
    if loader in ("wds", "ffcv"):
        # subset / max_train_samples / max_val_samples are passed through: both shard loaders choose them from
        # their index, seeded and stratified as datamodules.sources.subsets does for every loader
        if loader == "wds":
            from datamodules.loaders.wds import WebDatasetDataModule

            return WebDatasetDataModule(**kwargs)
        from datamodules.loaders.ffcv import FFCVDataModule

        kwargs.pop("shuffle_buffer", None)
        return FFCVDataModule(**kwargs)
    if dataset == "fashion_mnist":
        if loader == "folder":
            raise UserError("fashion_mnist has no folder reader; use loader default, or write shards (wds/ffcv)")
        from datamodules.loaders.memory import FashionMNISTDataModule

        _reject_unused("dataset fashion_mnist", kwargs, _IMAGE_KEYS)
        return FashionMNISTDataModule(**kwargs)
    if dataset == "mnist_5k":
        if loader == "folder":
            raise UserError("mnist_5k has no folder reader; use loader default, or write shards (wds/ffcv)")
        from datamodules.loaders.memory import MNIST5kDataModule

        _reject_unused("dataset mnist_5k", kwargs, _IMAGE_KEYS)
        return MNIST5kDataModule(**kwargs)
    if dataset == "image_folder":
        from datamodules.loaders.folder import ImageFolderDataModule

        _reject_unused("loader folder", kwargs, {"shuffle_buffer": 1000, "shards": None})
        return ImageFolderDataModule(**kwargs)
    raise UserError(f"unknown data.dataset {dataset!r}; use one of {', '.join(DATASETS)}")


def __getattr__(name: str) -> Any:
    """``datamodules.SplitDataModule`` on first use: importing the package (e.g. for UserError) stays torch-free."""
    if name == "SplitDataModule":
        from datamodules.loaders.base import SplitDataModule

        return SplitDataModule
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")


__all__ = ["DATASETS", "LOADERS", "SplitDataModule", "UserError", "build_datamodule"]
