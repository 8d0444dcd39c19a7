"""Layer plans: the unit counts the paper's sweeps rely on, in forward order, and `mkf layers`."""

from __future__ import annotations

import pytest
import timm

from launch.cli import main
from pipeline.models.layer_plan import is_depthwise, plan_units


@pytest.mark.parametrize(("arch", "kind", "count"), [
    ("convnext_tiny", "depthwise", 18),
    ("convnext_base", "depthwise", 36),
    ("convnext_atto", "depthwise", 12),
    ("mobilenetv3_large_100", "depthwise", 15),
    ("hornet_tiny_7x7", "depthwise", 25),
    ("resnet18", "block", 9),
    ("convnext_demo", "depthwise", 5),
    ("convnext_demo", "pointwise", 5),
    ("convnext_tiny", "pointwise", 18),
    ("hornet_tiny_7x7", "pointwise", 25),
    ("resnet_demo", "block", 5),
    ("resnet18", "depthwise", 0),
    ("convnext_demo", "both", 5),
    ("hornet_tiny_7x7", "both", 25),
    ("mobilenetv3_large_100", "both", 15),
])
def test_unit_counts(arch: str, kind: str, count: int) -> None:
    assert len(plan_units(timm.create_model(arch), kind)) == count


def test_depthwise_units_are_in_forward_order_and_really_depthwise() -> None:
    model = timm.create_model("convnext_tiny")
    units = plan_units(model, "depthwise")
    modules = dict(model.named_modules())
    assert [u.index for u in units] == list(range(1, 19))
    assert units[0].modules == ("stages.0.blocks.0.conv_dw",) and units[-1].modules == ("stages.3.blocks.2.conv_dw",)
    assert all(is_depthwise(modules[u.modules[0]]) for u in units)
    assert units[0].shape == "96x1x7x7" and units[0].num_params == 96 * 49 + 96


def test_block_units_start_with_the_stem_and_exclude_the_head() -> None:
    units = plan_units(timm.create_model("resnet18"), "block")
    assert units[0].modules == ("conv1", "bn1")
    assert units[1].modules[0] == "layer1.0.conv1"
    assert not any("fc" in m for u in units for m in u.modules)


def test_pointwise_units_are_the_mixers_of_depthwise_blocks() -> None:
    """Pointwise unit i = the mixers of depthwise unit i's block: one depth axis for all three kinds."""
    model = timm.create_model("convnext_demo")
    units = plan_units(model, "pointwise")
    assert units[0].modules == ("stages.0.blocks.0.mlp.fc1", "stages.0.blocks.0.mlp.fc2")
    assert not any(m.startswith(("head", "stem")) for u in units for m in u.modules)
    both = plan_units(model, "both")
    assert [set(b.modules) - {b.modules[0]} for b in both] == [set(u.modules) for u in units]


def test_layers_command_prints_units_and_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["layers", "convnext_tiny", "--kind", "depthwise"]) == 0
    out = capsys.readouterr().out
    assert "stages.0.blocks.0.conv_dw" in out and "96x1x7x7" in out and "18 units" in out


def test_both_units_are_a_depthwise_layer_with_its_blocks_pointwise_layers() -> None:
    """unit i of kind both = depthwise unit i + the 1x1 mixers of the same block, nothing of other blocks."""
    model = timm.create_model("convnext_demo")
    both, depthwise = plan_units(model, "both"), plan_units(model, "depthwise")
    assert [u.modules[0] for u in both] == [u.modules[0] for u in depthwise]
    assert both[0].modules == ("stages.0.blocks.0.conv_dw", "stages.0.blocks.0.mlp.fc1", "stages.0.blocks.0.mlp.fc2")
    assert both[0].num_params == 16 * 49 + 16 + (16 * 64 + 64) + (64 * 16 + 16)
    mobilenet = plan_units(timm.create_model("mobilenetv3_large_100"), "both")
    assert mobilenet[3].modules[0] == "blocks.2.0.conv_dw"  # the depthwise layer leads its unit
    assert set(mobilenet[3].modules) == {"blocks.2.0.conv_pw", "blocks.2.0.conv_dw", "blocks.2.0.se.conv_reduce",
                                         "blocks.2.0.se.conv_expand", "blocks.2.0.conv_pwl"}


def test_layers_command_lists_both_units(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["layers", "convnext_demo", "--kind", "both", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "stages.0.blocks.0.mlp.fc2" in out and "5 units" in out
