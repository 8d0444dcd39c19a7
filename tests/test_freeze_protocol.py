"""transfer.freeze on a full-size timm ConvNeXt-T: the authors' protocol (kernels only) and kernel_and_bias.

Their published helper (tonylindeberg/masterfiltmodel, ``freeze_weights``) fixes the parameters named
``conv_dw.weight`` / ``dwconv.weight`` and nothing else. The counts below are the issue's: n = 18 frozen depthwise
units of ConvNeXt-T are 18 frozen tensors under ``kernel`` and 36 under ``kernel_and_bias``. The model is built on
the meta device (no weights, no memory) for the counts; the training step runs it on CPU at 32 px.
"""

from __future__ import annotations

import re

import pytest
import timm
import torch
from torch import nn

import pipeline.models.zoo  # noqa: F401  (registers the project's archs)
from datamodules.errors import UserError
from pipeline.config import ModelConfig, OptimConfig
from pipeline.training.classifier import ImageClassifier
from pipeline.transfer.apply import TransferSpec, apply_transfer

DW_KERNEL = re.compile(r"stages\.\d\.blocks\.\d+\.conv_dw\.weight")
DW_BIAS = re.compile(r"stages\.\d\.blocks\.\d+\.conv_dw\.bias")


def convnext_t_meta() -> nn.Module:
    with torch.device("meta"):
        return timm.create_model("convnext_tiny", pretrained=False, num_classes=10)


def split(model: nn.Module) -> tuple[set[str], set[str]]:
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    return frozen, {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def counts() -> dict[str, int]:
    model = convnext_t_meta()
    return {"params": len(list(model.parameters())),
            "dw": sum(1 for n, _ in model.named_parameters() if DW_KERNEL.fullmatch(n))}


def test_kernel_freezes_exactly_the_18_depthwise_kernels(counts: dict[str, int]) -> None:
    model = convnext_t_meta()
    applied = apply_transfer(model, "convnext_tiny", TransferSpec(init="random", depth=18))  # freeze: kernel
    frozen, trainable = split(model)
    assert counts["dw"] == 18 and len(frozen) == 18 and len(applied.frozen) == 18
    assert all(DW_KERNEL.fullmatch(n) for n in frozen)
    # biases of the frozen units, every norm, every pointwise layer, layer scale, stem and head keep training
    assert sum(1 for n in trainable if DW_BIAS.fullmatch(n)) == 18
    assert {n for n in trainable if ".norm." in n or n.startswith("stem.1")} and \
        {n for n in trainable if ".mlp.fc" in n} and {n for n in trainable if n.endswith(".gamma")}
    assert len(trainable) == counts["params"] - 18
    assert applied.to_json()["freeze"] == "kernel" and applied.to_json()["frozen_tensors"] == 18


def test_kernel_and_bias_freezes_36_tensors(counts: dict[str, int]) -> None:
    model = convnext_t_meta()
    apply_transfer(model, "convnext_tiny", TransferSpec(init="random", depth=18, freeze="kernel_and_bias"))
    frozen, trainable = split(model)
    assert len(frozen) == 36
    assert all(DW_KERNEL.fullmatch(n) or DW_BIAS.fullmatch(n) for n in frozen)
    assert not any(DW_KERNEL.fullmatch(n) or DW_BIAS.fullmatch(n) for n in trainable)


def test_other_unit_kinds_under_each_value() -> None:
    """pointwise / both: the rule per layer (weights; + biases with kernel_and_bias); block: the whole block."""
    def frozen_of(kind: str, depth: int, freeze: str) -> set[str]:
        model = convnext_t_meta()
        apply_transfer(model, "convnext_tiny", TransferSpec(init="random", unit_kind=kind, depth=depth,
                                                             freeze=freeze))
        return split(model)[0]

    both = frozen_of("both", 18, "kernel")
    assert len(both) == 54 and all(n.endswith(".weight") and (".conv_dw." in n or ".mlp.fc" in n) for n in both)
    assert len(frozen_of("both", 18, "kernel_and_bias")) == 108
    pw = frozen_of("pointwise", 1, "kernel")
    assert pw == {"stages.0.blocks.0.mlp.fc1.weight", "stages.0.blocks.0.mlp.fc2.weight"}
    block_k, block_kb = frozen_of("block", 2, "kernel"), frozen_of("block", 2, "kernel_and_bias")
    stem_and_block1 = {n for n, _ in convnext_t_meta().named_parameters()
                       if n.startswith(("stem.", "stages.0.blocks.0."))}
    assert block_k == block_kb == stem_and_block1  # a block unit freezes all of itself under either value


def test_unknown_freeze_value_is_one_user_error() -> None:
    with pytest.raises(UserError, match=r"transfer\.freeze 'bias'.*kernel, kernel_and_bias"):
        TransferSpec(init="random", depth=1, freeze="bias")


@pytest.mark.slow
def test_a_training_step_keeps_a_frozen_kernel_and_moves_its_bias() -> None:
    """One real AdamW step of ConvNeXt-T (the project's optimizer set-up): frozen kernels bit-identical, their
    biases moved; with kernel_and_bias both stay."""
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    for freeze in ("kernel", "kernel_and_bias"):
        module = ImageClassifier(ModelConfig(arch="convnext_tiny"), OptimConfig(lr=1e-3), num_classes=2,
                                 transfer=TransferSpec(init="random", depth=3, freeze=freeze))
        optimizer, _ = module.configure_optimizers_plain(10)
        before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
        nn.functional.cross_entropy(module.model(x), y).backward()
        optimizer.step()
        after = dict(module.model.named_parameters())
        for unit in ("stages.0.blocks.0", "stages.0.blocks.2"):
            assert torch.equal(before[f"{unit}.conv_dw.weight"], after[f"{unit}.conv_dw.weight"]), freeze
            bias_same = torch.equal(before[f"{unit}.conv_dw.bias"], after[f"{unit}.conv_dw.bias"])
            assert bias_same == (freeze == "kernel_and_bias"), (freeze, unit)
        # the fourth unit is not frozen: its kernel trains
        assert not torch.equal(before["stages.1.blocks.0.conv_dw.weight"], after["stages.1.blocks.0.conv_dw.weight"])
