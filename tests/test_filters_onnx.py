"""ONNX sources (issue 17): depthwise Conv kernels read from initializers, Constant nodes and a torch export."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.errors import UserError
from launch.cli import main
from pipeline.filters.extract import load_kernel_set
from pipeline.filters.onnx_source import load_onnx_kernels

onnx = pytest.importorskip("onnx")  # in the test extra; the reader itself imports it lazily
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _graph_file(tmp_path: Path, constant: bool) -> tuple[Path, list[np.ndarray]]:
    """x -> depthwise 3x3 (C=4) -> dense 1x1 (4->6) -> depthwise 5x7 with multiplier 2 (6->12) -> y."""
    rng = np.random.default_rng(0)
    dw1 = rng.normal(size=(4, 1, 3, 3)).astype(np.float32)
    pw = rng.normal(size=(6, 4, 1, 1)).astype(np.float32)
    dw2 = rng.normal(size=(12, 1, 5, 7)).astype(np.float32)
    weights = {"w_dw1": dw1, "w_pw": pw, "w_dw2": dw2}
    nodes, inits = [], []
    for name, w in weights.items():
        if constant:  # the weight as a Constant node's output, behind an Identity
            nodes.append(helper.make_node("Constant", [], [name + "_c"], value=numpy_helper.from_array(w, name)))
            nodes.append(helper.make_node("Identity", [name + "_c"], [name]))
        else:
            inits.append(numpy_helper.from_array(w, name))
    nodes += [helper.make_node("Conv", ["x", "w_dw1"], ["a"], name="dw1", group=4, pads=[1, 1, 1, 1]),
              helper.make_node("Conv", ["a", "w_pw"], ["b"], name="pw"),
              helper.make_node("Conv", ["b", "w_dw2"], ["y"], name="dw2", group=6, pads=[2, 3, 2, 3])]
    graph = helper.make_graph(nodes, "tiny_dscnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                   [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = tmp_path / f"tiny_{'constant' if constant else 'init'}.onnx"
    onnx.save(model, str(path))
    return path, [dw1[:, 0], dw2[:, 0]]


@pytest.mark.parametrize("constant", [False, True], ids=["initializer", "constant"])
def test_onnx_depthwise_kernels_from_initializers_and_constant_nodes(tmp_path: Path, constant: bool) -> None:
    path, expected = _graph_file(tmp_path, constant)
    kset = load_onnx_kernels(path)
    assert kset.modules == ["dw1", "dw2"] and kset.arch == "onnx:tiny_dscnn"  # the dense 1x1 conv is not a unit
    for got, want in zip(kset.kernels, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    out = tmp_path / "out"
    assert main(["filters", "extract", str(path), "--out", str(out)]) == 0
    back = load_kernel_set(out / "kernels.npz")
    assert [k.shape for k in back.kernels] == [(4, 3, 3), (12, 5, 7)]
    np.testing.assert_array_equal(back.kernels[1], expected[1])


def test_onnx_export_of_a_timm_model_matches_its_depthwise_weights(tmp_path: Path) -> None:
    from pipeline.filters.extract import extract_kernels
    from pipeline.models.zoo import create_model

    torch.manual_seed(0)
    model = create_model("convnext_demo", num_classes=10).eval()
    path = tmp_path / "convnext_demo.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, 32, 32), str(path), dynamo=False)
    got, want = load_onnx_kernels(path), extract_kernels(model, "convnext_demo", "torch")
    assert got.num_units == want.num_units == 5
    for a, b in zip(got.kernels, want.kernels, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)
    assert main(["filters", "grid", str(path), "--out", str(tmp_path / "g.png")]) == 0
    out = tmp_path / "clusters"
    assert main(["filters", "cluster", str(path), "--clusters", "3", "--epochs", "5", "--out", str(out)]) == 0
    header = (out / "layer_shares.csv").read_text().splitlines()[0].split(",")
    assert {"family_delta", "family_gauss", "family_dog", "family_other"} <= set(header)


def test_onnx_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_onnx_kernels(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(UserError, match="cannot read"):
        load_onnx_kernels(tmp_path / "bad.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the optional extra were not installed
    with pytest.raises(UserError, match=r"pip install masterkey-filters\[onnx\]"):
        load_onnx_kernels(tmp_path / "bad.onnx")


def test_extract_and_onnx_source_do_not_import_each_other() -> None:
    """Both build a KernelSet; it lives in its own module, so the ONNX reader no longer imports ``extract``
    (which dispatches to it): no cycle, not even through a lazy import inside a function."""
    import ast

    import pipeline.filters.kernel_set as kernel_set
    import pipeline.filters.onnx_source as onnx_source

    def imported(module: object) -> set[str]:
        tree = ast.parse(Path(module.__file__).read_text())  # type: ignore[attr-defined]
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}

    assert "pipeline.filters.extract" not in imported(onnx_source)
    assert not {"pipeline.filters.extract", "pipeline.filters.onnx_source"} & imported(kernel_set)
