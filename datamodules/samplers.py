"""Samplers whose order depends only on (seed, epoch, rank), and whose position survives a restart.

A preempted job must resume *mid-epoch* and end with the same weights as an uninterrupted run. That needs the
epoch's order to be recomputable (seeded by epoch, not drawn from a generator that has advanced an unknown number
of times) and the batches already trained on to be skipped. Rank splitting is done here too (Lightning's
distributed sampler is turned off), so skipping means the same thing on one rank and on many.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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
    ranks run the same number of steps and never hang in a collective at the end of an epoch.
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
        return self.num_samples // _rank_and_world()[1]

    def __iter__(self) -> Iterator[int]:
        rank, world = _rank_and_world()
        start = 0
        if self.position.pending:  # the first iteration after a restore continues the interrupted epoch
            self.epoch = self.position.epoch
            start = self.position.batches_done * self.batch_size
            self.position.pending = False
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.num_samples)
        per_rank = self.num_samples // world
        mine = order[rank : per_rank * world : world][start:].tolist()
        if self.tag_epoch:
            return iter([(i, self.epoch) for i in mine])
        return iter(mine)


class RankStridedSampler(Sampler[int]):
    """Evaluation order: sample i goes to rank i % world, no padding, so every sample is scored exactly once."""

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples

    def __len__(self) -> int:
        rank, world = _rank_and_world()
        return len(range(rank, self.num_samples, world))

    def __iter__(self) -> Iterator[int]:
        rank, world = _rank_and_world()
        return iter(range(rank, self.num_samples, world))
