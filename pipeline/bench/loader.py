"""`mkf bench loader`: images/s of ImageFolder+DataLoader, webdataset and FFCV on the same real-photo JPEGs.

The photo set is derived from the real photographs scikit-image and scikit-learn ship (astronaut, coffee, chelsea,
the Hubble deep field, China, a flower, ...) by random crops, scales and flips, saved at about 500x375, JPEG
quality 90 -- ImageNet's typical size -- and cached under ``~/.cache/masterkey-filters/bench-jpegs``.

``webdataset`` is the project's wds loader with its exact epoch plan (every sample once per epoch, see
:mod:`datamodules.loaders.wds`); ``wids`` is webdataset's own indexed reader (``ShardListDataset`` +
``DistributedChunkedSampler``, also exact) on the same shards with the same decoder, measured when the ``wids``
package is installed (``pip install wids``; not a project dependency) and ``n/a`` otherwise.

The *decode limit* is the same files decoded and cropped by the same decoder in a tight loop with the same number
of processes and no framework: the ceiling a loader can approach.
"""

from __future__ import annotations

import json
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from datamodules.errors import UserError
from datamodules.loaders.augment import AugmentSpec, decode_train, torchvision_train_transform

CACHE = Path(os.environ.get("MKF_CACHE", Path.home() / ".cache" / "masterkey-filters"))


def _source_photos() -> list[tuple[str, np.ndarray]]:
    try:
        import skimage.data as sk
        from sklearn.datasets import load_sample_images
    except ImportError:
        raise UserError("the benchmark photos come from scikit-image and scikit-learn: "
                        "pip install scikit-image scikit-learn (both are in the test extra)") from None
    photos = [(n, getattr(sk, n)()) for n in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                                                "immunohistochemistry", "retina", "camera", "coins", "brick")]
    sample = load_sample_images()
    photos += [(Path(f).stem, img) for f, img in zip(sample.filenames, sample.images, strict=True)]
    out = []
    for name, pixels in photos:
        pixels = np.asarray(pixels)
        if pixels.ndim == 2:
            pixels = np.stack([pixels] * 3, -1)
        out.append((name, pixels[..., :3].astype(np.uint8)))
    return out


def make_bench_jpegs(folder: Path | None = None, count: int = 2000, seed: int = 0) -> Path:
    """ImageNet-layout tree (train/<photo>/, val/<photo>/) of ``count`` ~500x375 JPEGs; reused when present."""
    folder = folder or CACHE / "bench-jpegs"
    marker = folder / f".complete-{count}-{seed}"
    if marker.is_file():
        return folder
    rng = random.Random(seed)
    photos = _source_photos()
    for i in range(count + count // 20):  # count training images, plus 5% for a val folder
        name, pixels = photos[i % len(photos)]
        img = Image.fromarray(pixels)
        w, h = img.size
        area = rng.uniform(0.3, 1.0) * w * h
        aspect = rng.uniform(0.75, 1.33)
        cw, ch = min(w, int((area * aspect) ** 0.5)), min(h, int((area / aspect) ** 0.5))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = img.crop((x, y, x + cw, y + ch))
        size = (500, 375) if rng.random() < 0.7 else (375, 500)
        crop = crop.resize((int(size[0] * rng.uniform(0.9, 1.1)), int(size[1] * rng.uniform(0.9, 1.1))),
                           Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        part = "train" if i < count else "val"
        target = folder / part / name / f"{name}_{i:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        crop.save(target, quality=90)
    marker.touch()
    return folder


def _timed(batches: Any, limit: int) -> float:
    """Images/s over one pass, the clock started after the first batch (worker start-up is not throughput)."""
    it = iter(batches)
    first = next(it)
    n, start = 0, time.perf_counter()
    for batch in it:
        n += len(batch[1])
        if n >= limit:
            break
    del first
    return n / (time.perf_counter() - start)


def _decode_chunk(args: tuple[list[str], int, str]) -> int:
    files, size, how = args
    torch.set_num_threads(1)
    spec = AugmentSpec(train_resolution=size)
    transform = torchvision_train_transform(spec)
    for path in files:
        data = Path(path).read_bytes()
        if how == "wds":
            decode_train(data, spec)
        else:
            with Image.open(path) as img:
                transform(img.convert("RGB"))
    return len(files)


def decode_limit(files: list[str], size: int, workers: int, how: str) -> float:
    """The same decoder in a tight loop over the files, ``workers`` processes, no loader framework."""
    chunks = [(files[i::workers], size, how) for i in range(workers)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_decode_chunk, [(c[0][:20], size, how) for c in chunks]))  # warm the processes
        start = time.perf_counter()
        n = sum(pool.map(_decode_chunk, chunks))
    return n / (time.perf_counter() - start)


def bench_loader(count: int = 2000, sizes: tuple[int, ...] = (160, 224), workers: int = 2, batch_size: int = 64,
                 out_json: str | None = None, console: Any = None, folder: Path | None = None) -> dict[str, Any]:
    """Measure every loader at every size; print a table, optionally write JSON, return the figures."""
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from datamodules.loaders.wds import ShardStream, index_shards
    from datamodules.shards.writer import WriteOptions, write_dataset

    torch.set_num_threads(1)
    root = make_bench_jpegs(folder, count)
    work = root.parent / f"{root.name}-shards"
    wds_dir = work / "wds-labels"  # an index with per-sample labels (the exact plan's input; older caches lack it)
    write_dataset(str(root), wds_dir, WriteOptions(format="wds", shard_size=250), workers=workers, progress=False,
                  log=lambda *_: None)
    have_ffcv = True
    try:
        import ffcv  # noqa: F401

        ffcv_dir = work / "ffcv"
        write_dataset(str(root), ffcv_dir, WriteOptions(format="ffcv", compress_probability=1.0, jpeg_quality=90),
                      workers=workers, progress=False, log=lambda *_: None)
    except ImportError:
        have_ffcv = False
    files = sorted(str(p) for p in (root / "train").glob("*/*.jpg"))
    n_train = len(files)
    rows: list[dict[str, Any]] = []
    for size in sizes:
        spec = AugmentSpec(train_resolution=size)
        folder_ds = ImageFolder(str(root / "train"), transform=torchvision_train_transform(spec))
        folder_dl = DataLoader(folder_ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)
        results = {"imagefolder": _timed(folder_dl, n_train)}
        index = json.loads((wds_dir / "index.json").read_text())
        stream = ShardStream(index_shards(wds_dir, index, "all", "train"), train=True, spec=spec,
                             batch_size=batch_size, label_map={i: i for i in range(len(index["classes"]))},
                             seed=0, num_workers=workers)
        results["webdataset"] = _timed(DataLoader(stream, batch_size=None, num_workers=workers), n_train)
        wids_rate = _wids_rate(wds_dir, index, spec, batch_size, workers, n_train)
        if wids_rate is not None:
            results["wids"] = wids_rate
        if have_ffcv:
            results["ffcv"] = _ffcv_rate(ffcv_dir, size, batch_size, workers, n_train)
        results["decode_limit_wds"] = decode_limit(files, size, workers, "wds")
        results["decode_limit_imagefolder"] = decode_limit(files, size, workers, "torchvision")
        rows.append({"size": size, **{k: round(v, 1) for k, v in results.items()}})
    report = {"images": n_train, "workers": workers, "batch_size": batch_size, "cpu_count": os.cpu_count(),
              "rows": rows}
    for row in rows:
        row["wds_vs_imagefolder"] = round(row["webdataset"] / row["imagefolder"], 2)
        row["wds_vs_decode_limit"] = round(row["webdataset"] / row["decode_limit_wds"], 2)
        if "wids" in row:
            row["wds_vs_wids"] = round(row["webdataset"] / row["wids"], 2)
    if console is not None:
        _print_table(report, console)
    if out_json:
        Path(out_json).write_text(json.dumps(report, indent=2) + "\n")
    return report


class _WidsDecode:
    """wids sample (``.jpg``/``.cls`` streams) -> (uint8 CHW crop, label), with the wds loader's decoder."""

    def __init__(self, spec: AugmentSpec) -> None:
        self.spec = spec

    def __call__(self, sample: dict[str, Any]) -> tuple[torch.Tensor, int]:
        image, label = sample[".jpg"], sample[".cls"]
        image = image.getvalue() if hasattr(image, "getvalue") else image
        label = label.getvalue() if hasattr(label, "getvalue") else label
        return decode_train(image, self.spec), int(label)


def _wids_collate(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    from datamodules.loaders.wds import _stack

    return _stack([img for img, _ in items]), torch.tensor([label for _, label in items])


def _wids_rate(wds_dir: Path, index: dict[str, Any], spec: AugmentSpec, batch_size: int, workers: int,
               limit: int) -> float | None:
    """webdataset's indexed reader on the same shards and decoder; None when ``wids`` is not installed."""
    try:
        import wids
    except ImportError:
        return None
    import contextlib
    import io
    import warnings

    from torch.utils.data import DataLoader

    shards = [{"url": str(wds_dir / f["name"]), "nsamples": f["samples"]}
              for f in index["sets"]["all"]["train"]["files"]]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():  # wids prints a line per dataset
        warnings.simplefilter("ignore")
        dataset = wids.ShardListDataset(shards, transformations=[_WidsDecode(spec)])
        sampler = wids.DistributedChunkedSampler(dataset, num_replicas=1, rank=0, chunksize=1000, seed=0)
    return _timed(DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                             collate_fn=_wids_collate, drop_last=True), limit)


def _ffcv_rate(path: Path, size: int, batch_size: int, workers: int, limit: int) -> float:
    from ffcv.fields.decoders import IntDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, ToTensor, ToTorchImage

    loader = Loader(str(path / "all" / "train.beton"), batch_size=batch_size, num_workers=workers,
                    order=OrderOption.RANDOM, seed=0, drop_last=True,
                    pipelines={"image": [RandomResizedCropRGBImageDecoder((size, size)), RandomHorizontalFlip(),
                                         ToTensor(), ToTorchImage()],
                               "label": [IntDecoder(), ToTensor()]})
    _timed(loader, limit)  # the first pass compiles FFCV's pipeline with numba
    return _timed(loader, limit)


# (report key, short header): short enough that the table fits a plain 80-column terminal; LOADER_LEGEND says
# what each header means (the JSON keeps the long keys)
LOADER_COLUMNS = (("size", "size"), ("imagefolder", "folder"), ("webdataset", "wds"), ("wids", "wids"),
                  ("ffcv", "ffcv"), ("decode_limit_wds", "dec wds"), ("decode_limit_imagefolder", "dec fold"),
                  ("wds_vs_imagefolder", "vs fold"), ("wds_vs_decode_limit", "vs dec"), ("wds_vs_wids", "vs wids"))
LOADER_LEGEND = ("images/s; folder: ImageFolder + DataLoader; wds: the project's webdataset loader; dec wds / dec "
                 "fold: the decode limit of each (its decoder in a loop, no loader); vs X: wds's images/s over X's; "
                 "n/a: not installed")


def loader_table(report: dict[str, Any]) -> Any:
    """The report as a Rich table that fits 80 columns (short headers, rates as whole images/s) and its legend
    under it."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"loader images/s ({report['images']} JPEGs ~500x375 q90, {report['workers']} workers, "
                        f"batch {report['batch_size']})", title_justify="left", box=box.SIMPLE_HEAD,
                  show_edge=False, padding=(0, 1), pad_edge=False, collapse_padding=True)
    for _, header in LOADER_COLUMNS:
        table.add_column(header, justify="right", no_wrap=True)
    for row in report["rows"]:
        cells = []
        for key, _ in LOADER_COLUMNS:
            value = row.get(key)
            cells.append("n/a" if value is None else f"{value:.2f}" if "_vs_" in key
                         else f"{value:.0f}" if isinstance(value, float) else str(value))
        table.add_row(*cells)
    return Group(table, Text(LOADER_LEGEND))


def _print_table(report: dict[str, Any], console: Any) -> None:
    console.print(loader_table(report))
