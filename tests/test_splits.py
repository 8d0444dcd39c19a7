"""Class splits: Yosinski's random halves, explicit lists and the ImageNet man-made/natural split."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.errors import UserError
from datamodules.sources.splits import ClassSplit, imagenet_manmade_indices, make_split

NAMES = [f"c{i}" for i in range(10)]


def test_random_halves_are_disjoint_complete_and_seeded() -> None:
    s0, s0_again, s1 = (make_split({"kind": "random_halves", "seed": s}, NAMES) for s in (0, 0, 1))
    assert s0 == s0_again and s0 != s1
    assert len(s0.a) == len(s0.b) == 5
    assert set(s0.a) | set(s0.b) == set(NAMES) and not set(s0.a) & set(s0.b)


def test_explicit_split_accepts_names_and_indices() -> None:
    split = make_split({"kind": "explicit", "a": [0, "c3"], "b": ["c5", 9]}, NAMES)
    assert split.a == ("c0", "c3") and split.b == ("c5", "c9")
    assert split.classes("B") == ("c5", "c9")


@pytest.mark.parametrize("spec", [
    {"kind": "explicit", "a": [0, 1], "b": [1, 2]},
    {"kind": "explicit", "a": [0, 1], "b": []},
    {"kind": "explicit", "a": ["nope"], "b": [1]},
    {"kind": "random_halves", "seed": 0, "typo": 1},
    {"kind": "halves"},
])
def test_bad_splits_are_user_errors(spec: dict) -> None:
    with pytest.raises(UserError):
        make_split(spec, NAMES)


def test_imagenet_manmade_natural_matches_yosinski() -> None:
    wnids = [f"n{i:08d}" for i in range(1000)]
    shuffled = wnids[::-1]  # the split follows the sorted wnid order, not the order folders were listed in
    split = make_split({"kind": "imagenet_manmade_natural"}, shuffled)
    assert (len(split.a), len(split.b)) == (551, 449)
    manmade = imagenet_manmade_indices()
    for index in (398, 935, 959, 969, 971, 999):
        assert index in manmade and wnids[index] in split.a
    for index in (0, 397, 936, 958, 970, 972, 998):
        assert index not in manmade and wnids[index] in split.b
    with pytest.raises(UserError, match="1000 ILSVRC-2012"):
        make_split({"kind": "imagenet_manmade_natural"}, NAMES)


def test_split_round_trips_through_json(tmp_path: Path) -> None:
    split = make_split({"kind": "random_halves", "seed": 3}, NAMES)
    split.save(tmp_path / "split.json")
    assert ClassSplit.load(tmp_path / "split.json") == split
