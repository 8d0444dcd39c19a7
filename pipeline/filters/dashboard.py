"""A finished cell's filters on its W&B run: the Figure-1 grid and, for DS-CNNs, the per-layer family shares.

Family share of a depthwise unit: the share of its kernels that :func:`pipeline.filters.families.classify` names
each family (lowest BIC over centre delta, Gaussian, on / off DoG, first derivative, Laplacian, second derivative;
``other`` when the chosen fit explains under :data:`MIN_R2` of the kernel's variance). Deltas and Gaussians are
their own families, so ``filters/share/dog`` (on + off) no longer counts identities and blobs as DoGs, as the
fit-only ``filters/dog_share`` of before did.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from pipeline.filters.extract import extract_kernels
from pipeline.filters.families import MIN_R2, SHARE_KEYS, unit_shares
from pipeline.filters.grid import draw_grid


def filter_metrics(model: nn.Module, arch: str, min_r2: float = MIN_R2) -> dict[str, float]:
    """``filters/share/<family>/unit_<i>`` per depthwise unit and their kernel-weighted mean
    ``filters/share/<family>``, for every family, ``dog`` (on + off) and ``other``; {} without units."""
    kset = extract_kernels(model, arch, arch)
    if not kset.num_units:
        return {}
    shares = unit_shares(kset, min_r2)
    counts = [len(k) for k in kset.kernels]
    metrics: dict[str, float] = {}
    for key in SHARE_KEYS:
        for i, s in enumerate(shares, 1):
            metrics[f"filters/share/{key}/unit_{i}"] = round(s[key], 4)
        metrics[f"filters/share/{key}"] = round(sum(s[key] * c for s, c in zip(shares, counts, strict=True))
                                                / sum(counts), 4)
    return metrics


def log_filters(loggers: list[Any], model: nn.Module, arch: str, label: str) -> dict[str, float]:
    """Log the grid image and the family shares to every W&B logger; nothing for models without depthwise units."""
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
