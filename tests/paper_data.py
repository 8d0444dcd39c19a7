"""Stand-in data for a smoke run of the paper's catalog (configs/paper/*.yaml), offline, seeded and small.

The catalog reads seven webdataset shard sets (the basenames of its ``shards:`` paths) and one external timm
source. A smoke run needs each of them in the exact shape the real one has -- the real class lists and counts,
so the man-made/natural split is the real 551/449 one and every cell's head has the real width -- but with one
or two tiny images per class, so the whole set is written in seconds. This module writes:

* the raw trees in the on-disk layout each of :mod:`datamodules.sources.layouts`'s readers parses: ImageNet
  (``train/<wnid>/``, ``val/<wnid>/``, the real 1000 ILSVRC-2012 wnids), Food-101, Oxford-IIIT Pets,
  Flowers-102 and CIFAR-10 (python pickles);
* the shard sets, by the project's own ``mkf data write`` (the code under test writes them, not this module);
* a local weights file for ``timm:convnext_tiny.fb_in1k``, which the catalog names with ``file: null``.

Images are seeded random crops, rescales, flips and colour jitters of real photos that ship with scikit-image
and scikit-learn (natural image statistics, so JPEG sizes and decode paths are those of photos, not of noise).
Each class draws from one photo around its own anchor point, so the classes differ from each other.

Import from tests as ``from paper_data import ...`` (pytest puts ``tests/`` on sys.path, as for
``from test_data_writer import photo_tree``).
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

# The real class lists. Food-101's folder names and the Pets breeds (with the dataset's own capitalisation:
# cats capitalised, dogs not, in class-id order) are those of the released archives; CIFAR-10's are its
# batches.meta.
FOOD101_CLASSES = (
    "apple_pie baby_back_ribs baklava beef_carpaccio beef_tartare beet_salad beignets bibimbap bread_pudding "
    "breakfast_burrito bruschetta caesar_salad cannoli caprese_salad carrot_cake ceviche cheese_plate "
    "cheesecake chicken_curry chicken_quesadilla chicken_wings chocolate_cake chocolate_mousse churros "
    "clam_chowder club_sandwich crab_cakes creme_brulee croque_madame cup_cakes deviled_eggs donuts "
    "dumplings edamame eggs_benedict escargots falafel filet_mignon fish_and_chips foie_gras french_fries "
    "french_onion_soup french_toast fried_calamari fried_rice frozen_yogurt garlic_bread gnocchi greek_salad "
    "grilled_cheese_sandwich grilled_salmon guacamole gyoza hamburger hot_and_sour_soup hot_dog "
    "huevos_rancheros hummus ice_cream lasagna lobster_bisque lobster_roll_sandwich macaroni_and_cheese "
    "macarons miso_soup mussels nachos omelette onion_rings oysters pad_thai paella pancakes panna_cotta "
    "peking_duck pho pizza pork_chop poutine prime_rib pulled_pork_sandwich ramen ravioli red_velvet_cake "
    "risotto samosa sashimi scallops seaweed_salad shrimp_and_grits spaghetti_bolognese spaghetti_carbonara "
    "spring_rolls steak strawberry_shortcake sushi tacos takoyaki tiramisu tuna_tartare waffles"
).split()
PETS_BREEDS = (
    "Abyssinian american_bulldog american_pit_bull_terrier basset_hound beagle Bengal Birman Bombay boxer "
    "British_Shorthair chihuahua Egyptian_Mau english_cocker_spaniel english_setter german_shorthaired "
    "great_pyrenees havanese japanese_chin keeshond leonberger Maine_Coon miniature_pinscher newfoundland "
    "Persian pomeranian pug Ragdoll Russian_Blue saint_bernard samoyed scottish_terrier shiba_inu Siamese "
    "Sphynx staffordshire_bull_terrier wheaten_terrier yorkshire_terrier"
).split()
FLOWERS102_CLASSES = 102
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# Folder names under write_paper_shards' root/raw/ (docs/data.md's table of paper shard sets names them so).
RAW_DIRS = {"imagenet": "imagenet", "food101": "food-101", "pets": "oxford-iiit-pet",
            "flowers102": "flowers102", "cifar10": "cifar"}

# The catalog's shard sets: folder name (the basename of configs/paper's `shards:`) -> (raw tree, --source
# layout, --split, shard size). Shard sizes are small so every set has several shards (readers plan across
# them).
PAPER_SHARDS: dict[str, tuple[str, str, str, int]] = {
    "imagenet-wds-mn": ("imagenet", "imagenet_folder", "imagenet_manmade_natural", 256),
    "imagenet-wds-rh": ("imagenet", "imagenet_folder", "random_halves:0", 256),
    "imagenet-wds": ("imagenet", "imagenet_folder", "none", 256),
    "food101-wds": ("food101", "food101", "none", 64),
    "pets-wds": ("pets", "oxford_pets", "none", 32),
    "flowers-wds": ("flowers102", "flowers102", "none", 64),
    "cifar10-wds": ("cifar10", "cifar10", "none", 8),
}

# What each shard set holds: set name -> class count (the man-made/natural split is Yosinski et al. 2014's).
EXPECTED_CLASSES: dict[str, dict[str, int]] = {
    "imagenet-wds-mn": {"A": 551, "B": 449},
    "imagenet-wds-rh": {"A": 500, "B": 500},
    "imagenet-wds": {"all": 1000},
    "food101-wds": {"all": 101},
    "pets-wds": {"all": 37},
    "flowers-wds": {"all": 102},
    "cifar10-wds": {"all": 10},
}


# ---- images ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def source_photos() -> tuple[np.ndarray, ...]:
    """The real colour photos every image is cut from, decoded once and shrunk to a 192-px short side.

    Shrinking first keeps each crop-and-resize cheap (4,000 images in about a second) and loses nothing: the
    outputs are 32--64 px. Only files that ship inside the scikit-image and scikit-learn wheels are used.
    """
    import skimage.data as sk
    from sklearn.datasets import load_sample_images

    raw = [sk.astronaut(), sk.coffee(), sk.chelsea(), sk.rocket(), sk.stereo_motorcycle()[0],
           *load_sample_images().images]
    photos = []
    for array in raw:
        img = Image.fromarray(np.ascontiguousarray(array[..., :3]))
        scale = 192 / min(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BILINEAR)
        photos.append(np.asarray(img))
    return tuple(photos)


def _stream(seed: int, dataset: str, label: int) -> np.random.Generator:
    """One generator per (seed, dataset, class): any class's images are the same whatever else is written."""
    return np.random.default_rng([seed, zlib.crc32(dataset.encode()), label])


def class_images(seed: int, dataset: str, label: int, count: int, size: int,
                 square: bool = False) -> Iterator[np.ndarray]:
    """``count`` uint8 HxWx3 images of one class: crops of one photo around the class's anchor point.

    Each image is a random crop (20--60% of the short side, jittered around the anchor), rescaled so its short
    side is ``size`` (long side up to 4:3 unless ``square``), maybe flipped, with brightness, contrast and
    saturation jitter: the augmentations a real photo collection shows, from a handful of real photos.
    """
    photos = source_photos()
    rng = _stream(seed, dataset, label)
    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    anchor = rng.uniform(0.25, 0.75, size=2) * (h, w)
    for _ in range(count):
        side = int(min(h, w) * rng.uniform(0.2, 0.6))
        long = side if square else int(side * rng.uniform(1.0, 4 / 3))
        ch, cw = (side, long) if rng.random() < 0.5 else (long, side)  # landscape or portrait
        cy = int(np.clip(anchor[0] + rng.normal(0, 0.08 * h) - ch / 2, 0, h - ch))
        cx = int(np.clip(anchor[1] + rng.normal(0, 0.08 * w) - cw / 2, 0, w - cw))
        crop = Image.fromarray(photo[cy:cy + ch, cx:cx + cw])
        out_h, out_w = (size, round(size * cw / ch)) if ch <= cw else (round(size * ch / cw), size)
        pixels = np.asarray(crop.resize((out_w, out_h), Image.Resampling.BILINEAR), dtype=np.float32)
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        grey = pixels.mean(axis=2, keepdims=True)
        pixels = grey + (pixels - grey) * rng.uniform(0.6, 1.4)  # saturation
        pixels = pixels.mean() + (pixels - pixels.mean()) * rng.uniform(0.7, 1.3)  # contrast
        pixels = pixels * rng.uniform(0.7, 1.3)  # brightness
        yield np.ascontiguousarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _save_jpeg(pixels: np.ndarray, path: Path) -> None:
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


MARKER = ".paper_data.json"  # in each raw tree: the arguments it was written with (no reader looks at it)


def _build(final: Path, write: Callable[[Path], None], params: dict[str, object]) -> Path:
    """Write a tree into a temporary sibling and rename it into place: ``final`` exists only when complete, so
    a rerun after a crash rewrites it and a finished tree is never touched again (its mtimes are part of the
    shard writer's source fingerprint: rewriting it would make `mkf data write` refuse the existing
    shards). A finished tree written with other ``params`` is an error, not silently reused."""
    if final.is_dir():
        marker = final / MARKER
        found = json.loads(marker.read_text()) if marker.is_file() else None
        if found != params:
            raise ValueError(f"{final} was written with {found}, not {params}; delete it or use another root")
        return final
    tmp = final.with_name(f".{final.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    (tmp / MARKER).write_text(json.dumps(params, sort_keys=True) + "\n")
    os.replace(tmp, final)
    return final
    tmp = final.with_name(f".{final.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    os.replace(tmp, final)
    return final


# ---- raw trees, one per reader -----------------------------------------------------------------------------
def imagenet_wnids() -> list[str]:
    """The 1000 ILSVRC-2012 wnids in class-index order, from timm's bundled ImageNet info (no network)."""
    from timm.data import ImageNetInfo

    wnids = list(ImageNetInfo("imagenet-1k").label_names())
    assert len(wnids) == 1000 and wnids == sorted(wnids)
    return wnids


def write_imagenet_tree(root: str | Path, train_per_class: int = 2, val_per_class: int = 1, size: int = 48,
                        seed: int = 0) -> Path:
    """``root/train/<wnid>/<wnid>_<i>.JPEG``, ``root/val/<wnid>/ILSVRC2012_val_<n>.JPEG``: the real wnids.

    The real wnids matter: ``imagenet_manmade_natural`` is defined on them (551/449) and ``random_halves``
    draws from them. Val numbers are a seeded permutation of 1..N, as in the real val set (not grouped by
    class).
    """
    wnids = imagenet_wnids()

    def write(tree: Path) -> None:
        val_numbers = np.random.default_rng([seed, 1]).permutation(len(wnids) * val_per_class) + 1
        for label, wnid in enumerate(wnids):
            (tree / "train" / wnid).mkdir(parents=True)
            (tree / "val" / wnid).mkdir(parents=True)
            images = class_images(seed, "imagenet", label, train_per_class + val_per_class, size)
            for i, pixels in enumerate(images):
                if i < train_per_class:
                    _save_jpeg(pixels, tree / "train" / wnid / f"{wnid}_{i}.JPEG")
                else:
                    n = val_numbers[label * val_per_class + i - train_per_class]
                    _save_jpeg(pixels, tree / "val" / wnid / f"ILSVRC2012_val_{n:08d}.JPEG")

    params = {"writer": "write_imagenet_tree", "train_per_class": train_per_class,
              "val_per_class": val_per_class, "size": size, "seed": seed}
    return _build(Path(root), write, params)


def write_food101(root: str | Path, train_per_class: int = 2, val_per_class: int = 1, size: int = 48,
                  seed: int = 0) -> Path:
    """Food-101 as extracted (ROOT=food-101): ``images/<class>/<id>.jpg``, ``meta/{train,test}.txt`` listing
    ``<class>/<id>`` one a line, and ``meta/classes.txt`` (which the archive has; the reader takes the
    folders)."""

    def write(tree: Path) -> None:
        (tree / "meta").mkdir()
        lines: dict[str, list[str]] = {"train": [], "test": []}
        for label, name in enumerate(FOOD101_CLASSES):
            (tree / "images" / name).mkdir(parents=True)
            images = class_images(seed, "food101", label, train_per_class + val_per_class, size)
            for i, pixels in enumerate(images):
                image_id = 100000 + 1000 * label + i
                _save_jpeg(pixels, tree / "images" / name / f"{image_id}.jpg")
                lines["train" if i < train_per_class else "test"].append(f"{name}/{image_id}")
        for part, rows in lines.items():
            (tree / "meta" / f"{part}.txt").write_text("".join(f"{r}\n" for r in rows))
        (tree / "meta" / "classes.txt").write_text("".join(f"{c}\n" for c in FOOD101_CLASSES))

    params = {"writer": "write_food101", "train_per_class": train_per_class,
              "val_per_class": val_per_class, "size": size, "seed": seed}
    return _build(Path(root), write, params)


def write_oxford_pets(root: str | Path, train_per_class: int = 2, val_per_class: int = 1, size: int = 48,
                      seed: int = 0) -> Path:
    """Oxford-IIIT Pets as extracted (ROOT=oxford-iiit-pet): ``images/<Breed>_<n>.jpg`` and
    ``annotations/{trainval,test}.txt`` with the dataset's ``<stem> <class id> <species> <breed id>`` rows
    (ids 1-based; species 1 = cat, 2 = dog; the reader names a class by its stem without the trailing
    number)."""

    def write(tree: Path) -> None:
        (tree / "images").mkdir()
        (tree / "annotations").mkdir()
        rows: dict[str, list[str]] = {"trainval": [], "test": []}
        breed_ids = {1: 0, 2: 0}
        for label, breed in enumerate(PETS_BREEDS):
            species = 1 if breed[0].isupper() else 2
            breed_ids[species] += 1
            images = class_images(seed, "pets", label, train_per_class + val_per_class, size)
            for i, pixels in enumerate(images):
                stem = f"{breed}_{i + 1}"
                _save_jpeg(pixels, tree / "images" / f"{stem}.jpg")
                part = "trainval" if i < train_per_class else "test"
                rows[part].append(f"{stem} {label + 1} {species} {breed_ids[species]}")
        for part, lines in rows.items():
            (tree / "annotations" / f"{part}.txt").write_text("".join(f"{r}\n" for r in lines))

    params = {"writer": "write_oxford_pets", "train_per_class": train_per_class,
              "val_per_class": val_per_class, "size": size, "seed": seed}
    return _build(Path(root), write, params)


def write_flowers102(root: str | Path, train_per_class: int = 2, val_per_class: int = 1, size: int = 48,
                     seed: int = 0) -> Path:
    """Oxford Flowers-102 as downloaded: ``jpg/image_<id>.jpg``, ``imagelabels.mat`` (``labels``: 1 x N,
    1-based) and ``setid.mat`` (``trnid``, ``valid``, ``tstid``: 1 x n image ids, 1-based).

    The reader trains on trnid + valid and validates on tstid, so a class's training images are split between
    trnid and valid (at least one in trnid). Image ids are a seeded permutation, so labels are not in id order
    (as in the real file): a reader that indexed labels by position instead of by id would be caught.
    """
    per_class = train_per_class + val_per_class

    def write(tree: Path) -> None:
        (tree / "jpg").mkdir()
        ids = np.random.default_rng([seed, 2]).permutation(FLOWERS102_CLASSES * per_class) + 1
        labels = np.zeros(len(ids), dtype=np.uint8)
        sets: dict[str, list[int]] = {"trnid": [], "valid": [], "tstid": []}
        for label in range(FLOWERS102_CLASSES):
            for i, pixels in enumerate(class_images(seed, "flowers102", label, per_class, size)):
                image_id = int(ids[label * per_class + i])
                labels[image_id - 1] = label + 1
                _save_jpeg(pixels, tree / "jpg" / f"image_{image_id:05d}.jpg")
                if i >= train_per_class:
                    sets["tstid"].append(image_id)
                else:
                    sets["valid" if i % 2 else "trnid"].append(image_id)
        _savemat(tree / "imagelabels.mat", {"labels": labels[None, :]})
        _savemat(tree / "setid.mat",
                 {k: np.asarray(sorted(v), dtype=np.uint16)[None, :] for k, v in sets.items()})

    params = {"writer": "write_flowers102", "train_per_class": train_per_class,
              "val_per_class": val_per_class, "size": size, "seed": seed}
    return _build(Path(root), write, params)


def _savemat(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """scipy's ``savemat`` (MAT 5, as the dataset ships), with a fixed 116-byte header text: scipy stamps the
    creation time there, which would make the files, and so the raw tree, differ from write to write."""
    from scipy.io import savemat

    savemat(path, arrays)
    data = bytearray(path.read_bytes())
    data[:116] = b"MATLAB 5.0 MAT-file, Platform: posix, written by tests/paper_data.py".ljust(116)
    path.write_bytes(bytes(data))


def write_cifar10(root: str | Path, train_per_class: int = 2, val_per_class: int = 1, seed: int = 0) -> Path:
    """CIFAR-10's python version under ``root/cifar-10-batches-py/``: ``data_batch_1..5``, ``test_batch`` and
    ``batches.meta``, each a protocol-2 pickle of the dataset's dict (``data``: N x 3072 uint8, channel-major
    rows of 32x32 images; ``labels``; ``filenames``; ``batch_label``). Returns ``root`` (``--source
    cifar10:ROOT``).

    Training images are dealt round-robin to the five batches, so some batches hold fewer (the reader
    concatenates them; five are needed, it opens each).
    """

    def write(tree: Path) -> None:
        folder = tree / "cifar-10-batches-py"
        folder.mkdir()
        parts: dict[str, list[tuple[np.ndarray, int, str]]] = {"train": [], "test": []}
        for label, name in enumerate(CIFAR10_CLASSES):
            images = class_images(seed, "cifar10", label, train_per_class + val_per_class, 32, square=True)
            for i, pixels in enumerate(images):
                part = "train" if i < train_per_class else "test"
                parts[part].append((pixels[:32, :32], label, f"{name}_{i}.png"))

        def batch(rows: list[tuple[np.ndarray, int, str]], title: str) -> dict[str, object]:
            data = np.stack([p.transpose(2, 0, 1).reshape(-1) for p, _, _ in rows]) if rows else \
                np.zeros((0, 3072), np.uint8)
            return {"batch_label": title, "labels": [y for _, y, _ in rows], "data": data,
                    "filenames": [f for _, _, f in rows]}

        order = np.random.default_rng([seed, 3]).permutation(len(parts["train"]))
        train = [parts["train"][i] for i in order]
        files = {f"data_batch_{b + 1}": batch(train[b::5], f"training batch {b + 1} of 5") for b in range(5)}
        files["test_batch"] = batch(parts["test"], "testing batch 1 of 1")
        files["batches.meta"] = {"label_names": list(CIFAR10_CLASSES),
                                 "num_cases_per_batch": len(train[0::5]), "num_vis": 3072}
        for name, content in files.items():
            with (folder / name).open("wb") as f:
                pickle.dump(content, f, protocol=2)

    params = {"writer": "write_cifar10", "train_per_class": train_per_class,
              "val_per_class": val_per_class, "seed": seed}
    return _build(Path(root), write, params)


def write_raw_trees(root: str | Path, train_per_class: int = 2, val_per_class: int = 1, size: int = 48,
                    seed: int = 0) -> dict[str, Path]:
    """Every raw dataset the catalog's shards come from, under ``root/<RAW_DIRS name>``, with the same images
    per class in each (CIFAR-10's are 32 px whatever ``size`` is).

    Returns dataset name -> the ROOT of its ``--source LAYOUT:ROOT``.
    """
    root = Path(root)
    counts = {"train_per_class": train_per_class, "val_per_class": val_per_class, "seed": seed}
    return {
        "imagenet": write_imagenet_tree(root / RAW_DIRS["imagenet"], size=size, **counts),
        "food101": write_food101(root / RAW_DIRS["food101"], size=size, **counts),
        "pets": write_oxford_pets(root / RAW_DIRS["pets"], size=size, **counts),
        "flowers102": write_flowers102(root / RAW_DIRS["flowers102"], size=size, **counts),
        "cifar10": write_cifar10(root / RAW_DIRS["cifar10"], **counts),
    }


# ---- shards, by the project's CLI --------------------------------------------------------------------------
def mkf(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``mkf ARGS`` as the user would, in a child process of this interpreter.

    ``python -m launch.cli`` with this checkout first on PYTHONPATH (and as cwd), not the ``mkf`` console
    script: the script imports whichever tree the environment's editable install maps, which in a git worktree
    is another checkout. A failure raises with the CLI's own output.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"mkf {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc


def write_paper_shards(root: str | Path, workers: int = 1, *, train_per_class: int = 2,
                       val_per_class: int = 1, size: int = 48, seed: int = 0) -> dict[str, Path]:
    """The raw trees under ``root/raw/`` and, by ``mkf data write``, every shard set the catalog reads under
    ``root/<name>`` (the names of :data:`PAPER_SHARDS`). Returns name -> shard folder (a cell's
    ``data.shards``).

    ``workers`` is `mkf data write --workers`. With the defaults CIFAR-10 has 20 training images, so a cell
    reading cifar10-wds needs ``data.batch_size`` <= 20 (the loaders refuse a rank with no full batch);
    ``train_per_class`` raises every dataset's count. Rerunnable: finished raw trees are kept, and `mkf data
    write` on a finished set is a no-op.
    """
    root = Path(root)
    raw = write_raw_trees(root / "raw", train_per_class=train_per_class, val_per_class=val_per_class,
                          size=size, seed=seed)
    out: dict[str, Path] = {}
    for name, (dataset, layout, split, shard_size) in PAPER_SHARDS.items():
        out[name] = root / name
        mkf("data", "write", "--source", f"{layout}:{raw[dataset]}", "--format", "wds",
            "--out", str(out[name]), "--split", split, "--shard-size", str(shard_size),
            "--workers", str(workers), "--seed", str(seed), "--no-progress")
    return out


# ---- the external timm source ------------------------------------------------------------------------------
def write_timm_weights(path: str | Path, arch: str = "convnext_tiny", seed: int = 0) -> Path:
    """An untrained ``arch`` (timm's default head: 1000 classes, as ``*.fb_in1k``) as a ``.safetensors`` file,
    for a ``timm:<arch>.<tag>`` source's ``file:`` / ``transfer.base_file``.

    timm's ``pretrained_cfg_overlay=dict(file=PATH)`` loads it (``timm.models.load_state_dict`` reads
    ``.safetensors`` by its suffix), so the catalog's ``timm:convnext_tiny.fb_in1k`` runs offline. Seeded, and
    built under ``fork_rng`` so the caller's random stream does not move.
    """
    import timm
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: use a .safetensors name (timm picks the reader by the suffix)")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = timm.create_model(arch, pretrained=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp),
              metadata={"arch": arch, "num_classes": str(model.num_classes)})  # mkf's own metadata too
    os.replace(tmp, path)
    return path
