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
    layer_decay: float | None = None  # layer-wise lr decay (timm's param groups, e.g. 0.8 for ConvNeXt-B ft)


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


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


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
    return from_dict(CellConfig, load_yaml(path) or {})


_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: a 10,000-cell sweep writes its configs 10x faster


def dump_yaml(data: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.dump(data, Dumper=_Dumper, sort_keys=False))
