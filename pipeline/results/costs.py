"""What a cell costs: the cost table (configs/costs.yaml), a cell's estimate with the source of every figure, and
the table refitted from what finished cells recorded (their result.json ``cost``, pipeline.training.cost).

Torch-free: `mkf sweep plan` and `mkf costs fit` run on login nodes.

**The model.** A cell's device-hours are its training time plus its validation time, on one device type:

* training: per epoch, ``images x (resolution / reference)^k / rate`` with ``rate`` the arch's training images/s
  per device at the reference resolution, capped by the loader's ceiling at that resolution (images/s one worker
  decodes x the cell's workers per device); epochs follow the cell's budget and progressive-resizing ramp;
* validation: every epoch, ``val images x forwards (2 with an EMA: the live model and its copy) x
  (val resolution / reference)^k / val rate``.

``k`` is the resolution exponent: images/s scale as resolution^-k. The shipped table states one with its source
(timm's same-harness pairs give k = 2); a fit over cells at two or more resolutions measures it per arch.

**The table** (YAML; every key optional but ``throughput``)::

    gpu: a100                        # the device column an estimate uses by default
    reference_image_size: 224
    resolution_exponent: {value: 2.0, source: "..."}
    throughput:                      # per device type, per arch
      a100:
        resnet50: {train: 2470, val: 6427, kind: published, source: "..."}
        convnext_demo: {train: 5200, val: 16000, exponent: 1.7, kind: measured, cells: 12, date: 2026-07-20,
                        source: "measured (12 cells, 2026-07-20)", loader_ceiling: {per_worker: {"32": 900}}}
    loader:                          # images/s ONE loader worker sustains, per loader and resolution
      wds: {per_worker: {"160": 485, "224": 420}, source: "..."}
      default_workers: 8             # workers per device when a cell leaves data.num_workers to Slurm
    datasets:
      imagenet-wds-mn: {train_images: 1281167, val_images: 50000, classes: 1000}
    sources: {id: "citation"}        # what each entry's source names

A bare number for an arch (the older format) reads as ``{train: N, kind: unsourced}``.

**Fitting** (:func:`fit_table`): per (arch, device type), from every finished cell with a ``cost`` record. Each
cell gives, per training resolution, the device's throughput with the loader's wait taken out (images/s /
(1 - wait share): what the device would do fed at once) and, per validation resolution, forward images/s. With
two or more resolutions the exponent is fitted (least squares of log rate on log resolution, weighted by seconds);
with one it is assumed (the table's, named). The loader's ceiling comes from cells whose wait share shows the
loader was the bottleneck (at least :data:`LOADER_BOUND` of the training time): their images/s per worker; and
from a ``mkf bench loader`` JSON when given.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from datamodules.errors import UserError
from datamodules.progressive import progressive_schedule, stretched

COST_FILE = "cost.json"  # per-attempt cost records of a run directory (pipeline.training.cost)
TABLE_KEYS = ("gpu", "reference_image_size", "resolution_exponent", "throughput", "loader", "datasets", "sources")
KINDS = ("published", "derived", "measured", "assumed", "unsourced")
DEFAULT_EXPONENT = 2.0
LOADER_BOUND = 0.10  # a wait share at least this large: the loader, not the device, set the pace
DEFAULT_WORKERS = 8  # loader workers per device assumed when a cell leaves data.num_workers to Slurm
MANMADE_CLASSES = 551  # Yosinski et al.'s man-made half of ILSVRC-2012 (datamodules.sources.splits); natural: 449


# ---- device names ----------------------------------------------------------------------------------------------
_DEVICE_PATTERNS = (("h200", r"\bH200\b"), ("h100", r"\bH100\b"), ("a100", r"\bA100\b"), ("l40s", r"\bL40S\b"),
                    ("a10", r"\bA10\b"), ("v100", r"\bV100\b"), ("rtx4090", r"RTX 4090"), ("rtx3090", r"RTX 3090"))


def device_type(name: str | None) -> str:
    """The table column of a device name: ``NVIDIA A100-SXM4-80GB`` -> ``a100``, ``cpu`` -> ``cpu``; an unknown
    GPU becomes its name in lower case with non-alphanumerics as ``_`` (a column of its own)."""
    if not name or name.lower() == "cpu":
        return "cpu"
    for column, pattern in _DEVICE_PATTERNS:
        if re.search(pattern, name, re.IGNORECASE):
            return column
    return re.sub(r"[^a-z0-9]+", "_", name.lower().replace("nvidia", "")).strip("_") or "gpu"


# ---- a cell's recorded cost --------------------------------------------------------------------------------------
def sum_attempts(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """result.json's ``cost``: every attempt of the cell added up (a preempted-and-resumed cell reports the total).

    Seconds, images, device-hours and validation forwards add; peaks take the maximum; throughput and wait share
    are recomputed from the sums (never averaged). ``by_resolution`` adds per training resolution.
    """
    if not attempts:
        return {}
    last = attempts[-1]

    def total(key: str) -> float:
        return sum(float(a.get(key) or 0.0) for a in attempts)

    train_s, images = total("train_s"), total("train_images")
    devices = int(last.get("devices") or 1)
    by_res: dict[str, dict[str, float]] = defaultdict(lambda: {"train_s": 0.0, "images": 0, "wait_s": 0.0})
    for a in attempts:
        for res, e in (a.get("by_resolution") or {}).items():
            for key in ("train_s", "images", "wait_s"):
                by_res[res][key] += e.get(key) or 0
    gpu = [a["gpu_hours"] for a in attempts if a.get("gpu_hours") is not None]
    cpu = [a["cpu_core_hours"] for a in attempts if a.get("cpu_core_hours") is not None]
    peaks = [a["peak_device_memory_gb"] for a in attempts if a.get("peak_device_memory_gb") is not None]
    val_s, forwards = total("val_s"), total("val_forwards")
    return {
        "device": last.get("device"), "device_type": last.get("device_type"), "devices": devices,
        "devices_seen": sorted({str(a.get("device")) for a in attempts}),
        "attempts": len(attempts), "threads": last.get("threads"), "workers": last.get("workers"),
        "wall_s": round(total("wall_s"), 3), "fit_s": round(total("fit_s"), 3),
        "train_s": round(train_s, 3), "val_s": round(val_s, 3),
        "train_images": int(images),
        "images_per_s": round(images / train_s, 3) if train_s else None,
        "images_per_s_device": round(images / train_s / devices, 3) if train_s else None,
        "data_wait_share": round(total("wait_s") / train_s, 4) if train_s else None,
        "val_images": int(total("val_images")), "val_passes": int(total("val_passes")),
        "val_forwards": int(forwards), "val_resolution": last.get("val_resolution"),
        "val_forwards_per_s": round(forwards / val_s, 3) if val_s else None,
        "by_resolution": {r: {k: round(v, 3) if isinstance(v, float) else v for k, v in e.items()}
                          for r, e in sorted(by_res.items(), key=lambda kv: int(kv[0]))},
        "peak_device_memory_gb": max(peaks) if peaks else None,
        "peak_host_rss_gb": max((a.get("peak_host_rss_gb") or 0.0) for a in attempts),
        "gpu_hours": round(sum(gpu), 6) if gpu else None,
        "cpu_core_hours": round(sum(cpu), 6) if cpu else None,
        "slurm_job_ids": sorted({str(a["slurm_job_id"]) for a in attempts if a.get("slurm_job_id")}),
    }


# ---- the table -------------------------------------------------------------------------------------------------
def load_table(path: str | Path) -> dict[str, Any]:
    """The cost table at ``path``, checked (a missing file, bad YAML or an unknown key is one UserError line),
    with every figure's provenance (:func:`with_provenance`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"cost table {path} does not exist; restore configs/costs.yaml or run `mkf costs fit`")
    try:
        table = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise UserError(f"{path} is not valid YAML; fix the syntax") from None
    return with_provenance(check_table(table, str(path)), str(path))


def with_provenance(table: dict[str, Any], where: str = "the cost table") -> dict[str, Any]:
    """The table with every entry a dict that says where its figures come from.

    The shipped configs/costs.yaml keeps the layout launch/planning/cost.py reads (a bare training rate per arch, a source
    comment beside it); its provenance, validation rates, resolution exponent, loader figures and source list
    are :func:`pipeline.results.cost_sources.published_table`'s. A bare number equal to the published entry's
    rate takes that entry (kind, source, val); another number is ``unsourced`` (edited by hand) and keeps the
    published validation rate; a dict entry (a fitted table) is read as written. Top-level keys the file lacks
    come from the published table.
    """
    from pipeline.results.cost_sources import published_table

    published = published_table()
    out = json.loads(json.dumps(table))
    for key in ("resolution_exponent", "sources"):
        out.setdefault(key, published[key])
    out["loader"] = {**published["loader"], **(out.get("loader") or {})}
    for device, archs in (out.get("throughput") or {}).items():
        for arch, value in list((archs or {}).items()):
            if isinstance(value, dict):
                continue
            known = ((published["throughput"].get(device) or {}).get(arch))
            if known is not None and float(known["train"]) == float(value):
                archs[arch] = dict(known)
                continue
            archs[arch] = {"train": float(value), "kind": "unsourced",
                           "source": f"edited in {where}, no source named"
                                     + (f" (the published rule gives {known['train']:,})" if known else "")}
            if known is not None and known.get("val"):
                archs[arch]["val"] = known["val"]
    return out


def check_table(table: Any, where: str = "cost table") -> dict[str, Any]:
    if not isinstance(table, dict):
        raise UserError(f"{where} must be a mapping of keys ({', '.join(TABLE_KEYS)})")
    unknown = sorted(set(table) - set(TABLE_KEYS))
    if unknown:
        raise UserError(f"unknown key {unknown[0]} in {where}; valid keys: {', '.join(TABLE_KEYS)}")
    for device, archs in (table.get("throughput") or {}).items():
        for arch, entry in (archs or {}).items():
            rate = entry if not isinstance(entry, dict) else entry.get("train")
            if not isinstance(rate, int | float) or isinstance(rate, bool) or rate <= 0:
                raise UserError(f"throughput.{device}.{arch} in {where} needs a training rate > 0 (images/s), "
                                f"got {rate!r}; write {{train: N, source: ...}}")
            if isinstance(entry, dict) and entry.get("kind", "unsourced") not in KINDS:
                raise UserError(f"throughput.{device}.{arch}.kind {entry['kind']!r} in {where}; use one of "
                                f"{', '.join(KINDS)}")
    return table


def entry(table: dict[str, Any], device: str, arch: str) -> dict[str, Any] | None:
    """The table's entry for (device, arch), a bare number read as an unsourced training rate; None if absent."""
    raw = ((table.get("throughput") or {}).get(device) or {}).get(arch)
    if raw is None:
        return None
    return {"train": float(raw), "kind": "unsourced", "source": "no source named"} if not isinstance(raw, dict) \
        else {"kind": "unsourced", "source": "no source named", **raw}


def exponent(table: dict[str, Any], found: dict[str, Any] | None = None) -> tuple[float, str]:
    """(k, where it came from): the entry's fitted exponent, else the table's stated one, else 2 (assumed)."""
    if found is not None and found.get("exponent") is not None:
        return float(found["exponent"]), found.get("exponent_source") or "fitted"
    stated = table.get("resolution_exponent")
    if isinstance(stated, dict) and stated.get("value") is not None:
        return float(stated["value"]), str(stated.get("source") or "the table's resolution_exponent")
    if isinstance(stated, int | float):
        return float(stated), "the table's resolution_exponent"
    return DEFAULT_EXPONENT, f"assumed {DEFAULT_EXPONENT:g} (area scaling; the table states none)"


def source_line(table: dict[str, Any], device: str, arch: str) -> str:
    """Where an arch's figures come from, one line for the plan view: ``resnet50 (a100): 2,470 img/s at 224 px,
    val 6,427/s, k = 2 (table); published: nvidia-rn50 ...``, ``... measured (12 cells, 2026-07-20)``, or that the
    table lacks it."""
    found = entry(table, device, arch)
    if found is None:
        return f"{arch} ({device}): not in the cost table; add it or run `mkf costs fit` on finished cells"
    ref = int(table.get("reference_image_size") or 224)
    k, k_from = exponent(table, found)
    k_text = f"k = {k:.3g} ({'table' if found.get('exponent') is None else k_from})"
    val = f", val {found['val']:,.0f}/s" if found.get("val") else ", no val rate"
    said = found.get("short") or found["source"]
    return (f"{arch} ({device}): {found['train']:,.0f} img/s at {ref} px{val}, {k_text}; "
            f"{said if said.startswith(found['kind']) else found['kind'] + ': ' + said}")


# ---- a cell's estimate -----------------------------------------------------------------------------------------
@dataclass
class CellCost:
    """A cell's estimate: device-hours and their parts, or what the table lacks (``missing``)."""

    arch: str
    device: str
    hours: float | None = None  # device-hours (GPU-hours; CPU process-hours on the cpu column)
    train_hours: float = 0.0
    val_hours: float = 0.0
    epochs: int = 0
    train_images: float = 0.0  # per epoch
    val_images: float = 0.0  # per validation pass
    loader_bound_epochs: int = 0  # epochs whose pace the loader's ceiling sets, not the device
    missing: str | None = None
    sources: list[str] = field(default_factory=list)  # one line per figure used, naming where it came from


def _dataset_entry(data: dict[str, Any], table: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """The dataset entry of a cell: by data.shards / data.root / data.dataset, or a shards folder's name."""
    names = [data.get("shards"), data.get("root"), data.get("dataset")]
    known = table.get("datasets") or {}
    for name in names:
        if name and name in known:
            return str(name), known[name]
    for name in names[:2]:
        if name and Path(str(name)).name in known:
            return Path(str(name)).name, known[Path(str(name)).name]
    from_index = index_entry(data)
    if from_index is not None:
        return from_index
    return f"dataset {next((n for n in names if n), '?')!r}", None


def index_entry(data: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """A dataset entry from the ``index.json`` of a local ``data.shards`` folder (what `mkf data write` wrote):
    the set named by the cell's half when the shards were written per half of a split (``per_set``: its images
    are the half's own, no share of the classes is taken), else the ``all`` set; None without a readable index."""
    shards = data.get("shards")
    if not isinstance(shards, str) or not shards or "://" in shards or shards.startswith("pipe:"):
        return None
    path = Path(shards).expanduser() / "index.json"
    try:
        index = json.loads(path.read_text())
        sets = index["sets"]
        half = data.get("half", "B")
        name = half if data.get("split") and half in sets and "all" not in sets else "all"
        chosen = sets[name]
        entry = {"train_images": int(chosen["train"]["samples"]), "val_images": int((chosen.get("val") or {}).get("samples") or 0),
                 "classes": len(chosen.get("classes") or index.get("classes") or []),
                 "per_set": name != "all", "source": str(path)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return f"{shards} (index.json)", entry


def half_share(split: dict[str, Any] | None, half: str, classes: int) -> float:
    """The share of a dataset's classes one half of a class split holds (its images, at equal class sizes).

    Yosinski's man-made half is 551 of ImageNet's 1,000 classes and the natural half 449 (not 500 each); an
    explicit split names its classes; random halves are half each (the odd class to B).
    """
    if not split:
        return 1.0
    kind = split.get("kind")
    if kind == "imagenet_manmade_natural" and classes:
        return (MANMADE_CLASSES if half == "A" else classes - MANMADE_CLASSES) / classes
    if kind == "explicit" and classes:
        listed = split.get("a" if half == "A" else "b") or []
        return len(listed) / classes if listed else 0.5
    if kind == "random_halves" and classes:
        a = classes // 2
        return (a if half == "A" else classes - a) / classes
    return 0.5


def _images(data: dict[str, Any], dataset: dict[str, Any]) -> tuple[float, float, float]:
    """(training images, validation images, the full training set's images) one epoch of a cell reads."""
    classes = int(dataset.get("classes") or 0)
    # a set written for the cell's half holds that half's images already (index_entry)
    share = 1.0 if dataset.get("per_set") else half_share(data.get("split"), data.get("half", "B"), classes)
    full = float(dataset["train_images"]) * share
    train = full
    subset = data.get("subset") or {}
    if subset.get("fraction") is not None:
        train *= float(subset["fraction"])
    elif subset.get("per_class") is not None and classes:
        train = min(train, float(subset["per_class"]) * classes * share)
    if data.get("max_train_samples"):
        train = min(train, float(data["max_train_samples"]))
    val = float(dataset.get("val_images") or 0) * share
    if data.get("max_val_samples"):
        val = min(val, float(data["max_val_samples"]))
    return train, val, full


def budget_of(max_epochs: int, max_steps: int, budget: dict[str, Any] | None,
              per_epoch: int) -> tuple[int, int, float]:
    """(epochs, steps, stretch) of a run under ``trainer.budget``: pipeline.schedule.budget_length's arithmetic
    (which also checks the budget; this room may not import it), kept equal to it by tests/test_costs.py."""
    epochs, steps = (budget or {}).get("epochs"), (budget or {}).get("steps")
    if epochs is not None:
        return int(epochs), -1, int(epochs) / max_epochs
    if steps is not None:
        full = max_steps if max_steps > 0 else max_epochs * per_epoch
        return max(1, math.ceil(int(steps) / per_epoch)), int(steps), int(steps) / full
    return max_epochs, max_steps, 1.0


def _loader_per_worker(table: dict[str, Any], found: dict[str, Any], loader: str, size: int) -> tuple[float, str] | None:
    """Images/s one worker decodes at ``size``: the arch's measured ceiling, else the loader's benchmark."""
    for spec, what in ((found.get("loader_ceiling"), f"{found.get('kind', 'measured')} loader ceiling of the arch"),
                       ((table.get("loader") or {}).get(loader), f"loader {loader}")):
        if isinstance(spec, dict) and spec.get("per_worker"):
            points = {int(r): float(v) for r, v in spec["per_worker"].items()}
            return _interpolate(points, size), f"{what} ({spec.get('source', 'no source named')})"
    return None


def _interpolate(points: dict[int, float], size: int) -> float:
    """Log-log interpolation between measured resolutions; the nearest one outside them."""
    sizes = sorted(points)
    if size <= sizes[0]:
        return points[sizes[0]]
    if size >= sizes[-1]:
        return points[sizes[-1]]
    hi = next(s for s in sizes if s >= size)
    lo = max(s for s in sizes if s <= size)
    if hi == lo:
        return points[lo]
    t = math.log(size / lo) / math.log(hi / lo)
    return math.exp(math.log(points[lo]) * (1 - t) + math.log(points[hi]) * t)


def cell_cost(config: dict[str, Any], table: dict[str, Any], device: str | None = None,
              workers: int | None = None) -> CellCost:
    """The device-hours of one resolved cell config on ``device`` (default: the table's ``gpu``), with sources.

    Counts what the trainer does: the budget's epochs (or steps), each at its progressive-resizing resolution,
    capped by the loader's ceiling (``workers`` per device: data.num_workers, else ``workers``, else the table's
    ``loader.default_workers``, else 8), and one validation pass per epoch (twice the forwards with an EMA).
    Anything the table lacks is ``missing`` (one line naming it), never an exception.
    """
    device = device or str(table.get("gpu") or "a100")
    arch = config["model"]["arch"]
    out = CellCost(arch, device)
    found = entry(table, device, arch)
    if found is None:
        out.missing = f"arch {arch} (throughput.{device})"
        return out
    data, trainer = config.get("data") or {}, config.get("trainer") or {}
    name, dataset = _dataset_entry(data, table)
    if dataset is None:
        out.missing = name
        return out
    ref = int(table.get("reference_image_size") or 224)
    k, k_from = exponent(table, found)
    train, val, full = _images(data, dataset)
    devices = trainer.get("devices") if isinstance(trainer.get("devices"), int) else 1
    world = devices * int(trainer.get("num_nodes") or 1)
    batch = int(data.get("batch_size") or 128)
    limit = trainer.get("limit_train_batches", 1.0)
    if isinstance(limit, float):
        train *= limit
    elif isinstance(limit, int) and not isinstance(limit, bool):
        train = min(train, limit * batch * world)
    max_epochs, max_steps = int(trainer.get("max_epochs") or 1), int(trainer.get("max_steps") or -1)
    global_batch = int(trainer.get("global_batch_size") or batch * world * int(trainer.get("accumulate_grad_batches")
                                                                              or 1))
    per_epoch = max(1, int(train) // global_batch)
    epochs, steps, stretch = budget_of(max_epochs, max_steps, trainer.get("budget"), per_epoch)
    if (data.get("subset") or {}).get("steps", "full") == "full" and data.get("subset") and train < full:
        # a reduced source trains the full set's optimizer steps (pipeline.training.train.full_steps)
        target = steps if steps > 0 else max(1, int(full) // global_batch) * epochs
        steps, epochs = target, math.ceil(target / per_epoch)
    seen = [train] * epochs
    if steps > 0:  # the last epoch stops at the step budget
        left = steps * global_batch
        seen = []
        while left > 0 and len(seen) < epochs:
            seen.append(min(train, left))
            left -= train
    size = int(data.get("image_size") or ref)
    progressive = stretched(data.get("progressive"), stretch)
    sizes = progressive_schedule(progressive, len(seen), size)
    n_workers = data.get("num_workers")
    if n_workers is None:
        n_workers = workers if workers is not None else int((table.get("loader") or {}).get("default_workers")
                                                            or DEFAULT_WORKERS)
    loader = data.get("loader") or "default"
    loader = "folder" if loader == "default" and data.get("dataset") == "image_folder" else loader
    rate_source = f"{found['kind']}: {found['source']}"
    out.sources.append(f"training {found['train']:,.0f} img/s per device at {ref} px ({rate_source})")
    out.sources.append(f"resolution^-{k:.2f} ({k_from})")
    train_s = 0.0
    for images, res in zip(seen, sizes, strict=True):
        rate = float(found["train"]) * (ref / res) ** k
        ceiling = _loader_per_worker(table, found, loader, res) if n_workers else None
        if ceiling is not None and ceiling[0] * n_workers < rate:
            rate = ceiling[0] * n_workers
            out.loader_bound_epochs += 1
        train_s += images / rate
    if out.loader_bound_epochs:
        ceiling = _loader_per_worker(table, found, loader, sizes[-1])
        out.sources.append(f"{out.loader_bound_epochs} of {len(seen)} epochs loader-bound: {n_workers} workers x "
                           f"{ceiling[0]:,.0f} img/s ({ceiling[1]})" if ceiling else "loader-bound")
    val_size = int(data.get("val_image_size") or size)
    ema = bool((config.get("model") or {}).get("ema"))
    passes = len(seen)
    limit_val = trainer.get("limit_val_batches", 1.0)
    if isinstance(limit_val, float):
        val *= limit_val
    elif isinstance(limit_val, int) and not isinstance(limit_val, bool):
        val = min(val, limit_val * batch * world)
    val_s = 0.0
    if val and found.get("val"):
        val_s = passes * val * (2 if ema else 1) * (val_size / ref) ** k / float(found["val"])
        out.sources.append(f"validation {found['val']:,.0f} forwards/s at {ref} px, {passes} passes of "
                           f"{val:,.0f} images at {val_size} px{' x 2 (EMA)' if ema else ''}")
    elif val:
        out.sources.append("validation not counted: the table has no val rate for this arch")
    out.epochs, out.train_images, out.val_images = len(seen), train, val
    out.train_hours, out.val_hours = train_s / 3600, val_s / 3600
    out.hours = out.train_hours + out.val_hours
    return out


# ---- fitting the table from finished cells ---------------------------------------------------------------------
def read_cells(dirs: Iterable[str | Path]) -> Iterator[tuple[Path, dict[str, Any], dict[str, Any]]]:
    """(run dir, result, config) of every finished cell under ``dirs`` (run dirs, sweep outputs, stores) that
    recorded a cost; each run dir once."""
    seen: set[str] = set()
    for root in dirs:
        root = Path(root)
        if not root.exists():
            raise UserError(f"{root} does not exist; pass run folders, sweep output folders or a cell store")
        candidates = [root / "result.json"] if (root / "result.json").is_file() else []
        if not candidates:
            # a sweep's cells/ are links into its store: followed
            candidates = [Path(d) / "result.json" for d, _, files in os.walk(root, followlinks=True)
                          if "result.json" in files]
        for path in sorted(candidates):
            key = str(path.parent.resolve())
            if key in seen:
                continue
            seen.add(key)
            try:
                result = json.loads(path.read_text())
                config = yaml.safe_load((path.parent / "config.yaml").read_text())
            except (OSError, ValueError, yaml.YAMLError):
                continue
            if isinstance(result, dict) and result.get("status") == "finished" and isinstance(result.get("cost"),
                                                                                             dict):
                yield path.parent, result, config if isinstance(config, dict) else {}


def _weighted_fit(points: list[tuple[int, float, float]], ref: int) -> tuple[float, float | None]:
    """(rate at ``ref``, fitted k or None) from (resolution, rate, weight) points: log rate = a - k log(res/ref)."""
    sizes = {p[0] for p in points}
    if len(sizes) < 2:
        return math.exp(sum(w * math.log(r) for _, r, w in points) / sum(w for *_, w in points)), None
    wsum = sum(w for *_, w in points)
    xs = [(math.log(s / ref), math.log(r), w) for s, r, w in points]
    mx = sum(w * x for x, _, w in xs) / wsum
    my = sum(w * y for _, y, w in xs) / wsum
    sxx = sum(w * (x - mx) ** 2 for x, _, w in xs)
    sxy = sum(w * (x - mx) * (y - my) for x, y, w in xs)
    slope = sxy / sxx
    return math.exp(my - slope * mx), -slope


def cell_points(result: dict[str, Any]) -> dict[str, Any]:
    """What one cell's cost record says about its arch on its device: per training resolution the device's
    images/s with the loader's wait taken out, its validation forwards/s, and its loader figures."""
    cost = result["cost"]
    devices = int(cost.get("devices") or 1)
    workers = int(cost.get("workers") or 0)
    train, loader = [], []
    for res, e in (cost.get("by_resolution") or {}).items():
        if not e.get("train_s") or not e.get("images"):
            continue
        seconds, images = float(e["train_s"]), float(e["images"])
        wait = min(0.95, float(e.get("wait_s") or 0.0) / seconds)
        per_device = images / seconds / devices
        train.append((int(res), per_device / (1.0 - wait), seconds))
        loader.append((int(res), per_device / max(1, workers), wait >= LOADER_BOUND, seconds))
    val = []
    if cost.get("val_s") and cost.get("val_forwards") and cost.get("val_resolution"):
        val.append((int(cost["val_resolution"]), float(cost["val_forwards"]) / float(cost["val_s"]) / devices,
                    float(cost["val_s"])))
    return {"train": train, "val": val, "loader": loader}


def fit_table(dirs: Iterable[str | Path], base: dict[str, Any] | None = None,
              bench_loader: dict[str, Any] | str | Path | None = None,
              today: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """The cost table refitted from the finished cells under ``dirs``: ``base`` (the shipped table) with every
    (device type, arch) that has measured cells replaced by its fit, and the loader section from a ``mkf bench
    loader`` JSON when given. Returns (table, one line per fitted entry saying what it rests on)."""
    table = json.loads(json.dumps(base or {}))  # a deep copy
    ref = int(table.get("reference_image_size") or 224)
    today = today or _dt.date.today().isoformat()
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for _, result, config in read_cells(dirs):
        arch = result.get("arch") or (config.get("model") or {}).get("arch")
        column = result["cost"].get("device_type") or device_type(result["cost"].get("device"))
        groups[(column, arch)].append(cell_points(result))
    lines = []
    for (column, arch), cells in sorted(groups.items()):
        train = [p for c in cells for p in c["train"]]
        if not train:
            continue
        previous = entry(table, column, arch)
        stated_k, _ = exponent(table)
        rate, k = _weighted_fit(train, ref)
        sizes = sorted({p[0] for p in train})
        if k is None:
            k = stated_k
            rate = math.exp(sum(w * math.log(r * (s / ref) ** k) for s, r, w in train) / sum(w for *_, w in train))
            k_source = f"assumed {k:g}, the table's: one resolution measured ({sizes[0]} px)"
        else:
            k_source = f"fitted over {', '.join(map(str, sizes))} px ({len(cells)} cells)"
        fitted: dict[str, Any] = {"train": round(rate, 1), "exponent": round(k, 3), "exponent_source": k_source}
        val = [p for c in cells for p in c["val"]]
        if val:
            fitted["val"] = round(math.exp(sum(w * math.log(r * (s / ref) ** k) for s, r, w in val)
                                           / sum(w for *_, w in val)), 1)
        elif previous and previous.get("val"):
            fitted["val"] = previous["val"]
        bound = defaultdict(list)
        for c in cells:
            for res, per_worker, is_bound, seconds in c["loader"]:
                if is_bound:
                    bound[res].append((per_worker, seconds))
        if bound:
            fitted["loader_ceiling"] = {
                "per_worker": {str(r): round(sum(v * w for v, w in vs) / sum(w for _, w in vs), 1)
                               for r, vs in sorted(bound.items())},
                "source": f"cells with a data-wait share >= {LOADER_BOUND:.0%} (loader-bound)"}
        fitted.update({"kind": "measured", "cells": len(cells), "date": today,
                       "source": f"measured ({len(cells)} cells, {today})"})
        table.setdefault("throughput", {}).setdefault(column, {})[arch] = fitted
        was = f"; was {previous['train']:,.0f} ({previous['kind']})" if previous else ""
        lines.append(f"{arch} ({column}): {rate:,.1f} img/s at {ref} px, resolution^-{k:.2f} ({k_source})"
                     f"{', val ' + format(fitted['val'], ',.0f') + ' forwards/s' if fitted.get('val') else ''}"
                     f"{', loader-bound in some cells' if bound else ''}; measured ({len(cells)} cells){was}")
    if bench_loader is not None:
        lines += _fit_loader(table, bench_loader, today)
    return table, lines


_BENCH_COLUMNS = {"webdataset": "wds", "imagefolder": "folder", "ffcv": "ffcv"}


def _fit_loader(table: dict[str, Any], bench: dict[str, Any] | str | Path, today: str) -> list[str]:
    """The loader section from a ``mkf bench loader --json`` report: images/s per worker, per loader and size."""
    if not isinstance(bench, dict):
        path = Path(bench)
        try:
            bench = json.loads(path.read_text())
        except (OSError, ValueError):
            raise UserError(f"{path} is not a `mkf bench loader` JSON report; write one with "
                            "`mkf bench loader --json FILE`") from None
    rows, workers = bench.get("rows"), bench.get("workers")
    if not isinstance(rows, list) or not rows or not workers:
        raise UserError("the loader benchmark JSON has no rows or workers; write it with `mkf bench loader --json FILE`")
    section = table.setdefault("loader", {})
    lines = []
    for column, name in _BENCH_COLUMNS.items():
        per_worker = {str(r["size"]): round(float(r[column]) / workers, 1) for r in rows if r.get(column)}
        if per_worker:
            source = (f"mkf bench loader ({workers} workers, {bench.get('images')} JPEGs, "
                      f"{bench.get('cpu_count')} CPUs, {today})")
            section[name] = {"per_worker": per_worker, "source": source}
            lines.append(f"loader {name}: " + ", ".join(f"{v:,.0f} img/s per worker at {s} px"
                                                        for s, v in per_worker.items()) + f" ({source})")
    return lines


def dump_table(table: dict[str, Any], path: str | Path, header: str = "") -> Path:
    """Write a cost table as YAML (the format :func:`load_table` reads), after an optional comment header."""
    path = Path(path)
    check_table(table, str(path))
    body = yaml.safe_dump(table, sort_keys=False, width=118, allow_unicode=True)
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(comment + body)
    tmp.replace(path)
    return path
