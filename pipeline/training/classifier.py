"""The one LightningModule of the project: image classification around a timm model.

Base cells and transfer cells are the same module; a transfer cell only passes a :class:`TransferSpec`, which is
applied right after the model is built. Frozen units never reach the optimizer, and BatchNorm layers inside
frozen units stay in eval mode so their running statistics cannot drift on dataset B.

The ImageNet recipe's pieces are timm's own (all off by default): random erasing and Mixup/CutMix on the device
batch with a soft-target loss, an EMA of the trainable weights (validated as ``val_ema/*``, part of the checkpoint
so it resumes), layer-wise lr decay through timm's parameter groups.
"""

from __future__ import annotations

import functools
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from timm.data import Mixup
from timm.data.random_erasing import RandomErasing
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from datamodules.errors import UserError
from pipeline.config import AugmentConfig, EmaConfig, ModelConfig, OptimConfig
from pipeline.filters.init import apply_init
from pipeline.models.zoo import create_model
from pipeline.schedule import lr_factor, scaled_lr, warmup_steps
from pipeline.transfer.apply import AppliedTransfer, TransferSpec, apply_transfer

OPTIMIZERS = ("adamw", "sgd")


class TrainableEma(ModelEmaV3):
    """timm's ModelEmaV3 that averages only what training changes: frozen parameters are never touched.

    A frozen (transferred) unit must stay bit-identical to the base model's in the EMA copy too; skipping it also
    saves the update's memory traffic for every frozen tensor. The copy never needs gradients.
    """

    def __init__(self, model: nn.Module, cfg: EmaConfig, decay: float | None = None) -> None:
        super().__init__(model, decay=cfg.decay if decay is None else decay, use_warmup=cfg.warmup)
        self.module.requires_grad_(False)
        self.frozen = frozenset(name for name, p in model.named_parameters() if not p.requires_grad)

    def apply_update_(self, model: nn.Module, decay: float) -> None:
        model_state = model.state_dict()
        ema_values, model_values = [], []
        for name, ema_v in self.module.state_dict().items():
            if name in self.frozen:
                continue
            if ema_v.is_floating_point():
                ema_values.append(ema_v)
                model_values.append(model_state[name])
            else:
                ema_v.copy_(model_state[name])
        self._foreach_lerp_(ema_values, model_values, weight=1.0 - decay)


class ImageClassifier(L.LightningModule):
    """timm model + cross-entropy with label smoothing + top-1/top-5 + AdamW/SGD with warmup-cosine per step."""

    def __init__(
        self,
        model: ModelConfig,
        optim: OptimConfig,
        num_classes: int,
        transfer: TransferSpec | None = None,
        global_batch_size: int | None = None,
        augment: AugmentConfig | None = None,
        init_seed: int | None = None,
        ema_decay: float | None = None,
        schedule_stretch: float = 1.0,
    ) -> None:
        """``init_seed``: the model (its init, the depthwise init scheme and the transfer) is built from this seed
        in a forked RNG, so the global stream the training draws from (drop path, Mixup/CutMix) is the same for
        every cell of a seed whatever its init; None builds from the global stream as it stands. ``ema_decay``:
        the decay after the recipe's rule (pipeline.schedule.ema_decay); None = ``model.ema.decay``.
        ``schedule_stretch``: the run's length over the recipe's full length (``trainer.budget``); warmup stated
        in epochs or steps is scaled by it (pipeline.schedule.warmup_steps)."""
        super().__init__()
        augment = augment or AugmentConfig()
        # plain dicts only: checkpoints must load with torch.load(weights_only=True) on resume
        self.save_hyperparameters({"model": asdict(model), "optim": asdict(optim), "num_classes": num_classes,
                                   "transfer": asdict(transfer) if transfer else None,
                                   "global_batch_size": global_batch_size, "augment": asdict(augment),
                                   "init_seed": init_seed, "ema_decay": ema_decay,
                                   "schedule_stretch": schedule_stretch})
        self.model_cfg, self.optim_cfg = model, optim
        self.arch = model.arch
        self.num_classes = num_classes
        self.global_batch_size = global_batch_size
        self.init_seed = init_seed
        self.schedule_stretch = schedule_stretch
        with torch.random.fork_rng(devices=[], enabled=init_seed is not None):
            if init_seed is not None:
                torch.manual_seed(init_seed)
            self.model: nn.Module = create_model(model.arch, num_classes=num_classes,
                                                 drop_path_rate=model.drop_path_rate)
            # depthwise kernel init (model.init: dog / masterkey / random_k), before any transfer overwrites units
            self.applied_init = apply_init(self.model, model.arch, model.init)
            self.applied: AppliedTransfer | None = None
            if transfer is not None:
                self.applied = apply_transfer(self.model, model.arch, transfer)
                self.train()  # Lightning keeps the mode modules are built in: put frozen norms in eval now
        if model.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss = nn.CrossEntropyLoss(label_smoothing=optim.label_smoothing)
        # per-batch regularisers on the device (timm's prefetcher order: erase each image, then mix the batch)
        self.erasing = (RandomErasing(augment.reprob, mode=augment.remode, max_count=augment.recount, device="cpu")
                        if augment.reprob > 0 else None)
        self.mixup = (Mixup(mixup_alpha=augment.mixup, cutmix_alpha=augment.cutmix, prob=augment.mixup_prob,
                            switch_prob=augment.mixup_switch_prob, mode=augment.mixup_mode,
                            label_smoothing=optim.label_smoothing, num_classes=num_classes)
                      if augment.mixup > 0 or augment.cutmix > 0 else None)
        self.soft_loss = SoftTargetCrossEntropy() if self.mixup is not None else None
        top_k = min(5, num_classes)
        # validate_args=False: the argument checks cost a device->host sync per update
        self.train_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro", validate_args=False)
        self.val_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro", validate_args=False)
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=top_k, average="micro", validate_args=False)
        # the EMA copy is a submodule, so it is in every checkpoint (resumed with the run) under ema.module.*
        self.ema: TrainableEma | None = TrainableEma(self.model, model.ema, ema_decay) if model.ema else None
        if self.ema is not None:
            self.ema_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro", validate_args=False)
            self.ema_top5 = MulticlassAccuracy(num_classes, top_k=top_k, average="micro", validate_args=False)
        if model.compile:
            # in place (nn.Module.compile): no wrapper module, so checkpoint keys do not change with `compile`,
            # and DDP wraps the LightningModule around a compiled model rather than compiling inside DDP
            self.model.compile()

    # -- parameters ------------------------------------------------------------------------------------------
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def frozen_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if not p.requires_grad)

    def train(self, mode: bool = True) -> ImageClassifier:
        super().train(mode)
        if getattr(self, "ema", None) is not None:
            self.ema.eval()  # the average is only ever evaluated: no drop path, norms use running statistics
        if self.applied is not None and mode:
            modules = dict(self.model.named_modules())
            for name in self.applied.frozen_norms:
                modules[name].eval()  # frozen BN keeps A's statistics
        return self

    # -- steps -----------------------------------------------------------------------------------------------
    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        # the model's memory format (loaders may hand over channels_last batches) and dtype (under *-true precision
        # Lightning converts float batches before the uint8 normalisation hooks run, so they arrive as float32)
        x = x.contiguous(memory_format=torch.channels_last if self.model_cfg.channels_last else torch.contiguous_format)
        return x.to(self.dtype) if x.is_floating_point() and x.dtype != self.dtype else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self._prepare(x))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        if self.erasing is not None:
            self.erasing.device = images.device
            images = self.erasing(images)
        if self.mixup is not None:
            mixed, soft = self.mixup(images, labels)
            logits = self(mixed)
            loss = self.soft_loss(logits, soft)
        else:
            logits = self(images)
            loss = self.loss(logits, labels)
        self.train_top1.update(logits.detach(), labels)  # against the un-mixed labels when Mixup/CutMix is on
        # self.log costs ~1 ms of Python per call: log only on the steps the loggers write anyway
        if (self.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0:  # Lightning's own rule
            self.log("train/loss", loss.detach(), prog_bar=True)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # right after each optimizer step (not per accumulated batch), and before any callback's on_train_batch_end
        # can checkpoint this step: a checkpoint always holds the EMA of exactly the steps it holds
        if self.ema is not None and self.global_step % self.model_cfg.ema.every_n_steps == 0:
            self.ema.update(self.model, step=self.global_step)

    def on_train_epoch_end(self) -> None:
        # torchmetrics already synced the ranks; sync_dist averages identical values (and tells Lightning so)
        self.log("train/top1", self.train_top1.compute(), sync_dist=True)
        self.train_top1.reset()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.val_top1(logits, labels)
        self.val_top5(logits, labels)
        self.log("val/loss", self.loss(logits, labels), sync_dist=True)
        self.log("val/top1", self.val_top1, prog_bar=True)
        self.log("val/top5", self.val_top5)
        if self.ema is not None:
            ema_logits = self.ema.module(self._prepare(images))
            self.ema_top1(ema_logits, labels)
            self.ema_top5(ema_logits, labels)
            self.log("val_ema/top1", self.ema_top1)
            self.log("val_ema/top5", self.ema_top5)

    # -- optimisation ----------------------------------------------------------------------------------------
    def scaled_lr(self) -> float:
        return scaled_lr(asdict(self.optim_cfg), self.global_batch_size or 0)

    def configure_optimizers(self) -> dict[str, Any]:
        total = int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs
        per_epoch = total / epochs if epochs and epochs > 0 else None
        optimizer, scheduler = self.configure_optimizers_plain(total, steps_per_epoch=per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_optimizers_plain(self, total_steps: int,
                                   steps_per_epoch: float | None = None) -> tuple[torch.optim.Optimizer, Any]:
        """Optimizer and per-step warmup-cosine schedule for ``total_steps`` (also used by the benchmark)."""
        cfg = self.optim_cfg
        if cfg.layer_decay is not None and not hasattr(self.model, "group_matcher"):
            raise UserError(f"optim.layer_decay needs a timm model with group_matcher(); {self.arch} has none. "
                            "Remove optim.layer_decay")
        # timm's helper skips frozen parameters, exempts norms and biases from weight decay and, with
        # layer_decay, makes one group per (layer, decay) with an lr_scale
        optimizer = create_optimizer_v2(
            self.model, opt=cfg.name, lr=self.scaled_lr(), weight_decay=cfg.weight_decay,
            layer_decay=cfg.layer_decay, **({"momentum": cfg.momentum} if cfg.name == "sgd" else {}),
        )
        for group in optimizer.param_groups:  # timm's schedulers apply lr_scale; LambdaLR scales the group's lr
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
        total = max(1, total_steps)
        optim = asdict(cfg)
        warmup = warmup_steps(optim, total, steps_per_epoch, self.schedule_stretch)
        self.lr_schedule = {"peak_lr": self.scaled_lr(), "warmup_steps": warmup, "total_steps": total,
                            "warmup_start_factor": cfg.warmup_start_factor, "min_lr_ratio": cfg.min_lr_ratio,
                            "shape": "linear warmup, cosine", "stretch": self.schedule_stretch}
        return optimizer, torch.optim.lr_scheduler.LambdaLR(
            optimizer, functools.partial(lr_factor, warmup=warmup, total=total, optim=optim))
