"""`mkf data write`: turn a layout's samples into split-specific webdataset shards or FFCV .beton files.

One file of ~410 lines on purpose: the write plan, both writers, the resumable progress records and the index
format they all produce change together; split apart, a reader of one would have to hold the others in mind.

Layout of ``OUT``::

    index.json                       written last: its presence means the write is complete
    <set>/train-000000.tar ...       wds: shards of ``--shard-size`` samples, shuffled across shards
    <set>/train.beton, <set>/val.beton   ffcv: one file per part
    .progress/                       per-shard records of an unfinished write (removed when index.json lands)

``<set>`` is ``all`` without a split, else ``A`` and ``B``: each half gets its own shards, so every half's shards
are full and even instead of holding a mix of classes the run filters away.

Resumable by construction: the plan (which sample goes to which shard) is a pure function of the source, split,
seed and shard size; each shard is written to a temporary name and renamed, then recorded in ``.progress/``. A
rerun after a kill skips recorded shards and rewrites the rest -- no duplicates, nothing missing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import time
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from datamodules.errors import UserError
from datamodules.sources.layouts import Item, Layout, Listing, resolve_source
from datamodules.sources.splits import make_split

INDEX_FILE = "index.json"
INDEX_VERSION = 1
FORMATS = ("wds", "ffcv")
PARTS = ("train", "val")


@dataclass(frozen=True)
class WriteOptions:
    """Everything that decides the bytes of the output (and so the plan fingerprint)."""

    format: str = "wds"
    shard_size: int = 1000
    max_resolution: int | None = None  # longest side; larger images are resized and re-encoded as JPEG
    jpeg_quality: int = 90
    compress_probability: float = 0.5  # ffcv: share of images stored as JPEG (the rest raw pixels)
    seed: int = 0  # sample order across shards
    max_per_class: int | None = None  # keep the first N samples of each class and part (quick runs, tests)


@dataclass(frozen=True)
class ShardPlan:
    name: str  # relative to OUT, e.g. 'A/train-000003.tar'
    set: str
    part: str
    items: tuple[Item, ...]


# ---- image preparation (runs in the writer processes) ------------------------------------------------------
def prepare_image(data: bytes, ext: str, opts: WriteOptions) -> tuple[bytes, str]:
    """Decode once (a corrupt image is caught here, not in training); pass JPEG/PNG through when small enough.

    Raises ``ValueError``/``OSError`` for anything PIL cannot fully decode.
    """
    if not data:
        raise ValueError("zero-byte image")
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        fmt = img.format
        too_big = opts.max_resolution is not None and max(img.size) > opts.max_resolution
        if fmt in ("JPEG", "PNG") and not too_big and img.mode in ("RGB", "L"):
            return data, "jpg" if fmt == "JPEG" else "png"
        out = img.convert("RGB")
        if too_big:
            out.thumbnail((opts.max_resolution, opts.max_resolution), Image.Resampling.LANCZOS)  # type: ignore[arg-type]
        buffer = io.BytesIO()
        out.save(buffer, format="JPEG", quality=opts.jpeg_quality)
        return buffer.getvalue(), "jpg"


def _read_checked(layout: Layout, part: str, item: Item, opts: WriteOptions) -> tuple[bytes, str]:
    data, ext = layout.read(part, item.ref)
    return prepare_image(data, ext, opts)


def write_wds_shard(layout: Layout, plan: ShardPlan, out: Path, opts: WriteOptions) -> dict[str, Any]:
    """Write one tar shard atomically; return its record (samples, per-class counts, skipped keys)."""
    import webdataset as wds

    target = out / plan.name
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    per_class: Counter[int] = Counter()
    labels: list[int] = []
    skipped: list[str] = []
    # a whole-second mtime: a float one makes tarfile add a PAX header to every member, which costs readers
    with wds.TarWriter(str(tmp), encoder=False, mtime=int(time.time())) as sink:
        for item in plan.items:
            try:
                data, ext = _read_checked(layout, plan.part, item, opts)
            except Exception as exc:  # noqa: BLE001 -- any undecodable source image is skipped and counted
                skipped.append(f"{item.key}: {type(exc).__name__}: {exc}")
                continue
            sink.write({"__key__": item.key.replace(".", "_"), ext: data, "cls": str(item.label).encode()})
            per_class[item.label] += 1
            labels.append(item.label)
    os.replace(tmp, target)
    # labels in tar order: the loader plans exact epochs (class filters, subsets, seeks) from them
    return {"name": plan.name, "samples": sum(per_class.values()), "bytes": target.stat().st_size,
            "per_class": {str(k): v for k, v in sorted(per_class.items())}, "skipped": skipped,
            "labels": " ".join(map(str, labels))}


class _FFCVSource:
    """An indexable view of a plan for FFCV's DatasetWriter: (HxWx3 uint8 pixels, label)."""

    def __init__(self, layout: Layout, part: str, items: list[Item], opts: WriteOptions) -> None:
        self.layout, self.part, self.items, self.opts = layout, part, items, opts

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import numpy as np

        item = self.items[i]
        data, _ = self.layout.read(self.part, item.ref)
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB")), item.label


def _check_item(layout: Layout, part: str, item: Item, opts: WriteOptions) -> str | None:
    try:
        _read_checked(layout, part, item, opts)
    except Exception as exc:  # noqa: BLE001
        return f"{item.key}: {type(exc).__name__}: {exc}"
    return None


def write_ffcv_file(layout: Layout, plan: ShardPlan, out: Path, opts: WriteOptions, workers: int) -> dict[str, Any]:
    """One .beton per (set, part): bad images are filtered first, because FFCV's writer cannot skip."""
    try:
        from ffcv.fields import IntField, RGBImageField
        from ffcv.writer import DatasetWriter
    except ImportError:
        raise UserError("--format ffcv needs FFCV: pip install '.[ffcv]' (system libs: pkg-config "
                        "libopencv-dev libturbojpeg0-dev)") from None
    good: list[Item] = []
    skipped: list[str] = []
    for item in plan.items:
        problem = _check_item(layout, plan.part, item, opts)
        if problem:
            skipped.append(problem)
        else:
            good.append(item)
    target = out / plan.name
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    fields = {
        "image": RGBImageField(write_mode="proportion", max_resolution=opts.max_resolution,
                               jpeg_quality=opts.jpeg_quality, compress_probability=opts.compress_probability),
        "label": IntField(),
    }
    DatasetWriter(str(tmp), fields, num_workers=max(1, workers)).from_indexed_dataset(
        _FFCVSource(layout, plan.part, good, opts))
    os.replace(tmp, target)
    per_class = Counter(item.label for item in good)
    return {"name": plan.name, "samples": len(good), "bytes": target.stat().st_size,
            "per_class": {str(k): v for k, v in sorted(per_class.items())}, "skipped": skipped}


# ---- planning ----------------------------------------------------------------------------------------------
def plan_shards(listing: Listing, sets: dict[str, tuple[str, ...]], opts: WriteOptions) -> list[ShardPlan]:
    """Deterministic: samples of each (set, part) shuffled with the seed, then cut into shards."""
    index = {name: i for i, name in enumerate(listing.classes)}
    plans: list[ShardPlan] = []
    for set_name, classes in sets.items():
        wanted = {index[c] for c in classes}
        for part in PARTS:
            items = [it for it in listing.parts.get(part, []) if it.label in wanted]
            if opts.max_per_class is not None:
                seen: Counter[int] = Counter()
                items = [it for it in items if (seen.update([it.label]) or seen[it.label]) <= opts.max_per_class]
            if not items:
                raise UserError(f"the source has no {part} samples for set {set_name}; check --source and --split")
            random.Random(f"{opts.seed}:{set_name}:{part}").shuffle(items)
            if opts.format == "ffcv":
                plans.append(ShardPlan(f"{set_name}/{part}.beton", set_name, part, tuple(items)))
                continue
            for k, start in enumerate(range(0, len(items), opts.shard_size)):
                chunk = tuple(items[start:start + opts.shard_size])
                plans.append(ShardPlan(f"{set_name}/{part}-{k:06d}.tar", set_name, part, chunk))
    return plans


def _plan_fingerprint(plans: list[ShardPlan], opts: WriteOptions, source_fp: str) -> str:
    digest = hashlib.sha1(json.dumps([asdict(opts), source_fp], sort_keys=True).encode())
    for plan in plans:
        digest.update(plan.name.encode())
        for item in plan.items:
            digest.update(f"{item.key}|{item.label}\n".encode())
    return digest.hexdigest()


def parse_split(text: str | None) -> dict[str, Any] | None:
    """CLI split syntax: none | random_halves[:SEED] | imagenet_manmade_natural | a JSON mapping."""
    if not text or text == "none":
        return None
    if text.startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            raise UserError(f"--split {text!r} is not valid JSON; e.g. '{{\"kind\": \"explicit\", \"a\": [0], \"b\": [1]}}'") from None
    kind, _, seed = text.partition(":")
    if kind == "random_halves":
        if seed and not seed.isdigit():
            raise UserError(f"--split random_halves:{seed}: the seed must be an integer")
        return {"kind": kind, "seed": int(seed or 0)}
    if kind == "imagenet_manmade_natural" and not seed:
        return {"kind": kind}
    raise UserError(f"unknown --split {text!r}; use none, random_halves[:SEED], imagenet_manmade_natural or JSON")


# ---- the command -------------------------------------------------------------------------------------------
def write_dataset(
    source: str,
    out: str | Path,
    opts: WriteOptions,
    split: str | None = None,
    workers: int = 1,
    val_labels: str | None = None,
    progress: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Write (or finish writing) ``source`` into ``out``; return the index. See the module docstring."""
    if opts.format not in FORMATS:
        raise UserError(f"unknown --format {opts.format!r}; use one of {', '.join(FORMATS)}")
    if opts.shard_size < 1:
        raise UserError(f"--shard-size must be >= 1, got {opts.shard_size}")
    if not 1 <= opts.jpeg_quality <= 100:
        raise UserError(f"--jpeg-quality must be in 1..100, got {opts.jpeg_quality}")
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if opts.format == "ffcv":
        try:
            import ffcv  # noqa: F401
        except ImportError:
            raise UserError("--format ffcv needs FFCV: pip install '.[ffcv]' (system libs: pkg-config "
                            "libopencv-dev libturbojpeg0-dev)") from None
    out = Path(out)
    layout = resolve_source(source, val_labels=val_labels)
    listing = layout.listing()
    class_split = make_split(parse_split(split), listing.classes)
    sets = {"all": tuple(listing.classes)} if class_split.kind == "none" else {"A": class_split.a, "B": class_split.b}
    plans = plan_shards(listing, sets, opts)
    source_fp = layout.fingerprint(listing)
    fingerprint = _plan_fingerprint(plans, opts, source_fp)

    index_path = out / INDEX_FILE
    if index_path.is_file():
        existing = read_index(out)
        if existing.get("plan_fingerprint") == fingerprint:
            log(f"{out}: already complete ({existing['total_samples']} samples); nothing to do")
            return existing
        raise UserError(f"{out} already holds another write (other source or options); choose a new --out or delete it")
    if out.exists() and any(out.iterdir()) and not (out / ".progress").is_dir():
        raise UserError(f"{out} exists and is not empty; choose a new --out or an empty folder")
    progress_dir = out / ".progress"
    progress_dir.mkdir(parents=True, exist_ok=True)
    plan_file = progress_dir / "plan.json"
    if plan_file.is_file() and json.loads(plan_file.read_text()).get("plan_fingerprint") != fingerprint:
        raise UserError(f"{out} holds an unfinished write with other options or source; rerun that exact "
                        "command to finish it, or delete the folder")
    plan_file.write_text(json.dumps({"plan_fingerprint": fingerprint}) + "\n")
    for set_name in sets:
        (out / set_name).mkdir(exist_ok=True)

    records = _load_records(out, plans)
    todo = [p for p in plans if p.name not in records]
    if records:
        log(f"resuming: {len(records)} of {len(plans)} files already written, {len(todo)} to go")
    total = sum(len(p.items) for p in todo)
    with _Progress(progress, total, f"writing {opts.format} to {out}") as bar:
        if opts.format == "ffcv":
            for plan in todo:
                _save_record(out, write_ffcv_file(layout, plan, out, opts, workers))
                bar.advance(len(plan.items))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(write_wds_shard, layout, plan, out, opts): plan for plan in todo}
                for future in as_completed(futures):
                    _save_record(out, future.result())
                    bar.advance(len(futures[future].items))
    records = _load_records(out, plans)
    index = _build_index(out, plans, records, listing, class_split.to_json(), sets, opts, layout, source_fp,
                         fingerprint)
    for name in sorted({s for r in records.values() for s in r["skipped"]})[:20]:
        warnings.warn(f"skipped unreadable source image {name}", stacklevel=2)
    tmp = out / f".{INDEX_FILE}.tmp"
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(tmp, index_path)
    shutil.rmtree(progress_dir, ignore_errors=True)
    for stale in out.glob("*/.*.tmp-*"):  # temporaries of a killed run
        stale.unlink(missing_ok=True)
    return index


def _record_path(out: Path, name: str) -> Path:
    return out / ".progress" / (name.replace("/", "__") + ".json")


def _save_record(out: Path, record: dict[str, Any]) -> None:
    path = _record_path(out, record["name"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def _load_records(out: Path, plans: list[ShardPlan]) -> dict[str, dict[str, Any]]:
    """Records of finished files whose bytes are still there (a record without its file is redone)."""
    records = {}
    for plan in plans:
        path = _record_path(out, plan.name)
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        target = out / plan.name
        if target.is_file() and target.stat().st_size == record["bytes"]:
            records[plan.name] = record
    return records


def _build_index(out: Path, plans: list[ShardPlan], records: dict[str, dict[str, Any]], listing: Listing,
                 split_json: dict[str, Any], sets: dict[str, tuple[str, ...]], opts: WriteOptions,
                 layout: Layout, source_fp: str, fingerprint: str) -> dict[str, Any]:
    index_sets: dict[str, Any] = {}
    for set_name, classes in sets.items():
        index_sets[set_name] = {"classes": list(classes)}
        for part in PARTS:
            files = [records[p.name] for p in plans if p.set == set_name and p.part == part]
            per_class: Counter[str] = Counter()
            for r in files:
                for label, n in r["per_class"].items():
                    per_class[listing.classes[int(label)]] += n
            index_sets[set_name][part] = {
                # wds: "labels" = each sample's label in tar order (space-separated; see datamodules.loaders.wds)
                "files": [{"name": r["name"], "samples": r["samples"], "bytes": r["bytes"],
                           **({"labels": r["labels"]} if "labels" in r else {})} for r in files],
                "samples": sum(r["samples"] for r in files),
                "per_class": dict(sorted(per_class.items())),
                "skipped": sum(len(r["skipped"]) for r in files),
            }
    # each skipped source names the set and part (train/val) it was left out of
    skipped = [f"{p.set}/{p.part}: {s}" for p in plans if p.name in records for s in records[p.name]["skipped"]]
    return {
        "version": INDEX_VERSION,
        "format": opts.format,
        "classes": listing.classes,
        "class_to_index": {c: i for i, c in enumerate(listing.classes)},
        "split": split_json,
        "sets": index_sets,
        "total_samples": sum(r["samples"] for r in records.values()),
        "skipped_source_images": skipped[:100],
        "skipped_count": len(skipped),
        "source": {"layout": layout.name, "root": str(layout.root) if layout.root else None,
                   "fingerprint": source_fp},
        "options": asdict(opts),
        "plan_fingerprint": fingerprint,
    }


def read_index(root: str | Path) -> dict[str, Any]:
    """Load and sanity-check ``root/index.json``; a missing or unreadable index is a UserError naming it."""
    path = Path(root) / INDEX_FILE
    if not path.is_file():
        raise UserError(f"{path} does not exist; write the data first with `mkf data write --out {root}` "
                        "(or rerun an interrupted write to finish it)")
    try:
        index = json.loads(path.read_text())
        assert isinstance(index, dict) and index.get("version") == INDEX_VERSION and "sets" in index
    except (ValueError, AssertionError):
        raise UserError(f"{path} is not a valid index (corrupt or from another tool); rerun `mkf data write`") from None
    return index


class _Progress:
    """A rich progress bar over samples, or nothing (tests, logs)."""

    def __init__(self, enabled: bool, total: int, title: str) -> None:
        self.enabled, self.total, self.title = enabled and total > 0, total, title

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import Progress

            self._progress = Progress()
            self._progress.__enter__()
            self._task = self._progress.add_task(self.title, total=self.total)
        return self

    def advance(self, n: int) -> None:
        if self.enabled:
            self._progress.advance(self._task, n)

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self._progress.__exit__(*exc)
