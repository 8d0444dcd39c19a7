"""Train one cell: build data, model and (optionally) the transfer, fit with Lightning, write the run directory.

Run directory layout::

    config.yaml          the resolved cell config
    split.json           the class split the cell used
    metrics.csv          Lightning's CSV log
    checkpoints/         last.ckpt (resume point) and best.ckpt (highest val/top1)
    weights.safetensors  final model as a plain timm state_dict
    result.json          written last: its presence (with status "finished") means the cell is done

Everything that can be wrong with the input is checked before the run directory is touched.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from datamodules import SplitDataModule, build_datamodule
from datamodules.errors import UserError
from pipeline.config import CellConfig, dump_yaml, to_dict
from pipeline.models.weights import WEIGHTS_FILE, save_weights
from pipeline.results.run_folder import LAST_CKPT, PREEMPT_CKPT, RESULT_FILE, read_result  # torch-free home
from pipeline.training.classifier import OPTIMIZERS, ImageClassifier
from pipeline.training.loggers import make_loggers, merge_metrics
from pipeline.training.monitoring import monitoring_callbacks
from pipeline.training.resume import (
    AtomicCheckpointIO,
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
    validate_config(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule_for(cfg)
    spec = TransferSpec(**asdict(cfg.transfer)) if cfg.transfer is not None else None
    devices_per_node = _device_count(cfg)
    module = ImageClassifier(
        cfg.model, cfg.optim, num_classes=datamodule.num_classes, transfer=spec,
        global_batch_size=cfg.data.batch_size * devices_per_node * cfg.trainer.num_nodes
        * cfg.trainer.accumulate_grad_batches,
        augment=cfg.augment,
    )
    # ---- from here on the input is known to be good: write the run directory ----
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    dump_yaml(to_dict(cfg), run_dir / "config.yaml")
    datamodule.split.save(run_dir / "split.json")
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
        ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/top1", mode="max", save_top_k=1,
                        save_last=True, enable_version_counter=False),
    ]
    callbacks.append(TrainingState(datamodule.position, seed=cfg.seed))
    callbacks.extend(monitoring_callbacks(cfg.data.batch_size))
    t = cfg.trainer
    trainer = L.Trainer(
        default_root_dir=str(run_dir), max_epochs=t.max_epochs, max_steps=t.max_steps,
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=resolve_precision(t.precision), limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches, log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic, enable_progress_bar=t.progress_bar and not under_slurm(),
        enable_model_summary=False, gradient_clip_val=t.gradient_clip_val,
        gradient_clip_algorithm=t.gradient_clip_algorithm, accumulate_grad_batches=t.accumulate_grad_batches,
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
    }
    if cfg.wandb.enabled:  # the cell's filters on its dashboard (DS-CNNs only; rank 0 only, as all of this)
        from pipeline.filters.dashboard import log_filters

        log_filters(trainer.loggers, module.model, cfg.model.arch, run_dir.name)
    tmp = run_dir / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(run_dir / RESULT_FILE)
    return result


def _device_count(cfg: CellConfig) -> int:
    devices = cfg.trainer.devices
    if isinstance(devices, int):
        return devices
    if cfg.trainer.accelerator in ("cpu",) or not torch.cuda.is_available():
        return 1
    return torch.cuda.device_count()
