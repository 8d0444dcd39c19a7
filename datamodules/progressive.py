"""FFCV-style progressive resizing: the training resolution of each epoch, as plain arithmetic (torch-free).

FFCV's ImageNet recipe (libffcv/ffcv-imagenet, ``train_imagenet.py`` ``get_resolution``) trains at ``start`` px up
to and including ``start_epoch``, at ``end`` px from ``end_epoch`` on, and in between at the linear interpolation
rounded to a multiple of ``step`` (32 px): its ResNet-50/18 configs ramp 160 -> 192 between epochs 65 and 76 of
88. The same function serves the loaders (which crop each epoch at its resolution), the trainer's record and the
cost estimate, so the three can never disagree. Validation stays at the cell's validation resolution (by default
the final training resolution, ``end``).

A resolution is a pure function of the epoch, so a run resumed mid-epoch crops at exactly the resolution the
uninterrupted run did. Lives in ``datamodules`` (the loaders need it, and may not import ``pipeline``);
``pipeline.schedule`` re-exports it.
"""

from __future__ import annotations

import math
from typing import Any

from datamodules.errors import UserError

KEYS = ("start", "end", "start_epoch", "end_epoch", "step")


def check_progressive(spec: dict[str, Any] | None, image_size: int, max_epochs: int | None = None) -> None:
    """One UserError line for a progressive schedule that cannot mean what it says, naming the key and the fix."""
    if spec is None:
        return
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise UserError(f"unknown key data.progressive.{unknown[0]}; valid keys: {', '.join(KEYS)}")
    start, end, step = spec.get("start"), spec.get("end"), spec.get("step") or 32
    first, last = spec.get("start_epoch"), spec.get("end_epoch")
    if start is None or first is None or last is None:
        missing = next(k for k in ("start", "start_epoch", "end_epoch") if spec.get(k) is None)
        raise UserError(f"data.progressive.{missing} is required (e.g. {{start: 160, start_epoch: 65, "
                        "end_epoch: 76}: 160 px up to epoch 65, data.image_size from epoch 76)")
    if end is not None and end != image_size:
        raise UserError(f"data.progressive.end ({end}) must equal data.image_size ({image_size}): the final training "
                        "resolution is the cell's image size; set data.image_size to it and drop progressive.end")
    if step < 1:
        raise UserError(f"data.progressive.step must be >= 1 px, got {step}")
    for key, value in (("start", start), ("data.image_size", image_size)):
        if value % step:
            name = key if key.startswith("data.") else f"data.progressive.{key}"
            raise UserError(f"{name} ({value}) is not a multiple of data.progressive.step ({step}): resolutions move "
                            f"in steps of {step} px; use a multiple of it")
    if not 0 < start < image_size:
        raise UserError(f"data.progressive.start ({start}) must be above 0 and below data.image_size ({image_size}): "
                        "the ramp grows the resolution towards the image size")
    if not 0 <= first < last:
        raise UserError(f"data.progressive.start_epoch ({first}) must be >= 0 and below end_epoch ({last})")
    if max_epochs is not None and max_epochs > 0 and last > max_epochs:
        raise UserError(f"data.progressive.end_epoch ({last}) is past trainer.max_epochs ({max_epochs}); end the ramp "
                        "within the run")


def stretched(spec: dict[str, Any] | None, stretch: float) -> dict[str, Any] | None:
    """The ramp of a run shortened (or lengthened) by ``stretch``: its epochs scaled and floored, as FFCV's
    configs for 16..56 epochs are its 88-epoch ramp (65, 76) scaled and floored (16 epochs: 11, 13)."""
    if spec is None or stretch == 1.0:
        return spec
    first = int(math.floor(spec["start_epoch"] * stretch + 1e-9))
    last = max(first + 1, int(math.floor(spec["end_epoch"] * stretch + 1e-9)))
    return {**spec, "start_epoch": first, "end_epoch": last}


def progressive_resolution(spec: dict[str, Any] | None, epoch: int, image_size: int) -> int:
    """The training resolution of ``epoch`` (0-based, as Lightning and FFCV count): ``image_size`` without a ramp."""
    if spec is None:
        return image_size
    start, step = int(spec["start"]), int(spec.get("step") or 32)
    first, last = int(spec["start_epoch"]), int(spec["end_epoch"])
    if epoch <= first:
        return start
    if epoch >= last:
        return image_size
    interp = start + (image_size - start) * (epoch - first) / (last - first)
    # Python's round is numpy's (half to even), which FFCV's np.round uses
    return min(image_size, max(start, int(round(interp / step)) * step))


def progressive_schedule(spec: dict[str, Any] | None, epochs: int, image_size: int) -> list[int]:
    """The training resolution of every epoch of an ``epochs``-epoch run."""
    return [progressive_resolution(spec, e, image_size) for e in range(max(0, epochs))]
