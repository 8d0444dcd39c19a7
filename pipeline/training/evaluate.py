"""Top-1 accuracy of a model on a cell's own validation data, without Lightning: for the master-key search, which
evaluates hundreds of kernel replacements and must not pay a Trainer's start-up each time.

The batches are read and transformed once through the datamodule's two batch hooks, in the Trainer's order
(``on_before_batch_transfer``: the wds reader's skip record, FFCV's label remap; ``on_after_batch_transfer``:
normalisation), and kept in memory: a loader's batch is never taken apart here by its shape.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from datamodules.errors import UserError


def validation_batches(config: str | Path, max_val_samples: int | None = 512,
                       batch_size: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The validation batches of the cell config (a run dir's config.yaml or a cell YAML), at most N images."""
    from pipeline.config import load_cell_config
    from pipeline.training.train import build_datamodule_for

    path = Path(config)
    if path.is_dir():
        path = path / "config.yaml"
    if not path.is_file():
        raise UserError(f"{path} does not exist; the evaluation needs a run dir (its config.yaml) or --config CELL.yaml")
    cfg = load_cell_config(path)
    cfg.data.batch_size = batch_size
    if max_val_samples is not None:
        cfg.data.max_val_samples = min(max_val_samples, cfg.data.max_val_samples or max_val_samples)
    cfg.data.num_workers = 0
    datamodule = build_datamodule_for(cfg)
    datamodule.setup("validate")
    batches = []
    for batch in datamodule.val_dataloader():
        batch = datamodule.on_before_batch_transfer(batch, 0)
        images, labels = datamodule.on_after_batch_transfer(batch, 0)
        batches.append((images, labels))
    return batches


@torch.no_grad()
def accuracy(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    was_training = model.training
    model.eval()
    correct = total = 0
    device = next(model.parameters()).device
    for images, labels in batches:
        correct += int((model(images.to(device)).argmax(dim=1).cpu() == labels).sum())
        total += len(labels)
    model.train(was_training)
    return correct / max(1, total)
