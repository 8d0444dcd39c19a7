"""FFCV .beton files (written by ``mkf data write --format ffcv``) as a class-split datamodule.

The epoch contract (datamodules.loaders.samplers) holds here as for the folder and in-memory loaders, with the same
permutation: FFCV's own orders do not keep it. ``OrderOption.RANDOM`` with ``distributed=True`` is torch's
``DistributedSampler`` with ``drop_last=False``, which pads every rank's share with repeated samples, and FFCV
restarts a resumed epoch from its first batch while Lightning runs only the remaining ones (the first k batches
trained twice, the last k never). So the Loader gets a traversal order of our own, :class:`PlannedOrder`:

* train: the permutation :func:`~datamodules.loaders.samplers.epoch_permutation` of (seed, epoch) over the kept samples,
  each rank's strided share cut to whole batches (at most ``world * batch - 1`` dropped, every rank the same
  number of steps); on the first pass after a restore it starts after the ``position.batches_done`` batches the
  checkpoint had trained. ``len()`` stays the whole epoch's count: Lightning adds the restored batches to those it
  fetches. A rank whose share cannot fill one batch is a UserError (FFCV trains whole batches only);
* val: ``CenterCropRGBImageDecoder(ratio=224/256)``, sequential, each rank gets ``indices[rank::world]`` (not
  FFCV's distributed mode, which pads): every val sample counted exactly once.

Which samples a cell keeps is decided as by the folder and in-memory loaders, from the labels in the .beton
metadata: the class-split half first, then ``data.subset`` and ``max_train_samples`` / ``max_val_samples``,
seeded and stratified by datamodules.sources.subsets, so the same labels give the same choice whatever the loader.

The Loader is built in ``train_dataloader()``, which Lightning calls after the process group exists, and it is not
a torch DataLoader, so Lightning never injects a sampler of its own. FFCV's ``num_workers`` are threads of one
process (its compiled pipeline), so ``max(1, num_workers)`` of them decode each batch; batch order is the plan's.
Train augmentation: a random resized crop (FFCV's ``RandomResizedCropRGBImageDecoder``) + horizontal flip, drawn
per sample from (seed, epoch, sample id) by :class:`AugmentKey` (see there why FFCV's own draws cannot be
resumed). Batches are uint8 NCHW (channels_last memory); on CUDA they are moved inside the pipeline
(``ToDevice``, non-blocking) and normalised on the GPU by :func:`normalize_batch`, like the webdataset loader.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from datamodules.errors import UserError
from datamodules.loaders.augment import AugmentSpec, normalize_batch
from datamodules.loaders.base import SplitDataModule
from datamodules.loaders.samplers import ResumePosition, check_trainable, epoch_permutation, rank_share
from datamodules.shards.writer import read_index
from datamodules.sources.subsets import cap_indices, reference_train_count, subset_train_indices


def require_ffcv() -> None:
    try:
        import ffcv  # noqa: F401
    except ImportError:
        raise UserError("loader ffcv needs FFCV: pip install '.[ffcv]' (system libs: pkg-config libopencv-dev "
                        "libturbojpeg0-dev)") from None


def plan_epoch(indices: np.ndarray, seed: int, epoch: int, rank: int, world: int, batch_size: int) -> np.ndarray:
    """The .beton sample ids ``rank`` trains in ``epoch``, in order: its share of the epoch's permutation of
    ``indices``, cut to whole batches. The same permutation as the folder and in-memory loaders' sampler."""
    share = rank_share(epoch_permutation(len(indices), seed, epoch), rank, world).numpy()
    return np.asarray(indices)[share[: len(share) // batch_size * batch_size]]


class PlannedOrder:
    """An FFCV traversal order: :func:`plan_epoch` for one rank, minus the batches a restored checkpoint trained.

    FFCV's Loader takes an *instance* of a TraversalOrder as ``order`` and calls it with itself (``order(loader)``),
    so the instance binds the loader there and returns itself. ``skip`` is set by :class:`_EpochLoader` for one
    pass; the Loader's ``len()`` comes from the order it computes at construction (epoch 0, nothing skipped),
    which is the whole epoch's batch count. Made with :func:`planned_order`, which adds FFCV's base class.
    """

    def __init__(self, indices: np.ndarray, seed: int, rank: int, world: int, batch_size: int) -> None:
        self.plan_indices, self.plan_seed = np.asarray(indices), seed
        self.rank, self.world, self.batch_size = rank, world, batch_size
        self.skip = 0  # batches of the next pass already trained (a mid-epoch resume)

    def __call__(self, loader: Any) -> PlannedOrder:
        self.loader, self.indices, self.seed = loader, loader.indices, loader.seed
        self.distributed, self.sampler = False, None  # what FFCV's own orders expose
        return self

    def sample_order(self, epoch: int) -> np.ndarray:
        order = plan_epoch(self.plan_indices, self.plan_seed, epoch, self.rank, self.world, self.batch_size)
        return order[self.skip * self.batch_size :]


def _numba_threads() -> int:
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


@functools.cache
def _ffcv_order_class() -> type:
    """PlannedOrder as a subclass of FFCV's TraversalOrder (the Loader checks it), made on first use: importing
    this module must not need FFCV."""
    from ffcv.traversal_order.base import TraversalOrder

    return type("PlannedTraversalOrder", (PlannedOrder, TraversalOrder), {})


def planned_order(indices: np.ndarray, seed: int, rank: int, world: int, batch_size: int) -> PlannedOrder:
    return _ffcv_order_class()(indices, seed, rank, world, batch_size)  # type: ignore[no-any-return]


# salts that keep a sample's crop and flip draws apart (any two distinct 64-bit constants)
_CROP_SALT, _FLIP_SALT = 0x243F6A8885A308D3, 0x13198A2E03707345


def pass_key(seed: int, epoch: int) -> int:
    """The 64-bit key of one epoch's augmentation draws: every sample's crop and flip derive from it and its id."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, 0x4D4B46]).generate_state(1, np.uint64)[0])


def _sample_seed(key: np.uint64, sample: np.uint64, salt: np.uint64) -> np.uint32:
    """A 32-bit seed for one sample's draws: splitmix64 of (key, sample id, salt). Compiled into the pipeline."""
    z = key ^ ((sample + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)) ^ salt
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.uint32(z >> np.uint64(32))


class AugmentKey:
    """The current pass's :func:`pass_key`, in memory that the compiled FFCV pipeline reads at every batch.

    FFCV 1.0 draws crops and flips from numba's random state, which is per thread and seeded from OS entropy: no
    two runs (nor two passes) draw alike, and a resumed epoch cannot redraw what the uninterrupted one drew, so a
    preempted FFCV cell never ended with the weights of an uninterrupted one. Our decoder and flip reseed that
    state per sample from (this key, sample id) just before drawing, in the thread that draws; each sample's
    augmentation is then a function of (seed, epoch, sample id) only, whatever the thread count, the batch it lands
    in or where a resumed pass starts, as :class:`~datamodules.loaders.base.SeededSamples` does for torch workers. (Ranks
    draw apart: in an epoch each sample belongs to one rank.)

    Numba freezes the arrays a compiled function closes over, so the pipeline closes over this array's *address*
    and copies the key from it per batch (FFCV's own ``memcpy``): the epoch changes without recompiling.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.cell = np.zeros(1, dtype=np.uint64)  # kept alive by this object, which the pipeline's ops hold

    @property
    def address(self) -> int:
        return int(self.cell.ctypes.data)

    def set_epoch(self, epoch: int) -> None:
        self.cell[0] = np.uint64(pass_key(self.seed, epoch))


@functools.cache
def _keyed_ops() -> tuple[type, type]:
    """The keyed crop decoder and flip (FFCV classes), made on first use: importing this module must not need FFCV.

    The decoder is FFCV 1.0.2's ``ResizedCropRGBImageDecoder.generate_code`` plus the key read and the reseed;
    the flip is ``RandomHorizontalFlip`` drawing per sample, which needs the batch's sample ids (``with_indices``).
    """
    from ffcv.fields.rgb_image import IMAGE_MODES, RandomResizedCropRGBImageDecoder, get_random_crop
    from ffcv.libffcv import ctypes_memcopy, imdecode, resize_crop
    from ffcv.pipeline.compiler import Compiler
    from ffcv.transforms import RandomHorizontalFlip

    class KeyedRandomResizedCrop(RandomResizedCropRGBImageDecoder):  # type: ignore[misc]
        def __init__(self, key: AugmentKey, output_size: tuple[int, int], scale: tuple[float, float],
                     ratio: tuple[float, float]) -> None:
            super().__init__(output_size, scale=scale, ratio=ratio)
            self.key = key

        def generate_code(self) -> Any:
            jpg = IMAGE_MODES["jpg"]
            mem_read = self.memory_read
            my_range = Compiler.get_iterator()
            imdecode_c = Compiler.compile(imdecode)
            resize_crop_c = Compiler.compile(resize_crop)
            get_crop_c = Compiler.compile(get_random_crop)
            seed_of = Compiler.compile(_sample_seed)
            scale, ratio = np.array(self.scale), np.array(self.ratio)
            address, salt = np.uint64(self.key.address), np.uint64(_CROP_SALT)

            def decode(batch_indices, my_storage, metadata, storage_state):  # type: ignore[no-untyped-def]
                destination, temp_storage = my_storage
                key = np.zeros(1, dtype=np.uint64)
                ctypes_memcopy(address, key.ctypes.data, 8)
                for dst_ix in my_range(len(batch_indices)):
                    source_ix = batch_indices[dst_ix]
                    np.random.seed(seed_of(key[0], np.uint64(source_ix), salt))  # this thread's state
                    field = metadata[source_ix]
                    image_data = mem_read(field["data_ptr"], storage_state)
                    height = np.uint32(field["height"])
                    width = np.uint32(field["width"])
                    if field["mode"] == jpg:
                        temp_buffer = temp_storage[dst_ix]
                        imdecode_c(image_data, temp_buffer, height, width, height, width, 0, 0, 1, 1, False, False)
                        selected_size = 3 * height * width
                        temp_buffer = temp_buffer.reshape(-1)[:selected_size]
                        temp_buffer = temp_buffer.reshape(height, width, 3)
                    else:
                        temp_buffer = image_data.reshape(height, width, 3)
                    i, j, h, w = get_crop_c(height, width, scale, ratio)
                    resize_crop_c(temp_buffer, i, i + h, j, j + w, destination[dst_ix])
                return destination[: len(batch_indices)]

            decode.is_parallel = True
            return decode

    class KeyedHorizontalFlip(RandomHorizontalFlip):  # type: ignore[misc]
        def __init__(self, key: AugmentKey, flip_prob: float = 0.5) -> None:
            super().__init__(flip_prob)
            self.key = key

        def generate_code(self) -> Any:
            my_range = Compiler.get_iterator()
            seed_of = Compiler.compile(_sample_seed)
            flip_prob = self.flip_prob
            address, salt = np.uint64(self.key.address), np.uint64(_FLIP_SALT)

            def flip(images, dst, indices):  # type: ignore[no-untyped-def]
                key = np.zeros(1, dtype=np.uint64)
                ctypes_memcopy(address, key.ctypes.data, 8)
                for i in my_range(images.shape[0]):
                    np.random.seed(seed_of(key[0], np.uint64(indices[i]), salt))
                    if np.random.random() < flip_prob:
                        dst[i] = images[i, :, ::-1]
                    else:
                        dst[i] = images[i]
                return dst

            flip.is_parallel = True
            flip.with_indices = True
            return flip

    return KeyedRandomResizedCrop, KeyedHorizontalFlip


class _EpochLoader:
    """Wraps an FFCV Loader so each pass uses the trainer's epoch (FFCV otherwise counts from 0 per process), and
    the first pass after a restore continues the interrupted epoch after its trained batches."""

    def __init__(self, loader: Any, epoch: Any, order: PlannedOrder | None = None,
                 position: ResumePosition | None = None, key: AugmentKey | None = None) -> None:
        self.loader, self.epoch, self.order, self.position, self.key = loader, epoch, order, position, key

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        return self._pass()

    def _pass(self) -> Iterator[Any]:
        # a generator: nothing runs until the first batch is asked for. Lightning calls iter() once on any loader
        # that is not a torch DataLoader just to probe that it is iterable; an eager pass would start FFCV's
        # decoding thread for nothing and consume the resume position before the real pass
        epoch, skip = self.epoch(), 0
        if self.order is not None and self.position is not None and self.position.pending:
            epoch, skip = self.position.epoch, self.position.batches_done
            self.position.pending = False
        self.loader.next_epoch = epoch
        if self.key is not None:  # the pass's augmentation draws: (seed, epoch, sample id), not FFCV's threads
            self.key.set_epoch(epoch)
        if self.order is None:
            yield from self.loader
            return
        self.order.skip = skip
        try:
            batches = iter(self.loader)  # computes the pass's order now (Loader.__iter__ is not a generator)
        finally:
            self.order.skip = 0
        yield from batches


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
        subset: dict[str, Any] | None = None,
        max_train_samples: int | None = None,
        max_val_samples: int | None = None,
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
        self.subset, self.max_train_samples, self.max_val_samples = subset, max_train_samples, max_val_samples

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
            index = np.flatnonzero(np.isin(labels, list(self.label_map)))
            # the same selection, in the same order, as the folder and in-memory loaders (datamodules.sources.subsets)
            if part == "train":
                self.full_train_samples = reference_train_count(len(index), self.max_train_samples)
                index = index[subset_train_indices(labels[index], self.subset, self.max_train_samples, self.seed)]
            else:
                index = index[cap_indices(labels[index], self.max_val_samples, self.seed)]
            if not len(index):
                raise UserError(f"{path} has no images of the selected classes; check data.split/half")
            self.files[part] = path
            self.indices[part] = index

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

    def _pipelines(self, key: AugmentKey | None) -> dict[str, list[Any]]:
        """The train pipeline (``key`` given: its crops and flips drawn from it) or the val pipeline."""
        from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder
        from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage

        spec = self.spec
        if key is not None:
            crop, flip = _keyed_ops()
            image: list[Any] = [crop(key, (spec.train_resolution,) * 2, scale=spec.scale, ratio=spec.ratio),
                                flip(key)]
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
        # FFCV's workers are numba threads, and numba refuses more than it started with (the CPU count, or
        # NUMBA_NUM_THREADS): data.num_workers above that is clamped rather than a crash at the first batch
        workers = min(max(1, self.num_workers), _numba_threads())
        if train:
            check_trainable(len(indices), world, self.batch_size, full_batches=True, where="loader ffcv")
            order = planned_order(indices, self.seed, rank, world, self.batch_size)
            key = AugmentKey(self.seed)
            loader = Loader(str(self.files[part]), batch_size=self.batch_size, num_workers=workers, order=order,
                            seed=self.seed, indices=indices.tolist(), pipelines=self._pipelines(key),
                            drop_last=True)
            return _EpochLoader(loader, self._current_epoch, order, self.position, key)
        loader = Loader(str(self.files[part]), batch_size=self.batch_size, num_workers=workers,
                        order=OrderOption.SEQUENTIAL, indices=indices[rank::world].tolist(),
                        pipelines=self._pipelines(None), drop_last=False)
        return _EpochLoader(loader, self._current_epoch)

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def train_dataloader(self) -> Any:  # type: ignore[override]
        return self._make(train=True)

    def val_dataloader(self) -> Any:  # type: ignore[override]
        return self._make(train=False)

    def data_sources(self) -> dict[str, list[str]]:
        return {part: [str(self._file(part))] for part in ("train", "val")}

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
                    samples_skipped=self.samples_skipped, subset=self.subset)
        return info
