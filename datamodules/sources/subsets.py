"""Seeded, class-stratified subsets: the one way any dataset of this project keeps fewer images.

Used for ``data.subset`` (Yosinski's reduced sources: N images per class, or a share of each class) and for
``data.max_train_samples`` / ``max_val_samples`` (quick runs). Stratified means every class keeps its share, so a
reduced set never loses whole classes (taking the first N images of an ImageNet-layout folder kept only the first
classes); seeded means a subset is a pure function of (labels, size, seed): the same images in every cell, on
every rank, after every resume. Indices come back sorted, so the loader's own shuffle stays the only source of order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from datamodules.errors import UserError


def _largest_remainder(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over classes in proportion to ``counts`` (Hamilton's method; ties to the lower class)."""
    exact = counts * (total / counts.sum())
    take = np.floor(exact).astype(np.int64)
    short = total - int(take.sum())
    order = np.lexsort((np.arange(len(counts)), -(exact - take)))
    take[order[:short]] += 1
    return np.minimum(take, counts)


def stratified_indices(
    labels: Sequence[int] | np.ndarray,
    *,
    per_class: int | None = None,
    fraction: float | None = None,
    total: int | None = None,
    seed: int = 0,
    where: str = "data.subset",
) -> np.ndarray:
    """Sorted positions into ``labels`` of a seeded subset that keeps every class in proportion.

    Exactly one of ``per_class`` (that many images of each class, all of a smaller class), ``fraction`` (that
    share of each class, at least one image) or ``total`` (that many images overall, split over the classes in
    proportion to their sizes) is given.
    """
    given = [name for name, v in (("per_class", per_class), ("fraction", fraction), ("total", total)) if v is not None]
    if len(given) != 1:
        raise UserError(f"{where} needs exactly one of per_class or fraction, got {given or 'none'}")
    labels = np.asarray(labels)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if per_class is not None:
        if per_class < 1:
            raise UserError(f"{where}.per_class must be >= 1, got {per_class}")
        take = np.minimum(counts, per_class)
    elif fraction is not None:
        if not 0 < fraction <= 1:
            raise UserError(f"{where}.fraction must be in (0, 1], got {fraction}")
        take = np.clip(np.round(counts * fraction).astype(np.int64), 1, counts)
    else:
        assert total is not None
        if total < 1:
            raise UserError(f"{where} must be >= 1, got {total}")
        if total >= len(labels):
            return np.arange(len(labels))
        take = _largest_remainder(counts, total)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(len(classes)):
        members = np.flatnonzero(inverse == c)
        chosen.append(rng.choice(members, size=int(take[c]), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.arange(0)


def subset_train_indices(labels: Sequence[int] | np.ndarray, subset: dict[str, Any] | None,
                         max_samples: int | None, seed: int) -> np.ndarray:
    """Positions of the training images a cell keeps: ``data.subset`` first, then ``max_train_samples``.

    ``subset`` carries its own seed (a reduced *source* is one fixed set whatever cell reads it); the quick-run
    cap uses the cell's seed.
    """
    labels = np.asarray(labels)
    index = np.arange(len(labels))
    if subset:
        unknown = sorted(set(subset) - {"per_class", "fraction", "seed", "steps"})
        if unknown:
            raise UserError(f"unknown key data.subset.{unknown[0]}; valid keys: per_class, fraction, seed, steps")
        index = index[stratified_indices(labels, per_class=subset.get("per_class"),
                                         fraction=subset.get("fraction"), seed=int(subset.get("seed") or 0))]
    if max_samples is not None and max_samples < len(index):
        index = index[stratified_indices(labels[index], total=max_samples, seed=seed,
                                         where="data.max_train_samples")]
    return index


def reference_train_count(kept: int, max_samples: int | None) -> int:
    """Training images the cell would read without its ``data.subset`` (the class-filtered set, capped by
    ``max_train_samples``): what ``subset.steps: full`` sizes the run by (Yosinski's reduced sources train as
    many optimizer steps as the full source)."""
    return kept if max_samples is None else min(kept, max_samples)


def cap_indices(labels: Sequence[int] | np.ndarray, max_samples: int | None, seed: int,
                where: str = "data.max_val_samples") -> np.ndarray:
    """A seeded, stratified cap (``max_val_samples``); all positions when no cap applies."""
    labels = np.asarray(labels)
    if max_samples is None or max_samples >= len(labels):
        return np.arange(len(labels))
    return stratified_indices(labels, total=max_samples, seed=seed, where=where)
