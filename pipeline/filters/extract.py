"""Depthwise kernels out of a model, into one compressed ``.npz`` plus a JSON summary.

The file holds, per kernel shape ``HxW``: ``kernels_HxW`` (N, H, W), ``unit_HxW`` (1-based unit index of the
layer plan) and ``channel_HxW``; and ``arch``, ``source``, ``modules`` (unit i's module is ``modules[i-1]``).
Grouping by shape keeps one plain array per shape, so numpy alone can read the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from datamodules.errors import UserError
from pipeline.filters.kernel_set import KernelSet
from pipeline.models.layer_plan import plan_units

__all__ = ["KernelSet", "extract_kernels", "kernels_from", "load_kernel_set"]  # KernelSet: its old home


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
