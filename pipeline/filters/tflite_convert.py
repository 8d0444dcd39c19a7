"""The depthwise kernels of a ``.tflite`` model written as an ONNX file that ``mkf filters`` reads.

Trained mobile DS-CNNs ship as TFLite flatbuffers (MediaPipe's BlazeFace, BlazePalm, BlazePose, selfie
segmentation); this tool turns each ``DEPTHWISE_CONV_2D`` weight (``[1, kh, kw, C]``, float32, or float16 behind a
``DEQUANTIZE`` op) into a grouped ONNX ``Conv`` initializer ``[C, 1, kh, kw]``, in the model's operator order.
Only the kernels are kept (a kernel-analysis file, not a runnable model). Needs the ``tflite`` flatbuffer
parser (``pip install tflite``), imported only here; it is not a project dependency.

    python -m pipeline.filters.tflite_convert face_detection_short_range.tflite out.onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.errors import UserError

_DTYPES = {0: np.float32, 1: np.float16}  # tflite TensorType FLOAT32, FLOAT16


def _code(model: Any, op: Any) -> int:
    oc = model.OperatorCodes(op.OpcodeIndex())
    return max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())


def tflite_depthwise(path: str | Path) -> list[tuple[str, np.ndarray]]:
    """(tensor name, kernels (C, kh, kw) float32) of every depthwise conv of a ``.tflite`` file, in op order."""
    try:
        import tflite
    except ImportError:
        raise UserError("reading .tflite files needs the tflite parser; pip install tflite") from None
    buf = Path(path).read_bytes()
    model = tflite.Model.GetRootAsModel(buf, 0)
    graph = model.Subgraphs(0)
    producer = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        for j in range(op.OutputsLength()):
            producer[op.Outputs(j)] = op

    def tensor_value(index: int) -> np.ndarray | None:
        t = graph.Tensors(index)
        data = model.Buffers(t.Buffer()).DataAsNumpy()
        if not isinstance(data, int) and len(data):
            if t.Type() not in _DTYPES:
                return None  # an integer-quantised weight: its scales would be needed
            return np.frombuffer(data.tobytes(), dtype=_DTYPES[t.Type()]).reshape(t.ShapeAsNumpy())
        op = producer.get(index)
        if op is not None and _code(model, op) == tflite.BuiltinOperator.DEQUANTIZE:
            return tensor_value(op.Inputs(0))
        return None

    out = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if _code(model, op) != tflite.BuiltinOperator.DEPTHWISE_CONV_2D:
            continue
        w = tensor_value(op.Inputs(1))
        if w is not None:
            out.append((graph.Tensors(op.Inputs(1)).Name().decode(),
                        np.transpose(w.astype(np.float32)[0], (2, 0, 1))))  # [1, kh, kw, C] -> (C, kh, kw)
    return out


def write_onnx(units: list[tuple[str, np.ndarray]], out: str | Path, name: str) -> Path:
    """One grouped ``Conv`` per unit, its weight an initializer; each conv reads its own graph input."""
    from pipeline.filters.onnx_source import _onnx

    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, inputs, outputs = [], [], [], []
    for i, (tensor, k) in enumerate(units):
        c, kh, kw = k.shape
        inits.append(numpy_helper.from_array(k[:, None].astype(np.float32), f"w{i}"))
        inputs.append(helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, [1, c, 16, 16]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
        nodes.append(helper.make_node("Conv", [f"x{i}", f"w{i}"], [f"y{i}"], name=tensor, group=c,
                                      kernel_shape=[kh, kw], pads=[kh // 2, kw // 2, kh // 2, kw // 2]))
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, producer_name="tflite_convert"), str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tflite")
    parser.add_argument("onnx")
    args = parser.parse_args(argv)
    units = tflite_depthwise(args.tflite)
    write_onnx(units, args.onnx, Path(args.tflite).stem)
    print(f"{len(units)} depthwise units, {sum(len(k) for _, k in units)} kernels -> {args.onnx}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
