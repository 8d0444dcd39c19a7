"""The transfer protocol itself: what is copied, what is frozen, what trains (Yosinski's AnB / AnB+ / reverse)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.classifier import ImageClassifier
from pipeline.config import ModelConfig, OptimConfig
from pipeline.layer_plan import plan_units, unit_param_names
from pipeline.models import create_model
from pipeline.train import train_cell
from tests.conftest import cell_config

pytestmark = pytest.mark.usefixtures("fashion_root")


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "weights.safetensors"))


def unit_keys(arch: str, kind: str) -> list[list[str]]:
    """State-dict keys of each unit, parameters only (buffers such as BN statistics are checked separately)."""
    model = create_model(arch, num_classes=5)
    params = {n for n, _ in model.named_parameters()}
    return [[k for k in unit_param_names(model, u) if k in params] for u in plan_units(model, kind)]


@pytest.fixture(scope="module")
def base_a(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("base") / "convnext_A"
    train_cell(cell_config(run, data={"half": "A"}))
    return run


@pytest.fixture(scope="module")
def resnet_base_a(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("base") / "resnet_A"
    train_cell(cell_config(run, data={"half": "A"}, model={"arch": "resnet_demo"}))
    return run


def transfer_cell(tmp_path: Path, base: Path, name: str, **transfer: object) -> Path:
    run = tmp_path / name
    train_cell(cell_config(run, transfer={"base": str(base), "unit_kind": "depthwise", **transfer}))
    return run


def test_frozen_units_stay_identical_to_a_and_everything_else_trains(tmp_path: Path, base_a: Path) -> None:
    """AnB: units 1..n are A's bit for bit after training on B; every other parameter has moved away from A."""
    run = transfer_cell(tmp_path, base_a, "AnB3", depth=3, mode="frozen")
    a, b = weights(base_a), weights(run)
    units = unit_keys("convnext_demo", "depthwise")
    frozen = {k for unit in units[:3] for k in unit}
    assert frozen, "the first 3 depthwise units must own parameters"
    for key in frozen:
        assert torch.equal(a[key], b[key]), f"frozen {key} changed"
    model_params = {n for n, _ in create_model("convnext_demo", num_classes=5).named_parameters()}
    for key in model_params - frozen:
        assert not torch.equal(a[key], b[key]), f"{key} should have trained on B but equals A's"


def test_reverse_freezes_from_the_end(tmp_path: Path, base_a: Path) -> None:
    """reverse: units n..L come from A and stay frozen; the units before n train."""
    run = transfer_cell(tmp_path, base_a, "rev4", depth=4, direction="last")
    a, b = weights(base_a), weights(run)
    units = unit_keys("convnext_demo", "depthwise")
    assert all(torch.equal(a[k], b[k]) for unit in units[3:] for k in unit)
    assert all(not torch.equal(a[k], b[k]) for unit in units[:3] for k in unit)


def test_finetuned_units_move(tmp_path: Path, base_a: Path) -> None:
    """AnB+: the transferred units start from A's weights but are trained further."""
    run = transfer_cell(tmp_path, base_a, "AnB3plus", depth=3, mode="finetune")
    a, b = weights(base_a), weights(run)
    for unit in unit_keys("convnext_demo", "depthwise")[:3]:
        for key in unit:
            assert not torch.equal(a[key], b[key]), f"{key} should have been fine-tuned"


def test_depth_zero_equals_training_from_scratch(tmp_path: Path, base_a: Path) -> None:
    """n = 0 copies nothing and consumes no randomness: the result is the scratch run with the same seed."""
    zero = transfer_cell(tmp_path, base_a, "AnB0", depth=0)
    scratch = tmp_path / "scratch"
    train_cell(cell_config(scratch))
    w0, ws = weights(zero), weights(scratch)
    assert w0.keys() == ws.keys()
    for key in w0:
        assert torch.equal(w0[key], ws[key]), key


def test_frozen_block_units_keep_batchnorm_statistics(tmp_path: Path, resnet_base_a: Path) -> None:
    """Frozen BatchNorm stays in eval mode: running statistics of frozen blocks remain A's exactly."""
    run = tmp_path / "resnet_AnB2"
    train_cell(cell_config(run, model={"arch": "resnet_demo"},
                           transfer={"base": str(resnet_base_a), "unit_kind": "block", "depth": 2}))
    a, b = weights(resnet_base_a), weights(run)
    model = create_model("resnet_demo", num_classes=5)
    units = plan_units(model, "block")
    frozen_keys = [k for u in units[:2] for k in unit_param_names(model, u)]
    stats = [k for k in frozen_keys if k.endswith(("running_mean", "running_var"))]
    assert stats, "frozen resnet blocks must contain BatchNorm statistics"
    for key in frozen_keys:
        assert torch.equal(a[key], b[key]), key
    later = [k for u in units[2:] for k in unit_param_names(model, u) if k.endswith("running_mean")]
    assert any(not torch.equal(a[k], b[k]) for k in later), "unfrozen BN statistics should adapt to B"


def test_optimizer_holds_no_frozen_parameter(base_a: Path) -> None:
    """Frozen parameters must not even reach the optimizer (no weight decay or momentum on them)."""
    from pipeline.transfer import TransferSpec

    module = ImageClassifier(ModelConfig(arch="convnext_demo"), OptimConfig(), num_classes=5,
                             transfer=TransferSpec(base=str(base_a), depth=5))
    optimizer, _ = module.configure_optimizers_plain(10)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    frozen = [p for p in module.model.parameters() if not p.requires_grad]
    assert len(frozen) == 10  # 5 depthwise convs x (weight, bias)
    assert not in_optimizer & {id(p) for p in frozen}
    assert in_optimizer == {id(p) for p in module.model.parameters() if p.requires_grad}
    assert module.frozen_parameters() == sum(p.numel() for p in frozen)
