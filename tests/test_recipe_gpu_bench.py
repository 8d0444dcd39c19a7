"""`mkf bench gpu` on a CPU: the same code path on a tiny model, and torch.compile with frozen units recompiles
nothing after the first step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.bench.gpu import BenchCase, bench_gpu, build_module, synthetic_batches, train_steps


def test_compiled_model_with_frozen_units_does_not_recompile_after_the_first_step(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = bench_gpu(archs=["convnext_demo"], precisions=["32-true"], channels_last=[False], compile=[False, True],
                    batch_size=8, image_size=32, steps=4, warmup=1, device="cpu", frozen_depth=2,
                    compile_backend="eager", num_classes=5, out_json=str(tmp_path / "gpu.json"))
    rows = {r["compile"]: r for r in out["results"]}
    assert rows[True]["recompiles"] == 0 and rows[True]["compile_s"] > 0
    assert rows[False]["recompiles"] is None
    assert all(r["images_per_s"] > 0 for r in out["results"])
    printed = capsys.readouterr().out
    assert "images/s" in printed and "convnext_demo" in printed
    assert (tmp_path / "gpu.json").is_file()


def test_the_recompile_counter_sees_a_recompile() -> None:
    """Guard failure on purpose (the train/eval flag flips every step): the counter must not stay at 0."""
    torch._dynamo.reset()
    case = BenchCase("convnext_demo", "32-true", False, True, "synthetic")
    module = build_module(case, num_classes=5, device=torch.device("cpu"), frozen_depth=2, compile_backend="eager")
    batches = synthetic_batches(4, 32, 5, torch.device("cpu"), channels_last=False)

    def flipping():
        for i, batch in enumerate(batches):
            module.model.train(i % 2 == 0)
            yield batch

    _, _, recompiles = train_steps(module, flipping(), steps=3, warmup=0, device=torch.device("cpu"),
                                   precision="32-true")
    assert recompiles and recompiles > 0
