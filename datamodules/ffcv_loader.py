"""FFCV .beton files (written by ``mkf data write --format ffcv``) as a class-split datamodule.

Train: ``RandomResizedCropRGBImageDecoder`` + flip, ``OrderOption.RANDOM`` with ``distributed=True`` under DDP
(FFCV's own DistributedSampler: equal batches on every rank, ``drop_last``). The Loader is built in
``train_dataloader()``, which Lightning calls after the process group exists, and it is not a torch DataLoader, so
Lightning never injects a sampler of its own. The epoch is taken from the trainer before each pass, so a resumed run
continues with its epoch's order.

Val: ``CenterCropRGBImageDecoder(ratio=224/256)``, sequential, and each rank gets ``indices[rank::world]``
(not FFCV's distributed mode, which pads with repeated samples): every val sample counted exactly once.

Batches are uint8 NCHW (channels_last memory); on CUDA they are moved inside the pipeline (``ToDevice``,
non-blocking) and normalised on the GPU by :func:`normalize_batch`, like the webdataset loader.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from datamodules.augment import AugmentSpec, normalize_batch
from datamodules.base import SplitDataModule
from datamodules.errors import UserError
from datamodules.shard_writer import read_index


def require_ffcv() -> None:
    try:
        import ffcv  # noqa: F401
    except ImportError:
        raise UserError("loader ffcv needs FFCV: pip install '.[ffcv]' (system libs: pkg-config libopencv-dev "
                        "libturbojpeg0-dev)") from None


class _EpochLoader:
    """Wraps an FFCV Loader so each pass uses the trainer's epoch (FFCV otherwise counts from 0 per process)."""

    def __init__(self, loader: Any, epoch: Any) -> None:
        self.loader, self.epoch = loader, epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        self.loader.next_epoch = self.epoch()
        return iter(self.loader)


class FFCVDataModule(SplitDataModule):
    """Class-split training from FFCV .beton files; same augmentation contract as the folder and wds loaders."""

    def __init__(
        self,
        shards: str | None = None,
        root: str | None = None,
        split: dict[str, Any] | None = None,
        half: str = "B",
        image_size: int = 224,
        val_image_size: int | None = None,
        scale: tuple[float, float] | list[float] = (0.08, 1.0),
        crop_ratio: float = 224 / 256,
        batch_size: int = 128,
        num_workers: int = 4,
        seed: int = 0,
        interpolation: str = "bilinear",
        rand_augment: str | None = None,
        **ignored: Any,
    ) -> None:
        # FFCV's decoders are compiled pipeline stages: its RandomResizedCrop resizes with OpenCV's INTER_AREA, and
        # PIL-based RandAugment cannot run inside them (erasing, Mixup/CutMix and EMA act on the device and work)
        if rand_augment:
            raise UserError("augment.rand_augment is not supported by loader ffcv (its pipeline cannot run PIL ops); "
                            "use loader wds or folder, or remove augment.rand_augment")
        if interpolation != "bilinear":
            raise UserError(f"augment.interpolation {interpolation} is not supported by loader ffcv (it resizes with "
                            "OpenCV's area filter); use loader wds or folder, or interpolation bilinear")
        require_ffcv()
        location = shards or root
        if location is None:
            raise UserError("data.shards is required for loader ffcv; set it to the folder `mkf data write` wrote")
        self.shards_root = Path(location)
        self.index = read_index(self.shards_root)
        if self.index.get("format") != "ffcv":
            raise UserError(f"{self.shards_root} holds {self.index.get('format')} data, not ffcv; use loader: "
                            f"{self.index.get('format')} or write with --format ffcv")
        super().__init__(self.index["classes"], split, half, batch_size, num_workers, seed)
        sets = self.index["sets"]
        self.set_name = "all" if "all" in sets else half
        written = self.index.get("split") or {}
        if self.set_name != "all" and (written.get("a") != list(self.split.a) or written.get("b") != list(self.split.b)):
            raise UserError(f"{self.shards_root} was written for another class split; use the same data.split "
                            "or write without --split")
        self.spec = AugmentSpec(train_resolution=image_size, val_resolution=val_image_size or image_size,
                                scale=(float(scale[0]), float(scale[1])), crop_ratio=crop_ratio)
        lookup = torch.full((len(self.all_class_names),), -1, dtype=torch.int64)
        for old, new in self.label_map.items():
            lookup[old] = new
        self._lookup = lookup
        self._lookup_on: dict[torch.device, torch.Tensor] = {}  # the lookup per device, copied there once
        self.files: dict[str, Path] = {}
        self.indices: dict[str, np.ndarray] = {}
        self.samples_skipped = 0  # FFCV files hold only images that decoded at write time

    def _file(self, part: str) -> Path:
        entry = self.index["sets"][self.set_name][part]["files"][0]
        path = self.shards_root / entry["name"]
        if not path.is_file():
            raise UserError(f"{path} listed in {self.shards_root / 'index.json'} is missing; rerun `mkf data write`")
        return path

    def setup(self, stage: str | None = None) -> None:
        if self.files:
            return
        from ffcv.reader import Reader

        for part in ("train", "val"):
            path = self._file(part)
            labels = np.asarray(Reader(str(path)).metadata["f1"]).astype(np.int64)
            self.files[part] = path
            self.indices[part] = np.flatnonzero(np.isin(labels, list(self.label_map)))

    @property
    def _device(self) -> torch.device:
        if torch.cuda.is_available() and self.trainer is not None and self.trainer.strategy.root_device.type == "cuda":
            return self.trainer.strategy.root_device
        return torch.device("cpu")

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _pipelines(self, train: bool) -> dict[str, list[Any]]:
        from ffcv.fields.decoders import (
            CenterCropRGBImageDecoder,
            IntDecoder,
            RandomResizedCropRGBImageDecoder,
        )
        from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage

        spec = self.spec
        if train:
            image: list[Any] = [RandomResizedCropRGBImageDecoder((spec.train_resolution,) * 2, scale=spec.scale,
                                                                 ratio=spec.ratio), RandomHorizontalFlip()]
        else:
            image = [CenterCropRGBImageDecoder((spec.val_resolution,) * 2, ratio=spec.crop_ratio)]
        label: list[Any] = [IntDecoder(), ToTensor(), Squeeze(1)]
        image.append(ToTensor())
        device = self._device
        if device.type == "cuda":  # copy uint8 to the GPU inside the pipeline, overlapping with compute
            image.append(ToDevice(device, non_blocking=True))
            label.append(ToDevice(device, non_blocking=True))
        image.append(ToTorchImage(channels_last=True))
        return {"image": image, "label": label}

    def _make(self, train: bool) -> _EpochLoader:
        from ffcv.loader import Loader, OrderOption

        if not self.files:
            raise RuntimeError("call setup() before asking for a loader")
        part = "train" if train else "val"
        rank, world = self._rank_world()
        indices = self.indices[part]
        workers = max(1, self.num_workers)
        if train:
            if len(indices) < self.batch_size * world:
                raise UserError(f"{len(indices)} training samples cannot fill one batch of {self.batch_size} on "
                                f"each of {world} ranks; lower data.batch_size")
            loader = Loader(str(self.files[part]), batch_size=self.batch_size, num_workers=workers,
                            order=OrderOption.RANDOM, distributed=world > 1, seed=self.seed,
                            indices=indices.tolist(), pipelines=self._pipelines(True), drop_last=True)
        else:
            loader = Loader(str(self.files[part]), batch_size=self.batch_size, num_workers=workers,
                            order=OrderOption.SEQUENTIAL, indices=indices[rank::world].tolist(),
                            pipelines=self._pipelines(False), drop_last=False)
        trainer = self
        return _EpochLoader(loader, lambda: trainer.trainer.current_epoch if trainer.trainer is not None else 0)

    def train_dataloader(self) -> Any:  # type: ignore[override]
        return self._make(train=True)

    def val_dataloader(self) -> Any:  # type: ignore[override]
        return self._make(train=False)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        if labels.device.type == "cpu":
            lookup = self._lookup
        else:  # copy the lookup to the GPU once, not every batch (a host-to-device copy per step)
            lookup = self._lookup_on.get(labels.device)
            if lookup is None:
                lookup = self._lookup_on.setdefault(labels.device, self._lookup.to(labels.device))
        return images, lookup[labels.long()]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        return normalize_batch(images), labels

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(loader="ffcv", shards=str(self.shards_root), shard_set=self.set_name,
                    train_samples=len(self.indices.get("train", [])), val_samples=len(self.indices.get("val", [])),
                    samples_skipped=self.samples_skipped)
        return info
