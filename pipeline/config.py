"""The cell config: every knob of one training run, named once, with its default and meaning.

A cell YAML is parsed strictly into these dataclasses: an unknown key (a typo) or a wrong type is a
:class:`UserError` naming the key and the valid choices, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from datamodules.errors import UserError


@dataclass
class SubsetConfig:
    """A seeded, class-stratified subset of the training images (Yosinski's reduced sources).

    Exactly one of ``per_class`` / ``fraction`` is set; every class keeps that many (or that share) of its
    images, drawn with ``seed``, so a reduced source never loses whole classes.
    """

    per_class: int | None = None  # keep this many training images of each class
    fraction: float | None = None  # or this share of each class's training images, 0 < fraction <= 1
    seed: int = 0
    # full = as many optimizer steps as the whole set would take (Yosinski's reduced sources differ in data only,
    # not in training length); epochs = the cell's max_epochs over the subset (fewer steps the smaller it is)
    steps: str = "full"


@dataclass
class ProgressiveConfig:
    """FFCV-style progressive resizing (datamodules.progressive): the training resolution ramps linearly from
    ``start`` px (up to and including epoch ``start_epoch``) to ``data.image_size`` (from epoch ``end_epoch`` on),
    in steps of ``step`` px, as FFCV's ImageNet recipe ramps 160 -> 192 between epochs 65 and 76 of 88. Validation
    stays at ``data.val_image_size`` (default: the final training resolution). Epochs count the full run: under
    ``trainer.budget`` they are scaled with it. Loaders: the in-memory datasets and wds (others: a one-line error).
    """

    start: int | None = None  # first training resolution, px (a multiple of step)
    end: int | None = None  # final training resolution: data.image_size (only that value is accepted here)
    start_epoch: int | None = None  # train at ``start`` up to and including this epoch (0-based)
    end_epoch: int | None = None  # train at data.image_size from this epoch on
    step: int = 32  # resolutions move in multiples of this many px (FFCV's 32)


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"  # fashion_mnist | image_folder
    root: str | None = None  # dataset folder; fashion_mnist also looks in Debian's package and torchvision's cache
    split: dict[str, Any] | None = None  # class split (see datamodules.sources.splits.make_split); None = all classes
    half: str = "B"  # which half of the split this cell trains and evaluates on
    image_size: int = 32
    batch_size: int = 128  # per device
    num_workers: int | None = None  # None = 0 (decode in the training process), but under Slurm the image loaders
    # (folder/wds/ffcv) use SLURM_CPUS_PER_TASK - 1, so a cluster job never decodes JPEGs in its training process
    max_train_samples: int | None = None  # a seeded, stratified subset of this many images, for quick runs
    max_val_samples: int | None = None
    loader: str = "default"  # default (the dataset's own reader) | folder | wds | ffcv (the last two read data.shards)
    shards: str | None = None  # folder with index.json written by `mkf data write` (loader wds/ffcv)
    val_image_size: int | None = None  # validation resolution; None = image_size (progressive resizing: per stage)
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop area range (image loaders)
    crop_ratio: float = 224 / 256  # validation: resize short side to size / crop_ratio, then centre crop
    shuffle_buffer: int = 1000  # wds: samples in each worker's shuffle buffer (on top of the shard permutation)
    subset: SubsetConfig | None = None  # reduced training set: {per_class: N} or {fraction: f}, seeded, stratified
    progressive: ProgressiveConfig | None = None  # FFCV-style progressive resizing of the training resolution


@dataclass
class InitConfig:
    """How the depthwise kernels start (filter analysis): timm's default init, DoGs, or a fixed filter bank."""

    kind: str = "default"  # default | dog (Neural Echos) | masterkey (Quest paper) | random_k (its control)
    gamma: float = 1.6  # dog: surround sigma / centre sigma
    share: float = 1.0  # dog: share of each layer's channels set to DoGs (on/off centre alternating)
    filters: str = "published"  # masterkey: "published" (the 8 filters) or a file from `mkf filters masterkey`
    k: int = 8  # random_k: how many random filters
    freeze: bool = True  # masterkey / random_k: kernels frozen, a learnable per-channel bias added


@dataclass
class EmaConfig:
    """timm's ModelEmaV3 over the trainable weights; its copy is validated (val_ema/*), checkpointed, resumed."""

    decay: float = 0.9999  # ConvNeXt's model EMA decay
    warmup: bool = False  # timm's EMA warmup (decay ramps up from 0 over the first steps)
    every_n_steps: int = 1  # update after every N optimizer steps
    # none = ``decay`` as written; torchvision = torchvision's reference script's rule (references/classification/
    # train.py): 1 - decay is scaled by global batch x every_n_steps / max_epochs (capped at 1), so a recipe's decay
    # keeps its horizon as a share of the run at any batch size and length (pipeline.training.schedule.ema_decay)
    adjust: str = "none"


@dataclass
class ModelConfig:
    arch: str = "convnext_demo"  # any timm model name, or one registered in pipeline.models
    init: InitConfig = field(default_factory=InitConfig)  # depthwise kernel initialisation
    drop_path_rate: float = 0.0
    channels_last: bool = False  # faster convolutions on tensor-core GPUs
    compile: bool = False  # torch.compile the model (nn.Module.compile: checkpoint keys unchanged)
    ema: EmaConfig | None = None  # an exponential moving average of the weights (timm ModelEmaV3), evaluated too


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 2e-3  # for the global batch size below; see lr_scaling
    weight_decay: float = 0.05
    momentum: float = 0.9  # sgd only
    label_smoothing: float = 0.1
    warmup_steps: int = 0  # linear warmup from lr * warmup_start_factor, per optimizer step
    warmup_start_factor: float = 0.01
    min_lr_ratio: float = 0.0  # cosine ends at lr * min_lr_ratio
    lr_scaling: str = "none"  # none | linear: lr *= global_batch / base_batch_size
    base_batch_size: int = 256
    warmup_epochs: float | None = None  # warmup in epochs (recipes), converted to steps; overrides warmup_steps
    # warmup as a share of the cell's optimizer steps (0 <= f < 1): a recipe's 20 of 300 epochs stays 1/15 of a
    # shorter run instead of a fifth of it; overrides warmup_steps and warmup_epochs
    warmup_fraction: float | None = None
    layer_decay: float | None = None  # layer-wise lr decay (timm's param groups, e.g. 0.8 for ConvNeXt-B ft)


@dataclass
class BudgetConfig:
    """A shorter run of the same recipe (pipeline.schedule.budget_length): ``epochs`` (of trainer.max_epochs) or
    ``steps`` (optimizer steps, of the full run's), not both. Everything the recipe states as a length of the full
    run is stretched to the budget: the cosine ends at the budget's last step, warmup keeps its share of the run
    (warmup_epochs / warmup_steps scaled, warmup_fraction as is), a progressive-resizing ramp keeps its place, and
    EMA adjust: torchvision sees the budget's epochs. The full length stays in the config, so the record says
    "16 of 90 epochs"."""

    epochs: int | None = None
    steps: int | None = None


@dataclass
class TrainerConfig:
    max_epochs: int = 1
    max_steps: int = -1
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"  # auto = bf16-mixed on CUDA, 32-true on CPU
    limit_train_batches: float | int = 1.0
    limit_val_batches: float | int = 1.0
    checkpoint_every_n_steps: int | None = None  # also checkpoint mid-epoch, bounding work lost to a crash
    log_every_n_steps: int = 10
    deterministic: bool = False
    progress_bar: bool = True  # forced off under Slurm (a bar floods the job log)
    gradient_clip_val: float | None = None  # Lightning's gradient clipping; None = off
    gradient_clip_algorithm: str = "norm"  # norm | value
    accumulate_grad_batches: int = 1  # optimizer step every N batches (global batch x N)
    # a finished cell keeps weights, result, metrics and evidence; its Lightning checkpoints (optimizer state:
    # 3-4x the weights, terabytes over a catalog) are deleted unless this is true, which also tracks best.ckpt
    keep_checkpoints: bool = False
    # the optimizer's batch, whatever the GPU count: accumulate_grad_batches is then derived at run time as
    # global_batch_size / (data.batch_size x devices x num_nodes), which must divide, so a cell trains at the same
    # global batch (and, under lr_scaling linear, the same LR) on 1 GPU or 32; null = data.batch_size x devices x
    # num_nodes x accumulate_grad_batches
    global_batch_size: int | None = None
    budget: BudgetConfig | None = None  # train a shorter budget of this recipe, its schedule stretched to it


@dataclass
class AugmentConfig:
    """The ImageNet recipe's regularisers (timm's pieces); all off by default.

    ``rand_augment`` and ``interpolation`` act in the loaders (per image, on the CPU); random erasing and
    Mixup/CutMix act on the device, on the normalised training batch, in this order (timm's prefetcher order).
    """

    rand_augment: str | None = None  # timm RandAugment config string, e.g. rand-m9-mstd0.5-inc1
    interpolation: str = "bilinear"  # bilinear | bicubic: training crop resize (and validation resize)
    mixup: float = 0.0  # Mixup alpha (0 = off)
    cutmix: float = 0.0  # CutMix alpha (0 = off)
    mixup_prob: float = 1.0  # probability of applying Mixup or CutMix to a batch
    mixup_switch_prob: float = 0.5  # probability of CutMix instead of Mixup when both are on
    mixup_mode: str = "batch"  # batch | pair | elem (timm's Mixup modes)
    reprob: float = 0.0  # random erasing probability per image (0 = off)
    remode: str = "pixel"  # const | rand | pixel (timm's RandomErasing modes)
    recount: int = 1  # erased boxes per image


@dataclass
class MappingConfig:
    """Cross-architecture transfer policy: which source unit, channels and kernel feed each target unit."""

    units: str = "by_stage"  # by_index | by_stage | proportional (source unit for each target unit)
    channels: str = "tile"  # tile | subsample (seeded) | error, when channel counts differ
    kernel: str = "center"  # center (crop / zero pad) | resample | error, when kernel sizes differ
    seed: int = 0


@dataclass
class TransferConfig:
    base: str = ""  # model A: run dir | weights .safetensors | timm:<model>[.<tag>] (timm's pretrained loading)
    base_file: str | None = None  # timm: bases only: a local weights file for that tag (no network)
    unit_kind: str = "depthwise"  # depthwise | pointwise | both (depthwise + its block's pointwise) | block
    depth: int = 0
    direction: str = "first"  # first = units 1..depth (AnB); last = units depth..L (reverse)
    mode: str = "frozen"  # frozen (AnB) | finetune (AnB+)
    init: str = "copy"  # copy | random (units keep the cell's own fresh init: the random-frozen control) | shuffle
    # fresh = every layer not copied from the base is a new draw for this cell (Yosinski et al. re-draw them);
    # paired = the reference base's own initial tensors (the cell's seed): cells of a seed share one init
    reinit: str = "fresh"
    freeze: str = "kernel"  # kernel (the authors' protocol: depthwise kernels only) | kernel_and_bias
    mapping: MappingConfig | None = None  # cross-architecture policy; None = same arch, unit i <- unit i


@dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "masterkey-filters"
    entity: str | None = None
    group: str | None = None
    job_type: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: str | None = None  # online | offline; None = offline unless a key is configured


@dataclass
class CellConfig:
    """One training run: a base model (no transfer) or a transfer cell."""

    run_dir: str = "runs/cell"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    transfer: TransferConfig | None = None
    wandb: WandbConfig = field(default_factory=WandbConfig)
    labels: dict[str, Any] = field(default_factory=dict)  # free-form tags a sweep attaches (stage, variant, ...)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # RandAugment, erasing, Mixup/CutMix


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types with the key's path."""
    if not isinstance(data, dict):
        raise UserError(f"{where or 'config'} must be a mapping of keys, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"unknown key {where}{unknown[0]!s}; valid keys here: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        nested = [h for h in (typing.get_args(hint) or (hint,)) if dataclasses.is_dataclass(h)]
        if nested and value is not None:
            kwargs[name] = from_dict(nested[0], value, f"{where}{name}.")
        elif isinstance(value, str) and _type_ok(1.0, hint) and not _type_ok(value, hint) and _is_number(value):
            kwargs[name] = float(value)  # PyYAML reads 1e-3 (no dot) as a string
        elif not _type_ok(value, hint):
            raise UserError(f"{where}{name} = {value!r} has the wrong type; expected {_hint_name(hint)}")
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _hint_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


# Keys added after catalogs were planned, left out of the dict while unset: launch.sweep hashes a cell's resolved
# config into its content id, so an unset new key must not change the id of every cell a store already holds.
_OMITTED_WHEN_UNSET = (("data", "progressive"), ("trainer", "budget"))


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain dicts (``from_dict`` reads it back), without the unset keys of _OMITTED_WHEN_UNSET."""
    out = dataclasses.asdict(cfg)
    for section, key in _OMITTED_WHEN_UNSET:
        if isinstance(out.get(section), dict) and out[section].get(key, 0) is None:
            del out[section][key]
    return out


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file, turning a missing file or a syntax error into a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; check the path")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserError(f"{path} is not valid YAML{at}: {problem}; fix the syntax and rerun") from None


def load_cell_config(path: str | Path) -> CellConfig:
    """A cell YAML -> its config. An empty file, a non-mapping or a mapping without keys is an error naming the
    file: a config truncated mid-write on a network filesystem must not train the default cell."""
    raw = load_yaml(path)
    if raw is None or raw == {}:
        raise UserError(f"cell config {path} is empty; write the cell's keys into it (or re-plan the sweep, "
                        "whose configs it writes)")
    if not isinstance(raw, dict):
        raise UserError(f"cell config {path} must be a mapping of keys (run_dir, data, model, ...), got "
                        f"{type(raw).__name__}; fix the file")
    return from_dict(CellConfig, raw)


YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: a 10,000-cell sweep writes configs 10x faster


def dump_yaml(data: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.dump(data, Dumper=YAML_DUMPER, sort_keys=False))
