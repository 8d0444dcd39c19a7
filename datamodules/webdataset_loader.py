"""Streaming tar shards with webdataset, correct under DDP.

Every (rank, DataLoader worker) pair is one *slot*. Per epoch:

* **train** -- the shard list is permuted with ``(seed, epoch)`` (same permutation on every rank); slot ``s``
  reads shards ``perm[s::slots]``, then keeps reading the permuted list (resampling) until it has produced its
  quota of batches. The quota comes from the index's sample counts, so every rank yields exactly
  ``train_samples // (world * batch)`` full batches even when shards are uneven: no rank waits at an all-reduce
  for one that ran dry, and the epoch ends everywhere at the same step.
* **val** -- nothing is resampled: with at least as many shards as slots each slot reads ``shards[s::slots]``,
  otherwise every slot reads all shards and keeps sample ``j`` with ``j % slots == s``. Every val sample is seen
  exactly once across all ranks, so the all-gathered top-1 is exact.

The epoch comes from the trainer (restored on resume), not from a counter, so a resumed run continues with the
order of the epoch it resumes in. Shuffle buffers are seeded from ``(seed, epoch, slot)`` and crop randomness from
``(seed, epoch, slot, batch)``, so a run resumed mid-epoch (``datamodule.position``, as for the in-memory loaders)
skips the batches it already trained on *without decoding them* and still gets the same later batches as an
uninterrupted run. (If a skipped batch held a corrupt image the skip is off by that sample: it is found by decoding.)

Bad samples (truncated or zero-byte images, non-image members, a missing or bad ``cls``, unknown extensions,
unreadable tar members) are skipped with a warning naming the shard and key, and counted; the count rides along
with the batches (see :meth:`ShardStream._batches`) and lands in ``result.json`` as ``samples_skipped``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from datamodules.augment import (
    AugmentSpec,
    decode_train,
    decode_val,
    normalize_batch,
    rand_augment_check,
    seed_batch_rngs,
)
from datamodules.base import SplitDataModule
from datamodules.errors import UserError
from datamodules.samplers import ResumePosition
from datamodules.shard_writer import read_index
from datamodules.tar_reader import IMAGE_KEYS, read_samples
from datamodules.workers import ignore_preemption_signals

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    url: str  # local path, http(s) URL or 'pipe:' command (anything webdataset's gopen opens)
    samples: int


class _SkipCounter:
    """Per-worker list of skipped sample ids; also the webdataset error handler, so tar errors count too.

    Ids (``shard:key``), not a count, travel with the batches: every epoch meets the same bad samples again, and
    ``samples_skipped`` should count each bad sample once.
    """

    def __init__(self) -> None:
        self.ids: list[str] = []

    def add(self, sample_id: str) -> None:
        self.ids.append(sample_id)

    def __call__(self, exn: Exception) -> bool:
        self.add(f"tar error: {str(exn)[:200]}")
        log.warning("skipping unreadable tar data: %s", exn)
        return True  # continue with the next member / shard


def _tar_samples(handler: Callable[[Exception], bool]) -> Callable[[Iterator[dict[str, str]]], Iterator[dict]]:
    """Pipeline stage: shard URLs -> samples ``{__key__, __url__, ext: bytes}`` (``datamodules.tar_reader``)."""

    def samples(urls: Iterator[dict[str, str]]) -> Iterator[dict[str, Any]]:
        for entry in urls:
            yield from read_samples(entry["url"], handler)
    return samples


def _slot_split(shards: list[Shard], slots: int, slot: int) -> tuple[list[Shard], int, int]:
    """Which shards slot ``slot`` reads and which samples of them it keeps (``j % mod == rem``)."""
    if len(shards) >= slots:
        return shards[slot::slots], 1, 0
    return shards, slots, slot


def _kept(n: int, mod: int, rem: int) -> int:
    return (n - rem + mod - 1) // mod if n > rem else 0


class ShardStream(IterableDataset):
    """An iterable of ready batches ``(uint8 images [B,3,S,S], labels [B], skipped ids)`` for one rank."""

    def __init__(self, shards: list[Shard], train: bool, spec: AugmentSpec, batch_size: int,
                 label_map: dict[int, int], seed: int, num_workers: int, shuffle_buffer: int = 1000) -> None:
        self.shards = [s for s in shards if s.samples > 0]
        self.train, self.spec, self.batch_size = train, spec, batch_size
        self.label_map, self.seed, self.num_workers = label_map, seed, max(1, num_workers)
        self.shuffle_buffer = shuffle_buffer
        self.epoch, self.rank, self.world = 0, 0, 1
        self.skip_batches = 0  # this rank's batches of the epoch already trained on (a mid-epoch resume)
        self.total = sum(s.samples for s in self.shards)

    def set_context(self, epoch: int, rank: int, world: int, skip_batches: int = 0) -> None:
        """Called in the main process before workers start, so each worker sees this epoch's plan."""
        self.epoch, self.rank, self.world, self.skip_batches = epoch, rank, world, skip_batches

    # -- sizes (from the index, so every rank agrees without communicating) -----------------------------------
    def train_batches_per_rank(self) -> int:
        return self.total // (self.world * self.batch_size)

    def _worker_quota(self, worker: int) -> int:
        batches = self.train_batches_per_rank()
        return batches // self.num_workers + (worker < batches % self.num_workers)

    def _val_samples(self, worker: int) -> int:
        slots = self.world * self.num_workers
        shards, mod, rem = _slot_split(self.shards, slots, self.rank * self.num_workers + worker)
        return sum(s.samples for s in shards) if mod == 1 else _kept(self.total, mod, rem)

    def __len__(self) -> int:
        if self.train:
            return self.train_batches_per_rank()
        return sum(-(-self._val_samples(w) // self.batch_size) for w in range(self.num_workers))

    # -- iteration ----------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]]:
        import webdataset as wds

        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.num_workers:
            raise RuntimeError("ShardStream was built for another num_workers")
        if self.train:
            # The DataLoader asks its workers in turn starting with worker 0, and rank batch k is produced by the
            # worker playing role k % workers; after skipping a resumed epoch's first batches, worker 0 must play
            # the role whose turn is next.
            worker = (worker + self.skip_batches) % self.num_workers
        slot = self.rank * self.num_workers + worker
        slots = self.world * self.num_workers
        skips = _SkipCounter()
        skip = 0
        if self.train:
            quota = self._worker_quota(worker)
            if quota == 0:
                return
            skip = _kept(self.skip_batches, self.num_workers, worker)
            urls: Callable[[], Iterator[dict[str, str]]] = lambda: self._train_urls(slot, slots)  # noqa: E731
            mod, rem = 1, 0
        else:
            shards, mod, rem = _slot_split(self.shards, slots, slot)
            urls = lambda: iter([{"url": s.url} for s in shards])  # noqa: E731
            quota = -1
        stages: list[Any] = [urls, _tar_samples(skips)]
        if mod > 1:
            stages.append(_keep_modulo(mod, rem))
        if self.train:
            rng = random.Random(f"{self.seed}:{self.epoch}:{slot}")
            stages.append(wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 100), rng=rng))
        stream = wds.DataPipeline(*stages)
        yield from self._batches(iter(stream), skips, quota, slot, skip)

    def _train_urls(self, slot: int, slots: int) -> Iterator[dict[str, str]]:
        """This slot's shards of the epoch's permutation, then the whole permutation again and again."""
        perm = list(self.shards)
        random.Random(f"{self.seed}:{self.epoch}").shuffle(perm)
        for shard in perm[slot::slots]:
            yield {"url": shard.url}
        rotated = perm[slot % len(perm):] + perm[:slot % len(perm)]
        for _ in range(2):  # enough to fill any quota unless most samples are unreadable
            for shard in rotated:
                yield {"url": shard.url}
        log.warning("slot %d ran out of readable samples after two extra passes over the shards", slot)

    def _decode(self, sample: dict[str, Any], skips: _SkipCounter,
                decode: bool = True) -> tuple[torch.Tensor | None, int] | None:
        """(uint8 CHW image, label), or None for a skipped sample; ``decode=False`` checks only the label."""
        where = f"{sample.get('__url__')}:{sample.get('__key__')}"
        label_bytes = sample.get("cls")
        if label_bytes is None:
            return self._skip(skips, where, "no 'cls' label")
        try:
            label = int(label_bytes.decode().strip() if isinstance(label_bytes, bytes) else label_bytes)
        except ValueError:
            return self._skip(skips, where, f"label {label_bytes[:20]!r} is not an integer")
        if label not in self.label_map:
            return None  # a class of the other half: not a bad sample
        key = next((k for k in IMAGE_KEYS if k in sample), None)
        if key is None:
            exts = sorted(k for k in sample if not k.startswith("__"))
            return self._skip(skips, where, f"no image member (has {exts}; expected one of {IMAGE_KEYS})")
        if not decode:
            return None, self.label_map[label]
        try:
            decode = decode_train if self.train else decode_val
            return decode(sample[key], self.spec), self.label_map[label]
        except Exception as exc:  # noqa: BLE001 -- a corrupt image must not stop the epoch
            return self._skip(skips, where, f"{type(exc).__name__}: {exc}")

    @staticmethod
    def _skip(skips: _SkipCounter, where: str, why: str) -> None:
        skips.add(where)
        log.warning("skipping sample %s: %s", where, why)
        return None

    def _batches(self, samples: Iterator[dict[str, Any]], skips: _SkipCounter, quota: int, slot: int = 0,
                 skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]]:
        """Collate decoded samples; each batch carries the ids of samples skipped since the previous one.

        The first ``skip`` batches are counted but not decoded (a mid-epoch resume). A full batch is held back
        until the next one is full (or the stream ends), so skips that happen after the last sample are still
        reported -- with the last batch.
        """
        if 0 <= quota <= skip:
            return
        reported = 0
        pending: tuple[torch.Tensor, torch.Tensor] | None = None
        produced = 0
        images: list[Any] = []
        labels: list[int] = []
        seed_batch_rngs(hash((self.seed, self.epoch, slot, produced)) & 0x7FFFFFFF)
        for sample in samples:
            decoded = self._decode(sample, skips, decode=produced >= skip)
            if decoded is None:
                continue
            images.append(decoded[0])
            labels.append(decoded[1])
            if len(images) < self.batch_size:
                continue
            produced += 1
            seed_batch_rngs(hash((self.seed, self.epoch, slot, produced)) & 0x7FFFFFFF)
            if produced <= skip:
                images, labels = [], []
                continue
            if pending is not None:
                yield (*pending, tuple(skips.ids[reported:]))
                reported = len(skips.ids)
            pending, images, labels = (_stack(images), torch.tensor(labels)), [], []
            if produced == quota:
                break
        if 0 <= quota and produced < quota:
            raise RuntimeError(f"shards yielded {produced} of {quota} batches; run `mkf data verify`")
        if images and quota < 0:  # validation keeps its last, partial batch
            if pending is not None:
                yield (*pending, tuple(skips.ids[reported:]))
                reported = len(skips.ids)
            pending = (_stack(images), torch.tensor(labels))
        if pending is not None:
            yield (*pending, tuple(skips.ids[reported:]))


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    """CHW images -> [N,3,H,W]; CHW views of HWC pixels stack their HWC memory (a plain copy, channels_last)."""
    if images[0].is_contiguous():
        return torch.stack(images)
    return torch.stack([img.permute(1, 2, 0) for img in images]).permute(0, 3, 1, 2)


def _keep_modulo(mod: int, rem: int) -> Callable[[Iterator[dict[str, Any]]], Iterator[dict[str, Any]]]:
    def keep(samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for j, sample in enumerate(samples):
            if j % mod == rem:
                yield sample
    return keep


class _EpochLoader(DataLoader):
    """A DataLoader that tells its ShardStream the epoch, rank and world size each time it is iterated."""

    def __init__(self, dataset: ShardStream, context: Callable[[], tuple[int, int, int]],
                 position: ResumePosition | None = None, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self._context = context
        self._position = position

    def __iter__(self):  # type: ignore[no-untyped-def]
        epoch, rank, world = self._context()
        skip = 0
        position = self._position
        if position is not None and position.pending:  # the first epoch after a restore continues where it was
            epoch, skip, position.pending = position.epoch, position.batches_done, False
        self.dataset.set_context(epoch, rank, world, skip)  # type: ignore[attr-defined]
        return super().__iter__()


def index_shards(root: Path, index: dict[str, Any], set_name: str, part: str) -> list[Shard]:
    """The shards of one (set, part) of an index, as openable URLs; local files must exist."""
    entry = index["sets"][set_name][part]
    shards = []
    for f in entry["files"]:
        url = f.get("url") or str(root / f["name"])
        if "://" not in url and not url.startswith("pipe:") and not Path(url).is_file():
            raise UserError(f"shard {url} listed in {root / 'index.json'} is missing; rerun `mkf data write` "
                            "with the same arguments to repair it")
        shards.append(Shard(url, int(f["samples"])))
    return shards


class WebDatasetDataModule(SplitDataModule):
    """Class-split training from shards written by ``mkf data write --format wds`` (or an index of Hub shards).

    ``shards`` is the folder holding ``index.json``. With split-specific shards (written with ``--split``) the
    set matching this cell's split and half is read; otherwise the ``all`` set is read and filtered by class.
    """

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
        shuffle_buffer: int = 1000,
        seed: int = 0,
        interpolation: str = "bilinear",
        rand_augment: str | None = None,
        **ignored: Any,
    ) -> None:
        location = shards or root
        if location is None:
            raise UserError("data.shards is required for loader wds; set it to the folder `mkf data write` wrote")
        self.shards_root = Path(location)
        self.index = read_index(self.shards_root)
        if self.index.get("format") != "wds":
            raise UserError(f"{self.shards_root} holds {self.index.get('format')} data, not wds; use loader: "
                            f"{self.index.get('format')} or write wds shards")
        super().__init__(self.index["classes"], split, half, batch_size, num_workers, seed)
        self.set_name = self._pick_set()
        self.spec = AugmentSpec(train_resolution=image_size, val_resolution=val_image_size or image_size,
                                scale=(float(scale[0]), float(scale[1])), crop_ratio=crop_ratio,
                                interpolation=interpolation, rand_augment=rand_augment)
        if rand_augment:
            rand_augment_check(rand_augment)
        self.shuffle_buffer = shuffle_buffer
        self._skipped_local: set[str] = set()  # ids of the samples this rank skipped
        self.samples_skipped = 0  # distinct skipped samples of all ranks (teardown() merges the ranks' sets)
        self._iterations = 0
        self.train_set: ShardStream | None = None  # type: ignore[assignment]
        self.val_set: ShardStream | None = None  # type: ignore[assignment]

    def _pick_set(self) -> str:
        sets = self.index["sets"]
        if "all" in sets:
            return "all"
        written = self.index.get("split") or {}
        if written.get("a") != list(self.split.a) or written.get("b") != list(self.split.b):
            raise UserError(f"{self.shards_root} was written for split {written.get('kind')} "
                            f"(seed {written.get('seed')}), which differs from data.split; use the same split "
                            "or write shards without --split")
        return self.half

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        common = dict(spec=self.spec, batch_size=self.batch_size, label_map=self.label_map, seed=self.seed,
                      num_workers=self.num_workers, shuffle_buffer=self.shuffle_buffer)
        self.train_set = ShardStream(index_shards(self.shards_root, self.index, self.set_name, "train"),
                                     train=True, **common)  # type: ignore[arg-type]
        self.val_set = ShardStream(index_shards(self.shards_root, self.index, self.set_name, "val"),
                                   train=False, **common)  # type: ignore[arg-type]

    def _context(self) -> tuple[int, int, int]:
        trainer = self.trainer
        if trainer is not None:
            return trainer.current_epoch, trainer.global_rank, trainer.world_size
        self._iterations += 1
        if dist.is_available() and dist.is_initialized():
            return self._iterations - 1, dist.get_rank(), dist.get_world_size()
        return self._iterations - 1, 0, 1

    def _loader(self, dataset: Any, train: bool) -> DataLoader:  # type: ignore[override]
        if dataset is None:
            raise RuntimeError("call setup() before asking for a loader")
        epoch, rank, world = self._context()
        if self.trainer is None:
            self._iterations -= 1  # sizing is not an epoch
        dataset.set_context(epoch, rank, world)
        if train and dataset.train_batches_per_rank() == 0:
            raise UserError(f"{dataset.total} training samples cannot fill one batch of {self.batch_size} on each "
                            f"of {world} ranks; lower data.batch_size")
        return _EpochLoader(dataset, self._context, self.position if train else None, batch_size=None,
                            num_workers=self.num_workers, worker_init_fn=ignore_preemption_signals,
                            persistent_workers=False, pin_memory=torch.cuda.is_available())

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(loader="wds", shards=str(self.shards_root), shard_set=self.set_name,
                    train_samples=self.train_set.total if self.train_set else None,
                    val_samples=self.val_set.total if self.val_set else None,
                    samples_skipped=self.samples_skipped)
        return info

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels, skipped = batch
        if skipped:
            self._skipped_local.update(skipped)
            self.samples_skipped = len(self._skipped_local)
        return images, labels

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        return normalize_batch(images), labels

    def teardown(self, stage: str) -> None:
        """Merge the skipped ids of all ranks (every rank runs teardown while the process group is still up)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, sorted(self._skipped_local))
            self.samples_skipped = len(set().union(*gathered))
