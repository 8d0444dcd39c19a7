"""One model's depthwise kernels, unit by unit: the one type every kernel source returns and every analysis reads.

Its own module, with no torch, so that the sources (:mod:`pipeline.filters.extract` for timm models and run dirs,
:mod:`pipeline.filters.onnx_source` for ONNX files) can both build it without importing each other.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.errors import UserError


@dataclass
class KernelSet:
    """Every depthwise kernel of one model, in layer-plan order."""

    arch: str
    source: str
    modules: list[str]  # unit i (1-based) is modules[i - 1]
    kernels: list[np.ndarray] = field(default_factory=list)  # per unit: (channels, h, w)

    @property
    def num_units(self) -> int:
        return len(self.modules)

    def flat(self, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(kernels (N, h, w), unit (N,), channel (N,)) of one kernel shape (the most common one by default)."""
        shape = shape or self.main_shape()
        chosen = [(i + 1, k) for i, k in enumerate(self.kernels) if k.shape[1:] == shape]
        if not chosen:
            raise UserError(f"{self.source} has no {shape[0]}x{shape[1]} depthwise kernels")
        kernels = np.concatenate([k for _, k in chosen]).astype(np.float64)
        unit = np.concatenate([np.full(len(k), i) for i, k in chosen])
        channel = np.concatenate([np.arange(len(k)) for _, k in chosen])
        return kernels, unit, channel

    def main_shape(self) -> tuple[int, int]:
        counts = Counter({tuple(k.shape[1:]): 0 for k in self.kernels})
        for k in self.kernels:
            counts[tuple(k.shape[1:])] += len(k)
        if not counts:
            raise UserError(f"{self.source} ({self.arch}) has no depthwise units; it is not a DS-CNN")
        return counts.most_common(1)[0][0]  # type: ignore[return-value]

    def summary(self) -> dict[str, Any]:
        per_size: Counter[str] = Counter()
        units = []
        for i, (name, k) in enumerate(zip(self.modules, self.kernels, strict=True), 1):
            size = f"{k.shape[1]}x{k.shape[2]}"
            per_size[size] += len(k)
            units.append({"unit": i, "module": name, "channels": len(k), "kernel_size": size})
        return {"arch": self.arch, "source": self.source, "num_units": self.num_units,
                "num_kernels": sum(per_size.values()), "per_kernel_size": dict(per_size), "units": units}

    def save(self, out_dir: str | Path, stem: str = "kernels") -> tuple[Path, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"arch": np.array(self.arch), "source": np.array(self.source),
                                         "modules": np.array(self.modules)}
        for shape in sorted({tuple(k.shape[1:]) for k in self.kernels}):
            kernels, unit, channel = self.flat(shape)  # type: ignore[arg-type]
            tag = f"{shape[0]}x{shape[1]}"
            arrays[f"kernels_{tag}"] = kernels.astype(np.float32)
            arrays[f"unit_{tag}"] = unit.astype(np.int32)
            arrays[f"channel_{tag}"] = channel.astype(np.int32)
        npz = out / f"{stem}.npz"
        np.savez_compressed(npz, **arrays)
        summary = out / f"{stem}.json"
        summary.write_text(json.dumps({**self.summary(), "file": npz.name}, indent=2) + "\n")
        return npz, summary
