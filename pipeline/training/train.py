"""Train one cell: build data, model and (optionally) the transfer, fit with Lightning, write the run directory.

Run directory layout::

    config.yaml          the resolved cell config
    split.json           the class split the cell used
    metrics.csv          Lightning's CSV log
    checkpoints/         last.ckpt (resume point), preempt.ckpt; deleted when the cell finishes unless
                         trainer.keep_checkpoints (which also keeps best.ckpt, the highest val/top1)
    evidence.json        how the cell was trained, for the protocol audit (pipeline.training.evidence)
    cost.json            what each attempt cost (pipeline.training.cost); result.json's ``cost`` sums them
    weights.safetensors  final model as a plain timm state_dict
    result.json          written last: its presence (with status "finished") means the cell is done

Everything that can be wrong with the input is checked before the run directory is touched.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch

from datamodules import SplitDataModule, build_datamodule
from datamodules.errors import UserError
from pipeline.config import CellConfig, dump_yaml, to_dict
from pipeline.models.weights import WEIGHTS_FILE, save_weights
from pipeline.results.run_folder import (  # torch-free home
    LAST_CKPT,
    PREEMPT_CKPT,
    RESULT_FILE,
    read_evidence,
    read_result,
)
from pipeline.schedule import (
    Length,
    budget_length,
    check_progressive,
    ema_decay,
    progressive_schedule,
    resolve_batch,
    steps_per_epoch,
    stretched,
)
from pipeline.training import evidence as cell_evidence
from pipeline.training.classifier import OPTIMIZERS, ImageClassifier
from pipeline.training.cost import CostRecorder
from pipeline.training.loggers import make_loggers, merge_metrics, process_rank
from pipeline.training.monitoring import TrainingMonitor, monitoring_callbacks
from pipeline.training.quiet import quiet_third_party
from pipeline.training.resume import (
    AtomicCheckpointIO,
    EpochCheckpoint,
    PreemptionHandler,
    TrainingState,
    newest_valid_checkpoint,
)
from pipeline.transfer.apply import TransferSpec
from pipeline.transfer.signal import cell_signal

EMA_WEIGHTS_FILE = "weights_ema.safetensors"  # the EMA copy (model.ema), a plain timm state_dict like weights


IMAGE_LOADERS = ("folder", "wds", "ffcv")


def resolve_num_workers(cfg: CellConfig) -> int:
    """``data.num_workers: null`` = 0, except for an image loader under Slurm: SLURM_CPUS_PER_TASK - 1.

    Decoding JPEGs in the training process starves a GPU; the job's own CPU allocation (one core left for the
    training process itself) is what the node gave this task.
    """
    if cfg.data.num_workers is not None:
        return cfg.data.num_workers
    image_loader = cfg.data.loader in IMAGE_LOADERS or cfg.data.dataset == "image_folder"
    cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if image_loader and cpus.isdigit():
        return max(0, int(cpus) - 1)
    return 0


def build_datamodule_for(cfg: CellConfig) -> SplitDataModule:
    data = asdict(cfg.data)
    dataset = data.pop("dataset")
    data["num_workers"] = resolve_num_workers(cfg)
    if cfg.augment.rand_augment:
        data["rand_augment"] = cfg.augment.rand_augment
    if cfg.augment.interpolation != "bilinear":
        data["interpolation"] = cfg.augment.interpolation
    return build_datamodule(dataset, seed=cfg.seed, **data)


def resolve_precision(precision: str) -> str:
    """'auto' means bf16 autocast where it pays (CUDA) and full fp32 on CPU, where bf16 is slow.

    On a GPU without native bf16 (before Ampere) torch *emulates* bf16, which is slower than fp32: use fp16
    autocast (with its loss scaler) there instead.
    """
    if precision != "auto":
        return precision
    if not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "16-mixed"


def configure_cuda() -> None:
    """cuDNN autotuning (fixed input sizes) and TF32 matmuls/convolutions where fp32 runs on an Ampere+ GPU."""
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


def under_slurm() -> bool:
    """Inside a Slurm job writing to a log file (not an interactive `srun --pty`), where a bar floods the log."""
    import sys

    return bool(os.environ.get("SLURM_JOB_ID")) and not sys.stderr.isatty()


def validate_config(cfg: CellConfig) -> None:
    """Cheap checks that need no data or model, so typos fail in milliseconds."""
    if cfg.optim.name not in OPTIMIZERS:
        raise UserError(f"unknown optim.name {cfg.optim.name!r}; use one of {', '.join(OPTIMIZERS)}")
    if cfg.optim.lr_scaling not in ("none", "linear"):
        raise UserError(f"unknown optim.lr_scaling {cfg.optim.lr_scaling!r}; use none or linear")
    if cfg.transfer is not None and not cfg.transfer.base and cfg.transfer.init != "random":
        raise UserError("transfer.base is empty; set it to the base cell's run directory (or use init: random)")
    validate_recipe(cfg)


def validate_recipe(cfg: CellConfig) -> None:
    """The recipe keys: choices, ranges, and what a loader cannot do (one line each)."""
    a, t, o = cfg.augment, cfg.trainer, cfg.optim
    from datamodules.loaders.augment import INTERPOLATIONS

    if a.interpolation not in INTERPOLATIONS:
        raise UserError(f"unknown augment.interpolation {a.interpolation!r}; use one of {', '.join(INTERPOLATIONS)}")
    if a.mixup_mode not in ("batch", "pair", "elem"):
        raise UserError(f"unknown augment.mixup_mode {a.mixup_mode!r}; use batch, pair or elem")
    if a.remode not in ("const", "rand", "pixel"):
        raise UserError(f"unknown augment.remode {a.remode!r}; use const, rand or pixel")
    for key in ("reprob", "mixup_prob", "mixup_switch_prob"):
        if not 0.0 <= getattr(a, key) <= 1.0:
            raise UserError(f"augment.{key} = {getattr(a, key)} must be between 0 and 1")
    if a.mixup < 0 or a.cutmix < 0:
        raise UserError("augment.mixup and augment.cutmix are Beta alphas: use 0 (off) or a positive value")
    if (a.mixup > 0 or a.cutmix > 0) and cfg.data.batch_size % 2:
        raise UserError(f"Mixup/CutMix needs an even data.batch_size (timm mixes each batch with its reverse); "
                        f"got {cfg.data.batch_size}")
    if t.gradient_clip_algorithm not in ("norm", "value"):
        raise UserError(f"unknown trainer.gradient_clip_algorithm {t.gradient_clip_algorithm!r}; use norm or value")
    if t.accumulate_grad_batches < 1:
        raise UserError(f"trainer.accumulate_grad_batches must be >= 1, got {t.accumulate_grad_batches}")
    if o.layer_decay is not None and not 0.0 < o.layer_decay <= 1.0:
        raise UserError(f"optim.layer_decay = {o.layer_decay} must be in (0, 1]; ConvNeXt fine-tuning uses 0.7-0.8")
    ema = cfg.model.ema
    if ema is not None and (not 0.0 < ema.decay < 1.0 or ema.every_n_steps < 1):
        raise UserError("model.ema.decay must be in (0, 1) and model.ema.every_n_steps >= 1")
    if ema is not None and ema.adjust not in ("none", "torchvision"):
        raise UserError(f"unknown model.ema.adjust {ema.adjust!r}; use none or torchvision")
    if o.warmup_fraction is not None and not 0.0 <= o.warmup_fraction < 1.0:
        raise UserError(f"optim.warmup_fraction = {o.warmup_fraction} must be in [0, 1): a share of the run's steps")
    if t.global_batch_size is not None and t.global_batch_size < 1:
        raise UserError(f"trainer.global_batch_size must be >= 1, got {t.global_batch_size}")
    subset = cfg.data.subset
    if subset is not None and subset.steps not in ("full", "epochs"):
        raise UserError(f"unknown data.subset.steps {subset.steps!r}; use full (the full set's optimizer steps) "
                        "or epochs (max_epochs over the subset)")
    if cfg.data.progressive is not None:
        check_progressive(asdict(cfg.data.progressive), cfg.data.image_size,
                          cfg.trainer.max_epochs if cfg.trainer.max_steps <= 0 else None)
    budget = asdict(cfg.trainer.budget) if cfg.trainer.budget is not None else None
    if budget is not None and (budget.get("epochs") is not None or cfg.trainer.max_steps > 0):
        budget_length(cfg.trainer.max_epochs, cfg.trainer.max_steps, budget, steps_per_epoch=1)  # checks only


def init_seed(cfg: CellConfig) -> int:
    """The seed the cell's model is built from (its init, then the transfer overwrites what it copies).

    A base cell, and a transfer cell with ``transfer.reinit: paired``, use the cell's seed: the layers a transfer
    does not copy then start as the reference base's did. With ``fresh`` (the default) they are a new draw per
    cell, as Yosinski et al. re-drew them: the seed hashes what makes the cell's transfer (its seed, arch, the
    transfer section and the base's folder name, which is its content id in a sweep), so it is reproducible and
    differs between AnB, AnB+, BnB, the controls and every depth. The data order and the training's random stream
    stay the cell's seed's in both cases (paired across variants).
    """
    if cfg.transfer is None or cfg.transfer.reinit == "paired":
        return cfg.seed
    transfer = {k: v for k, v in asdict(cfg.transfer).items() if k != "base"}
    body = json.dumps({"seed": cfg.seed, "arch": cfg.model.arch, "transfer": transfer,
                       "base": Path(cfg.transfer.base).name if cfg.transfer.base else ""}, sort_keys=True,
                      default=str)
    return int(hashlib.sha256(body.encode()).hexdigest()[:8], 16)


def check_base_schedule(cfg: CellConfig, world: int, global_batch: int) -> None:
    """A transfer cell trains as its base did: the same world size and global batch, or one line saying so.

    ``mkf sweep plan`` refuses stage profiles that would differ; this catches a base another sweep trained under
    another profile and left in a shared store (its evidence.json says how it was trained).
    """
    if cfg.transfer is None or not cfg.transfer.base or cfg.transfer.init == "random":
        return
    base = Path(cfg.transfer.base)
    if not base.is_dir():
        return  # a weights file or timm: source: trained elsewhere, nothing recorded to compare
    schedule = (read_evidence(base) or {}).get("schedule") or {}
    theirs = (schedule.get("world_size"), schedule.get("global_batch"))
    if None in theirs or theirs == (world, global_batch):
        return
    raise UserError(f"base {base} trained on {theirs[0]} devices at global batch {theirs[1]}, this cell would "
                    f"train on {world} at {global_batch}: a comparison's cells must train alike; run this cell "
                    "with the base's profile (devices x nodes) and trainer.global_batch_size")


def full_steps(cfg: CellConfig, datamodule: SplitDataModule, world: int, accumulate: int,
               length: Length | None = None) -> tuple[int, int] | None:
    """(max_steps, max_epochs) of a reduced source that trains the full set's optimizer steps
    (``data.subset.steps: full``), or None when the cell trains its own epochs. ``length``: the cell's length
    under its budget (default: trainer.max_steps / max_epochs as written)."""
    subset = cfg.data.subset
    if subset is None or subset.steps != "full":
        return None
    max_steps, max_epochs = (length.max_steps, length.max_epochs) if length else (cfg.trainer.max_steps,
                                                                                  cfg.trainer.max_epochs)
    datamodule.setup("fit")
    full, kept = datamodule.full_train_samples, len(datamodule.train_set)  # type: ignore[arg-type]
    if not full or not kept:
        return None
    limit = cfg.trainer.limit_train_batches
    target = (max_steps if max_steps > 0
              else steps_per_epoch(full, world, cfg.data.batch_size, accumulate, limit) * max_epochs)
    per_epoch = steps_per_epoch(kept, world, cfg.data.batch_size, accumulate, limit)
    return target, math.ceil(target / per_epoch)


def cell_length(cfg: CellConfig, datamodule: SplitDataModule, world: int, accumulate: int) -> Length:
    """The cell's length under ``trainer.budget`` (the full run without one): a step budget of a run stated in
    epochs needs the epoch's optimizer steps, counted on the set the full run's epochs are over (the full set
    under ``data.subset.steps: full``)."""
    budget = asdict(cfg.trainer.budget) if cfg.trainer.budget is not None else None
    per_epoch = None
    if budget and budget.get("steps") is not None and cfg.trainer.max_steps <= 0:
        datamodule.setup("fit")
        subset_full = cfg.data.subset is not None and cfg.data.subset.steps == "full"
        samples = (datamodule.full_train_samples if subset_full and datamodule.full_train_samples
                   else len(datamodule.train_set))  # type: ignore[arg-type]
        per_epoch = steps_per_epoch(samples, world, cfg.data.batch_size, accumulate,
                                    cfg.trainer.limit_train_batches)
    return budget_length(cfg.trainer.max_epochs, cfg.trainer.max_steps, budget, per_epoch)


def progressive_spec(cfg: CellConfig, stretch: float) -> dict[str, Any] | None:
    """``data.progressive`` as the loaders apply it: its ramp stretched to the cell's budget."""
    if cfg.data.progressive is None:
        return None
    spec = {k: v for k, v in asdict(cfg.data.progressive).items() if k != "end"}
    return stretched(spec, stretch)


def resume_checkpoint(run_dir: Path) -> Path | None:
    """Furthest valid checkpoint of the cell (highest stored global_step): last.ckpt, the preemption checkpoint
    or a Lightning hpc_ckpt. The step is read from the files, so every rank picks the same one."""
    ckpt_dir = run_dir / "checkpoints"
    return newest_valid_checkpoint([ckpt_dir / LAST_CKPT, ckpt_dir / PREEMPT_CKPT, *run_dir.glob("hpc_ckpt_*.ckpt")])


def _node_names(trainer: L.Trainer) -> list[str]:
    """Host (Slurm node) of every rank, in rank order: proof of where a multi-node cell really ran."""
    name = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        names: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(names, name)
        return [str(n) for n in names]
    return [name]


def train_cell(cfg: CellConfig, callbacks: list[L.Callback] | None = None,
               plugins: list[Any] | None = None) -> dict[str, Any]:
    """Train (or resume, or skip if finished) one cell and return its result (empty on ranks other than 0).

    ``callbacks`` and ``plugins`` come from the launcher (e.g. a preemption handler and the cluster
    environment); a preemption handler that fired raises :class:`Preempted` out of here.
    """
    run_dir = Path(cfg.run_dir)
    done = read_result(run_dir)
    if done is not None:
        return done
    attempt_started = time.time()
    quiet_third_party()
    validate_config(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule_for(cfg)
    spec = TransferSpec(**asdict(cfg.transfer)) if cfg.transfer is not None else None
    devices_per_node = _device_count(cfg)
    world = devices_per_node * cfg.trainer.num_nodes
    accumulate, global_batch = resolve_batch(cfg.data.batch_size, world, cfg.trainer.accumulate_grad_batches,
                                             cfg.trainer.global_batch_size)
    check_base_schedule(cfg, world, global_batch)
    length = cell_length(cfg, datamodule, world, accumulate)
    lengths = full_steps(cfg, datamodule, world, accumulate, length)
    max_steps, max_epochs = lengths or (length.max_steps, length.max_epochs)
    progressive = progressive_spec(cfg, length.stretch)
    datamodule.set_progressive(progressive)
    seed_of_init = init_seed(cfg)
    # the torchvision EMA rule divides by the run's epochs: a budget's, not the full recipe's
    ema_epochs = max(1, round(cfg.trainer.max_epochs * length.stretch))
    decay = ema_decay(asdict(cfg.model.ema) if cfg.model.ema else None, global_batch, ema_epochs)
    module = ImageClassifier(
        cfg.model, cfg.optim, num_classes=datamodule.num_classes, transfer=spec, global_batch_size=global_batch,
        augment=cfg.augment, init_seed=seed_of_init, ema_decay=decay, schedule_stretch=length.stretch,
    )
    val_size = cfg.data.val_image_size or cfg.data.image_size
    resolutions = {"train": cfg.data.image_size, "val": val_size}
    if progressive is not None:
        resolutions["progressive"] = {**progressive, "per_epoch": progressive_schedule(progressive, max_epochs,
                                                                                       cfg.data.image_size)}
    budget_record = length.record(cfg.trainer.max_epochs, cfg.trainer.max_steps)
    start_evidence = cell_evidence.start_evidence(cfg, module, datamodule, seed_of_init, cfg.data.image_size,
                                                  resolution=resolutions)
    # ---- from here on the input is known to be good: write the run directory ----
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    dump_yaml(to_dict(cfg), run_dir / "config.yaml")
    datamodule.split.save(run_dir / "split.json")
    if process_rank() == 0:
        cell_evidence.write_start(run_dir, start_evidence)
    extra_callbacks = list(callbacks or [])
    # ONE callback writes every mid-epoch checkpoint (periodic steps, the launcher's time interval, preemption),
    # always into the last.ckpt resume reads and only after an optimizer step; a second ModelCheckpoint with
    # save_last would find last.ckpt taken and write a last-v1.ckpt that nothing reads
    policy = next((c for c in extra_callbacks if isinstance(c, PreemptionHandler)), None)
    if policy is None:
        policy = PreemptionHandler(ckpt_dir / PREEMPT_CKPT, signals=())  # no signals: periodic checkpoints only
        extra_callbacks.insert(0, policy)
    policy.last_path = ckpt_dir / LAST_CKPT
    policy.every_n_steps = cfg.trainer.checkpoint_every_n_steps or 0
    callbacks = [
        *extra_callbacks,
        EpochCheckpoint(ckpt_dir, keep=cfg.trainer.keep_checkpoints),
    ]
    callbacks.append(TrainingState(datamodule.position, seed=cfg.seed, world_size=world))
    monitors = monitoring_callbacks(cfg.data.batch_size)
    monitor = next(c for c in monitors if isinstance(c, TrainingMonitor))
    recorder = CostRecorder(run_dir, monitor, started=attempt_started, image_size=cfg.data.image_size,
                            val_image_size=val_size, progressive=progressive, ema=cfg.model.ema is not None,
                            workers=datamodule.num_workers)
    callbacks.extend([*monitors, recorder])
    t = cfg.trainer
    trainer = L.Trainer(
        default_root_dir=str(run_dir), max_epochs=max_epochs, max_steps=max_steps,
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=resolve_precision(t.precision), limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches, log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic, enable_progress_bar=t.progress_bar and not under_slurm(),
        enable_model_summary=False, gradient_clip_val=t.gradient_clip_val,
        gradient_clip_algorithm=t.gradient_clip_algorithm, accumulate_grad_batches=accumulate,
        logger=make_loggers(cfg, run_dir), callbacks=callbacks, plugins=[AtomicCheckpointIO(), *(plugins or [])],
        use_distributed_sampler=False,  # our samplers split ranks themselves, and can resume mid-epoch
    )
    resume_from = resume_checkpoint(run_dir)
    configure_cuda()
    start = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)
    wall = time.time() - start
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "val_ema/"))}
    if "val/top1" not in metrics:  # resumed a run that had already reached its end: measure it again
        metrics = {k: float(v) for k, v in trainer.validate(module, datamodule=datamodule, verbose=False)[0].items()}
    nodes = _node_names(trainer)
    if trainer.global_rank != 0:
        return {}
    merge_metrics(run_dir)
    schedule = {"world_size": world, "devices_per_node": devices_per_node, "num_nodes": cfg.trainer.num_nodes,
                "per_device_batch": cfg.data.batch_size, "accumulate": accumulate, "global_batch": global_batch,
                "lr_scaling": cfg.optim.lr_scaling, "max_epochs": max_epochs, "max_steps": max_steps,
                "ema_decay": decay, "ema_every": cfg.model.ema.every_n_steps if cfg.model.ema else None,
                "budget": budget_record}
    cell_evidence.write_end(run_dir, module, schedule, trainer.global_step, trainer.current_epoch)
    save_weights(module.model, run_dir / WEIGHTS_FILE, cfg.model.arch, datamodule.num_classes)
    if module.ema is not None:
        save_weights(module.ema.module, run_dir / EMA_WEIGHTS_FILE, cfg.model.arch, datamodule.num_classes)
    result = {
        "status": "finished",
        "arch": cfg.model.arch,
        "seed": cfg.seed,
        "top1": metrics.get("val/top1"),
        "top5": metrics.get("val/top5"),
        "val_loss": metrics.get("val/loss"),
        **({"ema_top1": metrics.get("val_ema/top1"), "ema_top5": metrics.get("val_ema/top5")}
           if module.ema is not None else {}),
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "wall_time_s": round(wall, 3),
        "started_at": start,  # this attempt's start and end (epoch seconds): dependency order is checkable
        "finished_at": time.time(),
        "resumed": resume_from is not None,
        "resumed_from": resume_from.name if resume_from else None,
        "world_size": trainer.world_size,
        "nodes": nodes,
        "trainable_params": module.trainable_parameters(),
        "frozen_params": module.frozen_parameters(),
        "transfer": module.applied.to_json() if module.applied else None,
        "transfer_signal": cell_signal(module, datamodule),  # can the transferred units change a prediction?
        "labels": cfg.labels,
        **datamodule.describe(),
        # the length and resolutions it trained at: a budget ("16 of 90 epochs") and a progressive ramp
        "schedule": {"budget": budget_record, "train_resolution": cfg.data.image_size, "val_resolution": val_size,
                     "progressive": resolutions.get("progressive")},
    }
    if cfg.wandb.enabled:  # the cell's filters on its dashboard (DS-CNNs only; rank 0 only, as all of this)
        from pipeline.filters.dashboard import log_filters

        log_filters(trainer.loggers, module.model, cfg.model.arch, run_dir.name)
    result["cost"] = recorder.finish(trainer)  # every attempt summed, written last before the result
    tmp = run_dir / (RESULT_FILE + ".tmp")
    with open(tmp, "w") as f:  # fsync before the rename: result.json is what "finished" means to everyone
        f.write(json.dumps(result, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(run_dir / RESULT_FILE)
    if not cfg.trainer.keep_checkpoints:  # finished: the optimizer state has nothing left to resume
        drop_checkpoints(run_dir)
    return result


def drop_checkpoints(run_dir: Path) -> None:
    """Delete a finished cell's Lightning checkpoints (checkpoints/, hpc_ckpt_*.ckpt, half-written temp files)."""
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    for path in run_dir.glob("hpc_ckpt_*.ckpt"):
        path.unlink(missing_ok=True)


def _device_count(cfg: CellConfig) -> int:
    devices = cfg.trainer.devices
    if isinstance(devices, int):
        return devices
    if cfg.trainer.accelerator in ("cpu",) or not torch.cuda.is_available():
        return 1
    return torch.cuda.device_count()
