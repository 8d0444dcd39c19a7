"""Class splits: which classes form dataset A and which form dataset B.

A split is a first-class object saved with every run (``split.json``), because a transfer result means nothing
without knowing exactly which classes the base and the target saw.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from datamodules.errors import UserError

SPLIT_KINDS = ("random_halves", "explicit", "imagenet_manmade_natural")
HALVES = ("A", "B")


def imagenet_manmade_indices() -> frozenset[int]:
    """Yosinski et al. 2014's man-made half of ILSVRC-2012 (indices into the sorted wnid list): 551 classes.

    The remaining 449 classes are natural objects (animals, plants, geology...).
    """
    return frozenset([*range(398, 936), *range(959, 970), 971, 999])


@dataclass(frozen=True)
class ClassSplit:
    """Two disjoint sets of class names: ``a`` (the base dataset A) and ``b`` (the target dataset B)."""

    kind: str
    a: tuple[str, ...]
    b: tuple[str, ...]
    seed: int | None = None

    def classes(self, half: str) -> tuple[str, ...]:
        """The class names of ``half`` ('A' or 'B'), in the order that defines labels 0..k-1."""
        if half not in HALVES:
            raise UserError(f"unknown split half {half!r}; use one of {', '.join(HALVES)}")
        return self.a if half == "A" else self.b

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "a": list(self.a), "b": list(self.b)}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ClassSplit:
        data = json.loads(Path(path).read_text())
        return cls(kind=data["kind"], a=tuple(data["a"]), b=tuple(data["b"]), seed=data.get("seed"))


def _check_disjoint(a: Sequence[str], b: Sequence[str], all_names: Sequence[str]) -> None:
    known = set(all_names)
    for half, names in (("a", a), ("b", b)):
        if not names:
            raise UserError(f"class split half '{half}' is empty; list at least one class in data.split.{half}")
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UserError(
                f"class split half '{half}' names unknown classes {unknown[:5]}; "
                f"valid names are the dataset's classes, e.g. {list(all_names)[:5]}"
            )
        if len(set(names)) != len(names):
            raise UserError(f"class split half '{half}' lists a class twice; list each class once")
    overlap = sorted(set(a) & set(b))
    if overlap:
        raise UserError(f"class split halves overlap on {overlap[:5]}; A and B must be disjoint")


def make_split(spec: dict[str, Any] | None, class_names: Sequence[str]) -> ClassSplit:
    """Build a split from its config ``spec`` over a dataset whose classes are ``class_names``.

    ``spec`` is one of::

        {kind: random_halves, seed: 0}                       # Yosinski's random A/B halves
        {kind: explicit, a: [names or indices], b: [...]}   # any two disjoint class lists
        {kind: imagenet_manmade_natural}                     # A = man-made (551), B = natural (449)

    ``None`` means no split: every class is in A and B alike (a plain, whole-dataset run).
    """
    names = list(class_names)
    if spec is None:
        return ClassSplit(kind="none", a=tuple(names), b=tuple(names))
    spec = dict(spec)
    kind = spec.pop("kind", None)
    allowed = {"random_halves": {"seed"}, "explicit": {"a", "b"}, "imagenet_manmade_natural": set()}
    if kind not in allowed:
        raise UserError(f"unknown data.split.kind {kind!r}; use one of {', '.join(SPLIT_KINDS)}")
    extra = set(spec) - allowed[kind]
    if extra:
        raise UserError(
            f"unknown key(s) {sorted(extra)} in data.split for kind {kind!r}; allowed: {sorted(allowed[kind]) or 'none'}"
        )
    if kind == "random_halves":
        seed = int(spec.get("seed", 0))
        if len(names) < 2:
            raise UserError(f"random_halves needs at least 2 classes, the dataset has {len(names)}")
        order = list(names)
        random.Random(seed).shuffle(order)
        half = len(order) // 2
        a, b = sorted(order[:half], key=names.index), sorted(order[half:], key=names.index)
        return ClassSplit(kind=kind, a=tuple(a), b=tuple(b), seed=seed)
    if kind == "explicit":
        a = [_as_name(c, names) for c in spec.get("a") or []]
        b = [_as_name(c, names) for c in spec.get("b") or []]
        _check_disjoint(a, b, names)
        return ClassSplit(kind=kind, a=tuple(a), b=tuple(b))
    if len(names) != 1000:
        raise UserError(
            f"imagenet_manmade_natural needs the 1000 ILSVRC-2012 classes, the dataset has {len(names)}; "
            "point data.root at a full ImageNet folder or use kind: random_halves"
        )
    ordered = sorted(names)  # the standard class order is the sorted wnid list
    manmade = imagenet_manmade_indices()
    a = tuple(w for i, w in enumerate(ordered) if i in manmade)
    b = tuple(w for i, w in enumerate(ordered) if i not in manmade)
    return ClassSplit(kind=kind, a=a, b=b)


def _as_name(entry: Any, names: Sequence[str]) -> str:
    """Explicit lists may name classes or give their indices; normalise to names."""
    if isinstance(entry, bool):
        raise UserError(f"class split entry {entry!r} is neither a class name nor an index")
    if isinstance(entry, int):
        if not 0 <= entry < len(names):
            raise UserError(f"class index {entry} is out of range 0..{len(names) - 1}")
        return names[entry]
    return str(entry)
