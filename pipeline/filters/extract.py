"""Depthwise kernels out of a model, into one compressed ``.npz`` plus a JSON summary.

The file holds, per kernel shape ``HxW``: ``kernels_HxW`` (N, H, W), ``unit_HxW`` (1-based unit index of the
layer plan) and ``channel_HxW``; and ``arch``, ``source``, ``modules`` (unit i's module is ``modules[i-1]``).
Grouping by shape keeps one plain array per shape, so numpy alone can read the file.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from datamodules.errors import UserError
from pipeline.models.layer_plan import plan_units


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


def extract_kernels(model: nn.Module, arch: str, source: str) -> KernelSet:
    """Every depthwise kernel of ``model``, unit by unit in forward order (the layer plan's units)."""
    units = plan_units(model, "depthwise")
    modules = dict(model.named_modules())
    kernels = [modules[u.modules[0]].weight.detach().cpu().float().numpy()[:, 0] for u in units]
    return KernelSet(arch=arch, source=source, modules=[u.modules[0] for u in units], kernels=kernels)


def load_kernel_set(path: str | Path) -> KernelSet:
    """Read an ``.npz`` written by :meth:`KernelSet.save` back into units."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UserError(f"cannot read {path} ({exc}); pass a file written by `mkf filters extract`") from None
    if "modules" not in data:
        raise UserError(f"{path} has no 'modules' array; it was not written by `mkf filters extract`")
    modules = [str(m) for m in data["modules"]]
    per_unit: dict[int, list[tuple[int, np.ndarray]]] = {}
    for key in data.files:
        if key.startswith("kernels_"):
            tag = key.removeprefix("kernels_")
            for k, u, c in zip(data[key], data[f"unit_{tag}"], data[f"channel_{tag}"], strict=True):
                per_unit.setdefault(int(u), []).append((int(c), k))
    kernels = [np.stack([k for _, k in sorted(per_unit[i + 1], key=lambda t: t[0])]) for i in range(len(modules))]
    return KernelSet(str(data["arch"]), str(data["source"]), modules, kernels)


def kernels_from(src: str, file: str | None = None) -> KernelSet:
    """Kernels of any source: an extracted ``.npz``, an ``.onnx`` file or a filter bank ``.txt`` directly, the rest
    via its model."""
    if src.endswith(".npz"):
        return load_kernel_set(src)
    if src.endswith(".onnx"):
        from pipeline.filters.onnx_source import load_onnx_kernels

        return load_onnx_kernels(src)
    if src.endswith(".txt") or src == "published":
        from pipeline.filters.bank import read_filter_bank, resolve_bank_path

        bank = read_filter_bank(src)  # a filter bank (the published 8, or `mkf filters masterkey` output)
        return KernelSet("filter bank", resolve_bank_path(src).stem, ["bank"], [bank])
    from pipeline.filters.source import load_model_source

    loaded = load_model_source(src, file)
    return extract_kernels(loaded.model, loaded.arch, loaded.label)
