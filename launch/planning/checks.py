"""Plan-time checks: every value and path of a planned sweep that can be checked without training, before anything
is written or submitted (`mkf sweep plan` and `mkf sweep run` call :func:`check_plan`).

What is checked, per sweep of the plan:

* **data paths**: a role's ``data.shards`` (loader wds / ffcv) is a folder holding an ``index.json`` of the
  writer's format, written for that loader; an ``image_folder`` root read by its own reader holds ``train/`` and
  ``val/``. A role with a ``prepare:`` section whose shards are not written yet is skipped (`run` writes them
  first, after checking its source), and so are URLs and ``pipe:`` paths;
* **splits and classes fit the data**: the split is made over the index's (or the folder's) classes, so an
  explicit split naming a class the data lacks, or ``imagenet_manmade_natural`` over a set without the 1,000
  ImageNet classes, fails here; shards written per half hold the half the cell reads, for the same split;
* **numeric ranges**: batch size, image sizes, epochs and steps, learning rate, workers, devices and nodes of every
  resolved cell template;
* **profiles**: the Slurm profiles the sweep names exist in the profiles file: `run --executor slurm` checks the
  file it submits with (``--profiles``); `plan`, which has no such option, warns about the shipped one.

Each failure is a :class:`UserError` of one line, ``<key>: <problem>; <fix>``. A sweep whose ``data_root`` does
not exist on this machine (planning the paper's catalog on a laptop, for its cost) has the paths under it checked
only by `run` (``strict``): `plan` returns a warning line for it instead.

Torch-free: it runs on login nodes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datamodules.errors import UserError

INDEX = "index.json"
INDEX_VERSION = 1  # datamodules.shards.writer.INDEX_VERSION (that module imports PIL)
HALVES = ("A", "B")


def check_plan(plan: Any, strict: bool = True, profiles_file: str | Path | None = None,
               profile: str | None = None, check_profiles: bool = True) -> list[str]:
    """Check every sweep of ``plan`` (a SweepPlan from :func:`launch.planning.catalog.plan_catalog`).

    Raises the first problem as a one-line :class:`UserError`; returns warning lines (paths not checked because
    their ``data_root`` is not on this machine, ``strict`` False only). ``profiles_file`` / ``profile``: the
    Slurm profiles file and ``--profile`` of a run (``check_profiles`` False: a local run, no profiles used).
    """
    warnings: list[str] = []
    for part in getattr(plan, "parts", None) or [plan]:
        sweep = getattr(part, "sweep", None)
        if sweep is None:  # a manifest loaded from an output folder: checked when it was planned
            continue
        name = f"sweep {part.name}"
        for key, config in part.templates.items():
            stage, _, role = key.partition("|")
            role = role.partition("|")[2] or role
            check_numbers(config, f"{name}, stage {stage}, dataset {role}")
        prepared = set(sweep.prepare_specs())
        seen: set[str] = set()
        for role, section in sweep.dataset_sections().items():
            data = _with_defaults(section)
            ident = json.dumps(data, sort_keys=True, default=str)
            if ident in seen:
                continue
            seen.add(ident)
            prefix = f"datasets.{role}" if sweep.datasets is not None else "data"
            warning = check_data(data, prefix, sweep.data_root, role in prepared, strict)
            if warning and warning not in warnings:
                warnings.append(warning)
        if check_profiles:
            warning = check_sweep_profiles(sweep.slurm, profiles_file, profile, name, strict)
            if warning and warning not in warnings:
                warnings.append(warning)
    return warnings


# ---- numeric ranges ----------------------------------------------------------------------------------------------
def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def check_numbers(config: dict[str, Any], where: str) -> None:
    """The ranges of one resolved cell config (a plan template): one UserError line for the first that fails."""
    data, optim, trainer = config.get("data") or {}, config.get("optim") or {}, config.get("trainer") or {}

    def fail(key: str, problem: str, fix: str) -> None:
        raise UserError(f"{key}: {problem} ({where}); {fix}")

    batch = data.get("batch_size", 128)
    if not _positive(batch) or not isinstance(batch, int):
        fail("data.batch_size", f"{batch!r} is not a batch size", "give the images per device, a whole number >= 1")
    for key in ("image_size", "val_image_size"):
        value = data.get(key)
        if (value is not None or key == "image_size") and not _positive(value):
            fail(f"data.{key}", f"{value!r} px is not an image size", "give the resolution in pixels, >= 1")
    workers = data.get("num_workers")
    if workers is not None and workers < 0:
        fail("data.num_workers", f"{workers!r} loader workers", "give 0 (decode in the training process) or more")
    for key in ("max_train_samples", "max_val_samples"):
        value = data.get(key)
        if value is not None and not _positive(value):
            fail(f"data.{key}", f"{value!r} is not a number of images", "give a positive number or remove the key")
    subset = data.get("subset") or {}
    if subset.get("per_class") is not None and not _positive(subset["per_class"]):
        fail("data.subset.per_class", f"{subset['per_class']!r} images a class", "give 1 or more")
    if subset.get("fraction") is not None and not 0 < subset["fraction"] <= 1:
        fail("data.subset.fraction", f"{subset['fraction']!r} is outside (0, 1]", "give a share, e.g. 0.25")
    lr = optim.get("lr", 2e-3)
    if not _positive(lr):
        fail("optim.lr", f"{lr!r} is not a learning rate", "give a positive value, e.g. 0.004 (train.optim.lr)")
    if optim.get("weight_decay", 0.0) < 0:
        fail("optim.weight_decay", f"{optim['weight_decay']!r} is negative", "give 0 (off) or a positive value")
    if optim.get("warmup_steps", 0) < 0 or (optim.get("warmup_epochs") or 0) < 0:
        fail("optim.warmup_steps", "the warmup is negative", "give 0 (no warmup) or a positive length")
    if not _positive(optim.get("base_batch_size", 256)):
        fail("optim.base_batch_size", f"{optim.get('base_batch_size')!r} is not a batch size",
             "give the global batch the recipe's lr was tuned for, >= 1")
    if not 0.0 <= optim.get("label_smoothing", 0.0) < 1.0:
        fail("optim.label_smoothing", f"{optim['label_smoothing']!r} is outside [0, 1)", "give e.g. 0.1, or 0 (off)")
    epochs, steps = trainer.get("max_epochs", 1), trainer.get("max_steps", -1)
    if steps is not None and steps != -1 and not _positive(steps):
        fail("trainer.max_steps", f"{steps!r} optimizer steps trains nothing", "give -1 (epochs decide) or >= 1")
    if not _positive(epochs) and not (epochs == -1 and _positive(steps)):
        fail("trainer.max_epochs", f"{epochs!r} epochs trains nothing", "give 1 or more (train.trainer.max_epochs)")
    for key in ("num_nodes", "accumulate_grad_batches"):
        value = trainer.get(key, 1)
        if not _positive(value):
            fail(f"trainer.{key}", f"{value!r} is not >= 1", "give 1 or more")
    devices = trainer.get("devices", "auto")
    if isinstance(devices, int) and not _positive(devices):
        fail("trainer.devices", f"{devices!r} devices", "give 1 or more per node, or auto")
    gbs = trainer.get("global_batch_size")
    if gbs is not None and not _positive(gbs):
        fail("trainer.global_batch_size", f"{gbs!r} is not a batch size", "give 1 or more, or remove the key")


# ---- data paths, indexes, splits ---------------------------------------------------------------------------------
def _with_defaults(section: dict[str, Any]) -> dict[str, Any]:
    from pipeline.config import DataConfig, from_dict, to_dict

    return to_dict(from_dict(DataConfig, section, "data."))


def _local(path: Any) -> bool:
    return isinstance(path, str) and bool(path) and "://" not in path and not path.startswith("pipe:")


def _under_missing_root(path: Path, data_root: str | None) -> Path | None:
    """The sweep's data_root when ``path`` lies under it and it does not exist on this machine."""
    if not data_root:
        return None
    root = Path(data_root).expanduser()
    if root.exists():
        return None
    try:
        path.relative_to(root)
    except ValueError:
        return None
    return root


def check_data(data: dict[str, Any], prefix: str, data_root: str | None = None, prepared: bool = False,
               strict: bool = True) -> str | None:
    """One role's data section (defaults filled in): its paths, index and split; a warning line or None."""
    loader, dataset = data.get("loader") or "default", data.get("dataset")
    split, half = data.get("split"), data.get("half", "B")
    if split and half not in HALVES:
        raise UserError(f"{prefix}.half: {half!r} is not a half of a class split; use A or B")
    if loader in ("wds", "ffcv"):
        shards = data.get("shards") or data.get("root")
        if not shards:
            raise UserError(f"{prefix}.shards: not set, and loader {loader} reads shards; set it to the folder "
                            "`mkf data write` wrote (holding index.json)")
        if not _local(shards):
            return None
        path = Path(str(shards)).expanduser()
        if prepared and not (path / INDEX).is_file():  # `run` writes them first (its source checked there)
            return None
        root = _under_missing_root(path, data_root)
        if root is not None:
            if strict:
                raise UserError(f"data_root: {root} does not exist on this machine; set data_root to the folder "
                                f"holding your shards (`mkf data write --out DATA_ROOT/<name>`)")
            return (f"warning: data_root {root} does not exist here, so the data under it is not checked; "
                    "`mkf sweep run` checks it")
        index = read_index(path, f"{prefix}.shards", loader)
        classes = [str(c) for c in index.get("classes") or []]
        made = _split(split, classes, prefix)
        _check_set(index, made, split, half, path, prefix)
        return None
    if dataset in ("fashion_mnist", "mnist_5k"):  # their class names are known without reading the data
        from datamodules.sources.fashion_mnist import CLASS_NAMES

        _split(split, list(CLASS_NAMES) if dataset == "fashion_mnist" else [str(d) for d in range(10)], prefix)
    if data.get("shards"):
        raise UserError(f"{prefix}.loader: {loader} does not read data.shards; add loader: wds (or ffcv, the "
                        "format the shards were written in), or remove shards")
    if dataset == "image_folder":
        root_value = data.get("root")
        if not root_value:
            raise UserError(f"{prefix}.root: not set, and dataset image_folder reads it; set it to a folder "
                            "with train/ and val/, or read shards (loader: wds, shards: DIR)")
        if not _local(root_value):
            return None
        path = Path(str(root_value)).expanduser()
        missing_root = _under_missing_root(path, data_root)
        if missing_root is not None:
            if strict:
                raise UserError(f"data_root: {missing_root} does not exist on this machine; set data_root to the "
                                "folder holding your data")
            return (f"warning: data_root {missing_root} does not exist here, so the data under it is not checked; "
                    "`mkf sweep run` checks it")
        for part in ("train", "val"):
            if not (path / part).is_dir():
                raise UserError(f"{prefix}.root: {path / part} is not a folder; image_folder needs ROOT/train "
                                "and ROOT/val (one folder per class), fix the path")
        classes = sorted(p.name for p in (path / "train").iterdir() if p.is_dir())
        if not classes:
            raise UserError(f"{prefix}.root: {path / 'train'} holds no class folders; put each class's images "
                            "in train/<class>/")
        _split(split, classes, prefix)
    return None


_INDEXES: dict[tuple[str, int, int], dict[str, Any]] = {}


def read_index(path: Path, key: str, loader: str) -> dict[str, Any]:
    """``path/index.json``, checked: it exists, parses, is of the writer's version and was written for ``loader``."""
    if not path.is_dir():
        raise UserError(f"{key}: {path} does not exist; fix the path, or write the shards there with "
                        f"`mkf data write --source SRC --format {loader} --out {path}`")
    file = path / INDEX
    if not file.is_file():
        raise UserError(f"{key}: {path} holds no {INDEX} (not written by `mkf data write`, or the write did not "
                        f"finish); rerun `mkf data write --out {path}` or `mkf data index` for existing shards")
    stat = file.stat()
    cache_key = (str(file.resolve()), stat.st_mtime_ns, stat.st_size)
    if cache_key in _INDEXES:
        index = _INDEXES[cache_key]
    else:
        try:
            index = json.loads(file.read_text())
        except (OSError, ValueError):
            index = None
        _INDEXES[cache_key] = index  # type: ignore[assignment]
    if not (isinstance(index, dict) and index.get("version") == INDEX_VERSION and isinstance(index.get("sets"), dict)
            and isinstance(index.get("classes"), list)):
        raise UserError(f"{key}: {file} is not an index of `mkf data write` (version {INDEX_VERSION} with sets and "
                        "classes); rewrite the shards with `mkf data write`")
    written = index.get("format", "wds")
    if written != loader:
        raise UserError(f"{key}: {path} holds {written} data, not {loader}; use loader: {written}, or write {loader} "
                        "shards")
    return index


def _split(spec: dict[str, Any] | None, classes: list[str], prefix: str) -> Any:
    from datamodules.sources.splits import make_split

    try:
        return make_split(spec, classes)
    except UserError as exc:
        raise UserError(f"{prefix}.split: {exc}") from None


def _check_set(index: dict[str, Any], split: Any, spec: dict[str, Any] | None, half: str, path: Path,
               prefix: str) -> None:
    """The set of the index a cell reads (the wds / ffcv loaders' choice) exists, for the cell's split."""
    sets = index["sets"]
    if "all" in sets:
        return
    written = index.get("split") or {}
    kind = written.get("kind")
    if not spec:
        raise UserError(f"{prefix}.split: {path} was written per half of split {kind} (sets "
                        f"{', '.join(sets)}), but the dataset has no split; give data.split as written "
                        "(`mkf data write --split`) and a half, or write the shards without --split")
    if written.get("a") != list(split.a) or written.get("b") != list(split.b):
        raise UserError(f"{prefix}.split: {path} was written for split {kind} (seed {written.get('seed')}), which "
                        "differs from data.split; use the same split, or write the shards without --split")
    if half not in sets:
        raise UserError(f"{prefix}.half: {half} is not a set of {path / INDEX} (it holds {', '.join(sets)}); use "
                        "one of them")


# ---- profiles ----------------------------------------------------------------------------------------------------
def check_sweep_profiles(slurm: dict[str, Any], profiles_file: str | Path | None, profile: str | None,
                         where: str, strict: bool = True) -> str | None:
    """The profiles a sweep (``slurm.profiles``) or a run (``--profile``) names exist in the profiles file.

    ``strict`` False (`plan`, which has no ``--profiles``: the file is the shipped one, and a Slurm run may name
    another): a missing profile is a warning line, returned; `run --executor slurm` checks the file it uses."""
    named = {f"slurm.profiles.{stage}": name for stage, name in ((slurm or {}).get("profiles") or {}).items()}
    if profile:
        named["--profile"] = profile
    if not named:
        return None
    from launch.planning.profiles import DEFAULT_PROFILES, load_profiles

    profiles = load_profiles(profiles_file)
    file = profiles_file or DEFAULT_PROFILES
    for key, name in named.items():
        if name not in profiles:
            line = (f"{key}: profile {name!r} is not in {file} ({where}; it defines "
                    f"{', '.join(profiles) or 'none'}); add it there or name one of those")
            if strict:
                raise UserError(line)
            return f"warning: {line} (or pass your file to `mkf sweep run --executor slurm --profiles FILE`)"
    return None
