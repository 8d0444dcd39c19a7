"""Depthwise kernels out of an ONNX file, so any exported DS-CNN can be analysed (not only timm models).

A unit is a ``Conv`` node whose weight is ``(C * multiplier, 1, kh, kw)`` with ``group == C > 1`` (each input
channel convolved on its own), any kernel size; units are numbered in graph order (ONNX graphs are topologically
sorted, so that is forward order). The weight may be an initializer, the output of a ``Constant`` node, or either
behind ``Identity`` / ``Cast`` / ``DequantizeLinear`` nodes (a float16 or int8 export); anything else (a weight
computed at run time) is reported as skipped. ``onnx`` is an optional extra, imported only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from datamodules.errors import UserError
from pipeline.filters.kernel_set import KernelSet


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise UserError("reading .onnx files needs the onnx package; pip install masterkey-filters[onnx]") from None
    return onnx


def _constants(graph: Any, numpy_helper: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Tensors known before run time (initializers and Constant nodes), and each output's producing node."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producers = {}
    for node in graph.node:
        for out in node.output:
            producers[out] = node
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values, producers


def _resolve(name: str, values: dict[str, np.ndarray], producers: dict[str, Any], depth: int = 0) -> np.ndarray | None:
    """The constant value of tensor ``name``, through Identity / Cast / DequantizeLinear; None if not constant."""
    if name in values:
        return values[name]
    node = producers.get(name)
    if node is None or depth > 8:
        return None
    if node.op_type in ("Identity", "Cast"):
        src = _resolve(node.input[0], values, producers, depth + 1)
        return None if src is None else src.astype(np.float64)
    if node.op_type == "DequantizeLinear":
        x = _resolve(node.input[0], values, producers, depth + 1)
        scale = _resolve(node.input[1], values, producers, depth + 1)
        zero = _resolve(node.input[2], values, producers, depth + 1) if len(node.input) > 2 and node.input[2] else 0
        if x is None or scale is None:
            return None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * x.ndim
        if np.ndim(scale) == 1 and x.ndim > 1:
            shape[axis] = -1
        return (x.astype(np.float64) - np.reshape(zero, shape if np.ndim(zero) == 1 else ())) * np.reshape(
            scale, shape if np.ndim(scale) == 1 else ())
    return None


def load_onnx_kernels(path: str | Path) -> KernelSet:
    """Every depthwise ``Conv`` kernel of an ONNX model, unit by unit in graph order."""
    onnx = _onnx()
    from onnx import numpy_helper

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file {path} does not exist; check the path")
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise UserError(f"cannot read {path} as ONNX ({exc}); pass an .onnx model file") from None
    graph = model.graph
    values, producers = _constants(graph, numpy_helper)
    modules, kernels, skipped = [], [], []
    for i, node in enumerate(graph.node):
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight = _resolve(node.input[1], values, producers)
        label = node.name or f"{node.input[1]} (node {i})"
        if weight is None:
            if group > 1:
                skipped.append(label)
            continue
        if weight.ndim != 4 or group <= 1 or weight.shape[1] != 1 or weight.shape[0] % group:
            continue  # a dense, 1-D or partly grouped conv: not a depthwise unit
        modules.append(label)
        kernels.append(np.asarray(weight[:, 0], dtype=np.float32))
    producer = graph.name or model.producer_name or "onnx"
    kset = KernelSet(arch=f"onnx:{producer}", source=path.stem, modules=modules, kernels=kernels)
    kset.skipped = skipped  # type: ignore[attr-defined]  (grouped convs whose weights are computed at run time)
    return kset
