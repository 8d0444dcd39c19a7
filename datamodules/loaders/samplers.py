"""Samplers whose order depends only on (seed, epoch, rank), and whose position survives a restart.

The epoch contract every loader of this project keeps (folder, in-memory, FFCV here; wds in its own module):

* one training epoch is a **permutation** of the cell's training set, cut into equal shares for the ranks:
  ``len // world`` samples each, strided out of one shared permutation, then whole batches. At most
  ``world * batch - 1`` samples are dropped (``len % world`` to keep ranks even, fewer than a batch per rank by
  ``drop_last``), never a sample repeated: a padded epoch (torch's ``DistributedSampler`` without ``drop_last``,
  which FFCV's ``distributed=True`` uses) trains some samples twice and lets some ranks' last batch differ;
* the permutation is a function of ``(seed, epoch)`` only, so it differs per epoch and per seed, is the same on
  every rank (their shares are disjoint) and is recomputable after a restart;
* a mid-epoch resume recomputes the interrupted epoch's permutation and starts after the batches already trained:
  across the restart no sample is trained twice or skipped. The loader's ``len()`` stays the whole epoch's batch
  count, because Lightning adds the batches it restored to the ones it fetches and ends the epoch at ``len()``;
* validation: sample ``i`` goes to rank ``i % world``, no padding, so every sample is scored exactly once;
* a rank that would get no training batch at all is a :class:`UserError` naming the fix, never an epoch that ends
  at once (Lightning then ends ``fit`` and the cell would be recorded as finished, untrained).

Rank splitting is done here (Lightning's distributed sampler is turned off), so skipping means the same thing on
one rank and on many.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from datamodules.errors import UserError


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def epoch_permutation(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    """The epoch's order over positions ``0..num_samples-1``: a pure function of (seed, epoch), same on every rank."""
    if not shuffle:
        return torch.arange(num_samples)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_samples, generator=g)


def rank_share(order: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's disjoint share of an epoch's order: ``len // world`` positions, strided (the rest dropped)."""
    per_rank = len(order) // world
    return order[rank : per_rank * world : world]


def check_trainable(num_samples: int, world: int, batch_size: int, full_batches: bool, where: str) -> None:
    """Raise when some rank would get no training batch (``full_batches``: when it cannot fill one batch).

    Lightning ends ``fit`` at once on an empty epoch and the cell would be recorded as finished, untrained.
    """
    per_rank = num_samples // world
    if per_rank == 0 or (full_batches and per_rank < batch_size):
        need, fix = ((f"one batch of {batch_size}", "lower data.batch_size or use fewer ranks") if full_batches
                     else ("one sample", "use fewer ranks or more training data"))
        raise UserError(f"{where}: {num_samples} training samples give each of {world} ranks {per_rank}, "
                        f"not {need}, so no rank would train; {fix}")


@dataclass
class ResumePosition:
    """Where a restored checkpoint stopped: ``epoch`` and the number of batches it had trained in that epoch."""

    epoch: int = 0
    batches_done: int = 0
    pending: bool = False

    def set(self, epoch: int, batches_done: int) -> None:
        self.epoch, self.batches_done, self.pending = epoch, batches_done, batches_done > 0


class EpochShuffleSampler(Sampler[int]):
    """Training order: a permutation seeded by (seed, epoch), split across ranks, equal length on every rank.

    Every rank gets ``len(dataset) // world`` samples (the few left over are dropped, as with ``drop_last``) so
    ranks run the same number of steps and never hang in a collective at the end of an epoch. ``len()`` is the
    whole share even on a resumed epoch (Lightning counts the restored batches itself); iterating that epoch
    yields only the positions after the ``position.batches_done`` batches already trained.
    """

    def __init__(self, num_samples: int, seed: int, batch_size: int, position: ResumePosition | None = None,
                 shuffle: bool = True, tag_epoch: bool = False) -> None:
        self.num_samples, self.seed, self.batch_size, self.shuffle = num_samples, seed, batch_size, shuffle
        self.tag_epoch = tag_epoch  # yield (index, epoch): a SeededSamples dataset seeds each sample from it
        self.position = position or ResumePosition()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples // rank_and_world()[1]

    def __iter__(self) -> Iterator[int]:
        rank, world = rank_and_world()
        start = 0
        if self.position.pending:  # the first iteration after a restore continues the interrupted epoch
            self.epoch = self.position.epoch
            start = self.position.batches_done * self.batch_size
            self.position.pending = False
        order = epoch_permutation(self.num_samples, self.seed, self.epoch, self.shuffle)
        mine = rank_share(order, rank, world)[start:].tolist()
        if self.tag_epoch:
            return iter([(i, self.epoch) for i in mine])
        return iter(mine)


class RankStridedSampler(Sampler[int]):
    """Evaluation order: sample i goes to rank i % world, no padding, so every sample is scored exactly once."""

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples

    def __len__(self) -> int:
        rank, world = rank_and_world()
        return len(range(rank, self.num_samples, world))

    def __iter__(self) -> Iterator[int]:
        rank, world = rank_and_world()
        return iter(range(rank, self.num_samples, world))
