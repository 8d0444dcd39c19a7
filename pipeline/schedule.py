"""What a cell trains at: global batch, learning rate, warmup, EMA decay and optimizer steps, as plain arithmetic.

One definition for the trainer (pipeline.training) and for the login-node views that predict it
(``mkf sweep plan``'s schedule table, the protocol audit), so the two can never disagree. Torch-free.

* **Global batch.** ``data.batch_size`` is per device; the optimizer sees ``batch x devices x nodes x
  accumulation``. ``trainer.global_batch_size`` fixes the optimizer's batch instead and derives the accumulation,
  so a comparison's cells train at one batch (and LR) on any number of GPUs.
* **Learning rate.** ``optim.lr`` as written, or under ``lr_scaling: linear`` scaled by global batch /
  ``optim.base_batch_size`` (Goyal et al.'s rule, which the ConvNeXt and torchvision recipes state).
* **Warmup** is ``warmup_fraction`` of the run's optimizer steps when given, else ``warmup_epochs`` epochs, else
  ``warmup_steps`` steps; then a cosine to ``lr x min_lr_ratio``, stepped per optimizer step.
* **EMA.** ``model.ema.decay`` as written, or (``adjust: torchvision``) torchvision's reference rule:
  ``alpha = (1 - decay) x global_batch x every_n_steps / max_epochs``, capped at 1, decay = 1 - alpha. That is how
  its ResNet recipe's 0.99998 means a horizon of a few thousand steps rather than 1.6 million.
* **Budget** (``trainer.budget``: epochs or steps, :func:`budget_length`). A shorter run of the same recipe: the
  cosine ends at the budget's last step and every length the recipe states for the full run is multiplied by the
  *stretch* (budget / full length): ``warmup_epochs`` and ``warmup_steps`` (``warmup_fraction`` is a share already),
  the progressive-resizing ramp (floored, as FFCV's shorter configs are its 88-epoch one), and the epochs EMA
  ``adjust: torchvision`` divides by. A decay written as is (``adjust: none``) stays as written: the recipes state
  that a fixed EMA horizon is a deliberate choice (configs/recipes/convnext_in1k.yaml). FFCV stretches its schedule
  the same way (Li et al., "Budgeted Training", ICLR 2020).
* **Progressive resizing** (``data.progressive``): the training resolution of each epoch,
  :func:`progressive_resolution` (datamodules.progressive, FFCV's rule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from datamodules.errors import UserError
from datamodules.progressive import (  # noqa: F401  (re-exported: one rule for loaders, trainer and plan)
    check_progressive,
    progressive_resolution,
    progressive_schedule,
    stretched,
)


def resolve_batch(per_device: int, world: int, accumulate: int = 1,
                  global_batch_size: int | None = None) -> tuple[int, int]:
    """(accumulation, global batch) of a cell on ``world`` devices; a ``global_batch_size`` that the devices
    cannot make up exactly is a UserError naming the numbers."""
    if per_device < 1:
        raise UserError(f"data.batch_size must be >= 1, got {per_device}")
    if global_batch_size is None:
        return accumulate, per_device * world * accumulate
    if accumulate != 1:
        raise UserError("set trainer.global_batch_size or trainer.accumulate_grad_batches, not both: the "
                        "accumulation is derived from the global batch")
    step = per_device * world
    if global_batch_size < step or global_batch_size % step:
        raise UserError(f"trainer.global_batch_size {global_batch_size} is not a multiple of data.batch_size "
                        f"{per_device} x {world} devices = {step}; use a multiple of {step} or change "
                        "data.batch_size")
    return global_batch_size // step, global_batch_size


def scaled_lr(optim: dict[str, Any], global_batch: int) -> float:
    """The peak learning rate: ``lr``, or ``lr x global / base_batch_size`` under linear scaling."""
    if optim.get("lr_scaling") == "linear" and global_batch:
        return float(optim["lr"]) * global_batch / int(optim.get("base_batch_size", 256))
    return float(optim["lr"])


def steps_per_epoch(samples: int, world: int, per_device: int, accumulate: int = 1,
                    limit: float | int = 1.0) -> int:
    """Optimizer steps in one epoch of ``samples`` images: each rank's share in whole batches (one short batch
    when the share is smaller; datamodules' loaders), capped by ``limit_train_batches``, over the accumulation
    (Lightning steps on a partial accumulation at the epoch's end)."""
    per_rank = samples // max(1, world)
    batches = per_rank // per_device if per_rank >= per_device else 1
    if isinstance(limit, float):
        batches = max(1, int(batches * limit))
    elif isinstance(limit, int):
        batches = min(batches, limit)
    return math.ceil(batches / max(1, accumulate))


def warmup_steps(optim: dict[str, Any], total_steps: int, per_epoch: float | None, stretch: float = 1.0) -> int:
    """Linear warmup steps of a run of ``total_steps`` optimizer steps (at most ``total_steps - 1``).

    ``stretch``: the run's length over the recipe's full length (a ``trainer.budget``): warmup stated in epochs or
    steps is scaled by it, so a 5-of-90-epoch warmup stays 1/18 of a 16-epoch budget instead of a third of it."""
    if optim.get("warmup_fraction") is not None:
        fraction = float(optim["warmup_fraction"])
        if not 0.0 <= fraction < 1.0:
            raise UserError(f"optim.warmup_fraction = {fraction} must be in [0, 1): a share of the run's steps")
        steps = round(fraction * total_steps)
    elif optim.get("warmup_epochs") is not None and per_epoch:
        steps = round(float(optim["warmup_epochs"]) * per_epoch * stretch)
    else:
        steps = round(int(optim.get("warmup_steps") or 0) * stretch)
    return min(steps, total_steps - 1) if total_steps > 1 else 0


@dataclass(frozen=True)
class Length:
    """How long a cell trains: Lightning's ``max_epochs`` / ``max_steps``, and the stretch (this run's length over
    the recipe's full length; 1.0 without a budget) every length stated for the full run is multiplied by."""

    max_epochs: int
    max_steps: int
    stretch: float = 1.0
    budget: dict[str, Any] | None = None  # the trainer.budget it came from, None for the full run

    def record(self, full_epochs: int, full_steps: int) -> dict[str, Any] | None:
        """What evidence.json / result.json say about the budget (None for a full-length run)."""
        if self.budget is None:
            return None
        return {**{k: v for k, v in self.budget.items() if v is not None}, "full_epochs": full_epochs,
                "full_steps": full_steps if full_steps > 0 else None, "stretch": round(self.stretch, 6)}


def budget_length(max_epochs: int, max_steps: int, budget: dict[str, Any] | None,
                  steps_per_epoch: int | None = None) -> Length:
    """The length of a cell under ``trainer.budget`` (``{epochs: N}`` or ``{steps: N}``), checked.

    ``budget.epochs`` shortens ``max_epochs`` (the full run must be stated in epochs); ``budget.steps`` shortens
    the full run's optimizer steps: ``max_steps`` when set, else ``max_epochs x steps_per_epoch`` (which the
    caller knows once the data is set up). A budget longer than the full run is refused: it would stretch the
    recipe beyond what it states.
    """
    if not budget or all(v is None for v in budget.values()):
        return Length(max_epochs, max_steps)
    unknown = sorted(set(budget) - {"epochs", "steps"})
    if unknown:
        raise UserError(f"unknown key trainer.budget.{unknown[0]}; valid keys: epochs, steps")
    epochs, steps = budget.get("epochs"), budget.get("steps")
    if epochs is not None and steps is not None:
        raise UserError("set trainer.budget.epochs or trainer.budget.steps, not both")
    if epochs is not None:
        if max_steps > 0:
            raise UserError("trainer.budget.epochs shortens trainer.max_epochs, but this cell's length is "
                            "trainer.max_steps; use trainer.budget.steps")
        if not 1 <= epochs <= max_epochs:
            raise UserError(f"trainer.budget.epochs = {epochs} must be between 1 and trainer.max_epochs "
                            f"({max_epochs}): a budget is a share of the full run")
        return Length(int(epochs), -1, epochs / max_epochs, dict(budget))
    full = max_steps if max_steps > 0 else max_epochs * (steps_per_epoch or 0)
    if full <= 0:
        raise UserError("trainer.budget.steps needs the full run's length in steps: set trainer.max_steps, or "
                        "trainer.max_epochs with a training set")
    if not 1 <= int(steps) <= full:
        raise UserError(f"trainer.budget.steps = {steps} must be between 1 and the full run's {full} optimizer "
                        "steps: a budget is a share of the full run")
    per_epoch = steps_per_epoch or full
    return Length(max(1, math.ceil(int(steps) / per_epoch)), int(steps), int(steps) / full, dict(budget))


def lr_factor(step: int, warmup: int, total: int, optim: dict[str, Any]) -> float:
    """The multiplier of the peak LR at optimizer step ``step``: linear warmup, then cosine to min_lr_ratio."""
    start = float(optim.get("warmup_start_factor", 0.01))
    floor = float(optim.get("min_lr_ratio", 0.0))
    if step < warmup:
        return start + (1 - start) * step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def ema_decay(ema: dict[str, Any] | None, global_batch: int, max_epochs: int) -> float | None:
    """The decay the EMA is updated with (None: no EMA); see the module doc for ``adjust: torchvision``."""
    if not ema:
        return None
    decay = float(ema["decay"])
    adjust = ema.get("adjust", "none")
    if adjust == "none":
        return decay
    if adjust != "torchvision":
        raise UserError(f"unknown model.ema.adjust {adjust!r}; use none or torchvision")
    epochs = max(1, int(max_epochs))
    alpha = min(1.0, (1.0 - decay) * global_batch * int(ema.get("every_n_steps", 1)) / epochs)
    return 1.0 - alpha


def ema_horizon(decay: float | None, every_n_steps: int = 1) -> float | None:
    """Optimizer steps an EMA of ``decay`` averages over: 1 / (1 - decay) updates, one every N steps."""
    if decay is None:
        return None
    return every_n_steps / (1.0 - decay) if decay < 1.0 else math.inf


# The keys that define how a cell trains, beyond its data and its transfer: two cells of one comparison must agree
# on all of them (the audit names the first that differs). Operational keys (logging, checkpoint cadence,
# progress bars, channels_last, compile, devices: those are the world size, checked on their own) are left out,
# and so is model.init, which a depthless variant sets on purpose.
RECIPE_KEYS = {
    "model": ("drop_path_rate", "ema"),
    "optim": None,  # all of it
    "augment": None,
    "trainer": ("max_epochs", "max_steps", "precision", "gradient_clip_val", "gradient_clip_algorithm",
                "global_batch_size", "limit_train_batches", "accumulate_grad_batches", "budget"),
    "data": ("batch_size", "scale", "crop_ratio"),
}


def recipe_view(config: dict[str, Any]) -> dict[str, Any]:
    """The recipe part of a resolved cell config (see :data:`RECIPE_KEYS`), as a plain dict."""
    out: dict[str, Any] = {}
    for section, keys in RECIPE_KEYS.items():
        values = config.get(section) or {}
        out[section] = dict(values) if keys is None else {k: values.get(k) for k in keys}
    return out
