"""The one LightningModule of the project: image classification around a timm model.

Base cells and transfer cells are the same module; a transfer cell only passes a :class:`TransferSpec`, which is
applied right after the model is built. Frozen units never reach the optimizer, and BatchNorm layers inside
frozen units stay in eval mode so their running statistics cannot drift on dataset B.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from timm.optim import create_optimizer_v2
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from pipeline.config import ModelConfig, OptimConfig
from pipeline.filters.init import apply_init
from pipeline.models import create_model
from pipeline.transfer import AppliedTransfer, TransferSpec, apply_transfer

OPTIMIZERS = ("adamw", "sgd")


class ImageClassifier(L.LightningModule):
    """timm model + cross-entropy with label smoothing + top-1/top-5 + AdamW/SGD with warmup-cosine per step."""

    def __init__(
        self,
        model: ModelConfig,
        optim: OptimConfig,
        num_classes: int,
        transfer: TransferSpec | None = None,
        global_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        # plain dicts only: checkpoints must load with torch.load(weights_only=True) on resume
        self.save_hyperparameters({"model": asdict(model), "optim": asdict(optim), "num_classes": num_classes,
                                   "transfer": asdict(transfer) if transfer else None,
                                   "global_batch_size": global_batch_size})
        self.model_cfg, self.optim_cfg = model, optim
        self.arch = model.arch
        self.num_classes = num_classes
        self.global_batch_size = global_batch_size
        self.model: nn.Module = create_model(model.arch, num_classes=num_classes, drop_path_rate=model.drop_path_rate)
        # depthwise kernel init (model.init: dog / masterkey / random_k), before any transfer overwrites units
        self.applied_init = apply_init(self.model, model.arch, model.init)
        self.applied: AppliedTransfer | None = None
        if transfer is not None:
            self.applied = apply_transfer(self.model, model.arch, transfer)
            self.train()  # Lightning keeps the mode modules are built in: put frozen norms in eval now
        if model.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._forward = torch.compile(self.model) if model.compile else self.model
        self.loss = nn.CrossEntropyLoss(label_smoothing=optim.label_smoothing)
        top_k = min(5, num_classes)
        self.train_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=top_k, average="micro")

    # -- parameters ------------------------------------------------------------------------------------------
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def frozen_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if not p.requires_grad)

    def train(self, mode: bool = True) -> ImageClassifier:
        super().train(mode)
        if self.applied is not None and mode:
            modules = dict(self.model.named_modules())
            for name in self.applied.frozen_norms:
                modules[name].eval()  # frozen BN keeps A's statistics
        return self

    # -- steps -----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.model_cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._forward(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = self.loss(logits, labels)
        self.train_top1.update(logits.detach(), labels)
        # self.log costs ~1 ms of Python per call: log only on the steps the loggers write anyway
        if (self.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0:  # Lightning's own rule
            self.log("train/loss", loss.detach(), prog_bar=True)
        return loss

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

    # -- optimisation ----------------------------------------------------------------------------------------
    def scaled_lr(self) -> float:
        cfg = self.optim_cfg
        if cfg.lr_scaling == "linear" and self.global_batch_size:
            return cfg.lr * self.global_batch_size / cfg.base_batch_size
        return cfg.lr

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer, scheduler = self.configure_optimizers_plain(int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_optimizers_plain(self, total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
        """Optimizer and per-step warmup-cosine schedule for ``total_steps`` (also used by the benchmark)."""
        cfg = self.optim_cfg
        # timm's helper skips frozen parameters and exempts norms and biases from weight decay
        optimizer = create_optimizer_v2(
            self.model, opt=cfg.name, lr=self.scaled_lr(), weight_decay=cfg.weight_decay,
            **({"momentum": cfg.momentum} if cfg.name == "sgd" else {}),
        )
        total = max(1, total_steps)
        warmup = min(cfg.warmup_steps, total - 1) if total > 1 else 0

        def factor(step: int) -> float:
            if step < warmup:
                return cfg.warmup_start_factor + (1 - cfg.warmup_start_factor) * step / max(1, warmup)
            progress = (step - warmup) / max(1, total - warmup)
            cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine

        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
