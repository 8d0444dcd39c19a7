"""`mkf data verify DIR`: decode every sample of a written dataset and check the counts against index.json.

Catches what a training run would trip over hours in: a truncated shard, a member that does not decode, a label
out of range, a shard whose sample count drifted from the index.
"""

from __future__ import annotations

import io
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from datamodules.errors import UserError
from datamodules.shards.tar import read_samples, sample_image, sample_label
from datamodules.shards.writer import read_index


def verify_tar(url: str, num_classes: int) -> dict[str, Any]:
    """Decode every image of one shard, grouped into samples exactly as training groups them
    (:mod:`datamodules.shards.tar`); return samples, per-class counts and problems (key: why)."""
    problems: list[str] = []

    def unreadable(exc: Exception) -> bool:
        problems.append(f"{url}: unreadable tar ({exc})")
        return True

    per_class: Counter[int] = Counter()
    for sample in read_samples(url, unreadable):
        key = sample["__key__"]
        label, image = sample_label(sample), sample_image(sample)
        try:
            if label is None:
                raise ValueError(f"no integer 'cls' member (has {sorted(k for k in sample if not k.startswith('__'))})")
            if not 0 <= label < num_classes:
                raise ValueError(f"label {label} outside 0..{num_classes - 1}")
            if image is None:
                raise ValueError(f"no image member, has {sorted(k for k in sample if not k.startswith('__'))}")
            with Image.open(io.BytesIO(image)) as img:
                img.load()
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{url}:{key}: {type(exc).__name__}: {exc}")
            continue
        per_class[label] += 1
    return {"samples": sum(per_class.values()), "per_class": per_class, "problems": problems}


def verify_beton(path: str, num_classes: int) -> dict[str, Any]:
    """Decode every image of one .beton through FFCV (centre crop to 32 px keeps it cheap)."""
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    loader = Loader(path, batch_size=256, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines={"image": [CenterCropRGBImageDecoder((32, 32), ratio=1.0)],
                               "label": [IntDecoder(), ToTensor()]})
    per_class: Counter[int] = Counter()
    problems: list[str] = []
    for _, labels in loader:
        for label in labels.view(-1).tolist():
            if not 0 <= label < num_classes:
                problems.append(f"{path}: label {label} outside 0..{num_classes - 1}")
            per_class[label] += 1
    return {"samples": sum(per_class.values()), "per_class": per_class, "problems": problems}


def verify_dataset(root: str | Path, workers: int = 1) -> dict[str, Any]:
    """Check every file of ``root``'s index; raises UserError listing the first problems, else returns counts."""
    root = Path(root)
    index = read_index(root)
    classes = index["classes"]
    files = [(set_name, part, f) for set_name, entry in index["sets"].items() for part in ("train", "val")
             for f in entry[part]["files"]]
    urls = [f.get("url") or str(root / f["name"]) for _, _, f in files]  # Hub indexes list URLs / pipe: commands
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not Path(u).is_file()]
    if missing:
        raise UserError(f"shard {missing[0]} is missing ({len(missing)} files in all); rerun `mkf data write` "
                        "with the same arguments to repair it")
    check = verify_beton if index["format"] == "ffcv" else verify_tar
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(check, urls, [len(classes)] * len(files)))
    problems: list[str] = []
    counts: dict[str, dict[str, int]] = {}
    for (set_name, part, f), url, result in zip(files, urls, results, strict=True):
        problems += result["problems"]
        if result["samples"] != f["samples"]:
            problems.append(f"{url}: {result['samples']} samples decode, index says {f['samples']}")
        counts.setdefault(set_name, Counter())[part] += result["samples"]  # type: ignore[index]
    for set_name, entry in index["sets"].items():
        for part in ("train", "val"):
            per_class = Counter()
            for (s, p, _), result in zip(files, results, strict=True):
                if (s, p) == (set_name, part):
                    per_class.update({classes[k]: v for k, v in result["per_class"].items()})
            if dict(per_class) != entry[part]["per_class"]:
                problems.append(f"{set_name}/{part}: per-class counts differ from the index")
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserError(f"{root} failed verification: {'; '.join(problems[:3])}{more}; rewrite it with `mkf data write`")
    return {"root": str(root), "format": index["format"], "files": len(files),
            "samples": {s: dict(c) for s, c in counts.items()}, "total": sum(r["samples"] for r in results)}
