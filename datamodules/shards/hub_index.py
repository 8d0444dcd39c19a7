"""`mkf data index`: an index.json for third-party webdataset shards (the Hub's ImageNet layout and the like).

Such shards hold samples of an image (``jpg``/``jpeg``/``png``/``webp``) plus an integer ``cls``, optionally a
``json``, but no index. The webdataset datamodule needs one -- sample counts per shard are what lets every rank
run the same number of batches, and per-sample labels in tar order let it plan an exact epoch of a class half
or a subset and seek into shards -- so this reads each shard once (headers and labels; images are not decoded) and
writes our index beside nothing else: the shards stay where they are and are referenced by path, URL or
``pipe:`` command.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from braceexpand import braceexpand

from datamodules.errors import UserError
from datamodules.shards.tar import read_samples, sample_image, sample_label
from datamodules.shards.writer import INDEX_FILE, INDEX_VERSION

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def expand_shards(patterns: list[str]) -> list[str]:
    """Brace-expand each pattern (``train-{0000..0146}.tar``); local paths become absolute and must exist."""
    urls: list[str] = []
    for pattern in patterns:
        for url in braceexpand(pattern):
            if "://" not in url and not url.startswith("pipe:"):
                path = Path(url).expanduser().resolve()
                if not path.is_file():
                    raise UserError(f"shard {url} does not exist")
                url = str(path)
            urls.append(url)
    return urls


def count_shard(url: str) -> dict[str, Any]:
    """Samples with an image and an integer label in one shard, per label, read as a stream (no image decode),
    grouped into samples by the same reader and key rules as training (:mod:`datamodules.shards.tar`)."""
    per_class: Counter[int] = Counter()
    labels: list[int] = []  # per sample in tar order, -1 for one the loader skips (no image, no integer label)
    try:
        for sample in read_samples(url):
            label = sample_label(sample)
            if label is not None and sample_image(sample) is not None:
                per_class[label] += 1
                labels.append(label)
            else:
                labels.append(-1)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"cannot read shard {url}: {exc}") from None
    return {"url": url, "per_class": per_class, "bad": len(labels) - sum(per_class.values()), "labels": labels}


def index_hub_shards(train: list[str], val: list[str], out: str | Path, classes: list[str] | None = None,
                     workers: int = 1) -> dict[str, Any]:
    """Count the shards of ``train`` and ``val`` (patterns), write ``out/index.json``, return the index.

    ``classes`` names label 0, 1, ...; without it the classes are named by their label ("0", "1", ...) up to the
    largest label seen.
    """
    parts = {"train": expand_shards(train), "val": expand_shards(val)}
    if not parts["train"]:
        raise UserError("no training shards given")
    urls = parts["train"] + parts["val"]
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        counted = dict(zip(urls, pool.map(count_shard, urls), strict=True))
    largest = max((label for c in counted.values() for label in c["per_class"]), default=-1)
    names = list(classes) if classes is not None else [str(i) for i in range(largest + 1)]
    out_of_range = sorted({lbl for c in counted.values() for lbl in c["per_class"] if not 0 <= lbl < len(names)})
    if out_of_range:
        raise UserError(f"labels {out_of_range[:5]} are outside the {len(names)} classes given")
    entry: dict[str, Any] = {"classes": names}
    for part, part_urls in parts.items():
        per_class: Counter[str] = Counter()
        for url in part_urls:
            per_class.update({names[k]: v for k, v in counted[url]["per_class"].items()})
        entry[part] = {
            # local shards: absolute path as the name, so root / name finds them (verify, the loader)
            # labels: per sample in tar order (-1 = skipped), what the loader plans exact epochs from
            "files": [{"name": url, "url": url, "samples": sum(counted[url]["per_class"].values()),
                       "labels": " ".join(map(str, counted[url]["labels"]))} for url in part_urls],
            "samples": sum(per_class.values()),
            "per_class": dict(sorted(per_class.items())),
            "skipped": sum(counted[url]["bad"] for url in part_urls),
        }
    fingerprint = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:16]
    index = {
        "version": INDEX_VERSION,
        "format": "wds",
        "classes": names,
        "class_to_index": {c: i for i, c in enumerate(names)},
        "split": None,
        "sets": {"all": entry},
        "total_samples": entry["train"]["samples"] + entry["val"]["samples"],
        "skipped_source_images": [],
        "skipped_count": entry["train"]["skipped"] + entry["val"]["skipped"],
        "source": {"layout": "hub_shards", "root": None, "fingerprint": fingerprint},
        "options": {"format": "wds"},
        "plan_fingerprint": fingerprint,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n")
    return index
