"""A finished cell's filters on its W&B run: the Figure-1 grid and, for DS-CNNs, the per-layer DoG-fit share.

DoG-fit share of a depthwise unit: the share of its kernels whose best fit by the DoG family of
:mod:`pipeline.filters.dog` (any member, any sign; amplitude and offset free) explains at least
:data:`DOG_FIT_R2` of the kernel's variance (R^2 about its mean), using the vectorised grid fit.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from pipeline.filters.dog import DOG_FIT_R2, dog_fit_shares
from pipeline.filters.extract import extract_kernels
from pipeline.filters.grid import draw_grid


def filter_metrics(model: nn.Module, arch: str, threshold: float = DOG_FIT_R2) -> dict[str, float]:
    """``filters/dog_share/unit_<i>`` per depthwise unit and their mean ``filters/dog_share``; {} without units."""
    kset = extract_kernels(model, arch, arch)
    if not kset.num_units:
        return {}
    shares = dog_fit_shares(kset, threshold)
    metrics = {f"filters/dog_share/unit_{i}": round(s, 4) for i, s in enumerate(shares, 1)}
    counts = [len(k) for k in kset.kernels]
    metrics["filters/dog_share"] = round(sum(s * c for s, c in zip(shares, counts, strict=True)) / sum(counts), 4)
    return metrics


def log_filters(loggers: list[Any], model: nn.Module, arch: str, label: str) -> dict[str, float]:
    """Log the grid image and the DoG-fit shares to every W&B logger; nothing for models without depthwise units."""
    from lightning.pytorch.loggers import WandbLogger

    wandb_loggers = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    if not wandb_loggers:
        return {}
    metrics = filter_metrics(model, arch)
    if not metrics:
        return {}
    import wandb

    kset = extract_kernels(model, arch, label)
    with tempfile.TemporaryDirectory() as tmp:
        png = draw_grid([kset], Path(tmp) / "filters.png", dpi=100)[0]
        for logger in wandb_loggers:
            run = logger.experiment
            run.log({"filters/grid": wandb.Image(str(png), caption=f"{label}: first, middle, last depthwise unit"),
                     **metrics})
            run.summary.update(metrics)
    return metrics
