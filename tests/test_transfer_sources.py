"""Transfer bases beyond our own run dirs: an mkf .safetensors file and timm's pretrained loading, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from datamodules.errors import UserError
from pipeline.models.layer_plan import plan_units, unit_param_names
from pipeline.models.zoo import create_model
from pipeline.transfer.apply import TransferSpec, apply_transfer


def saved_timm_model(arch: str, path: Path, seed: int) -> dict[str, torch.Tensor]:
    """A stock timm model's state_dict, as a user would save one (torch.save, no mkf metadata)."""
    torch.manual_seed(seed)
    state = timm.create_model(arch).state_dict()
    torch.save(state, path)
    return state


@pytest.mark.parametrize(("arch", "kind"), [("convnext_demo", "depthwise"), ("resnet_demo", "block")])
def test_timm_source_from_a_local_file_copies_the_files_tensors(tmp_path: Path, arch: str, kind: str) -> None:
    state = saved_timm_model(arch, tmp_path / "weights.pth", seed=5)
    torch.manual_seed(0)
    model = create_model(arch, num_classes=3)
    applied = apply_transfer(model, arch, TransferSpec(base=f"timm:{arch}", base_file=str(tmp_path / "weights.pth"),
                                                       unit_kind=kind, depth=2))
    copied = [k for u in plan_units(model, kind)[:2] for k in unit_param_names(model, u)]
    assert copied and sorted(applied.copied) == sorted(copied)
    after = model.state_dict()
    for key in copied:
        assert torch.equal(after[key], state[key]), key
    assert applied.to_json()["base"] == f"timm:{arch}" and applied.base_arch == arch


def test_timm_source_leaves_the_cells_random_stream_alone(tmp_path: Path) -> None:
    saved_timm_model("convnext_demo", tmp_path / "w.pth", seed=5)
    torch.manual_seed(0)
    apply_transfer(create_model("convnext_demo", num_classes=3), "convnext_demo",
                   TransferSpec(base="timm:convnext_demo", base_file=str(tmp_path / "w.pth"), depth=1))
    after = torch.rand(3)
    torch.manual_seed(0)
    create_model("convnext_demo", num_classes=3)
    assert torch.equal(after, torch.rand(3))


def test_mkf_safetensors_file_is_a_base(tmp_path: Path) -> None:
    torch.manual_seed(4)
    source = create_model("convnext_demo", num_classes=5).state_dict()
    save_file({k: v.contiguous() for k, v in source.items()}, str(tmp_path / "a.safetensors"),
              metadata={"arch": "convnext_demo", "num_classes": "5"})
    model = create_model("convnext_demo", num_classes=5)
    apply_transfer(model, "convnext_demo", TransferSpec(base=str(tmp_path / "a.safetensors"), depth=5))
    assert torch.equal(model.state_dict()["stages.3.blocks.0.conv_dw.weight"],
                       source["stages.3.blocks.0.conv_dw.weight"])


def test_uncached_timm_tag_without_base_file_is_one_clear_error() -> None:
    with pytest.raises(UserError, match="transfer.base_file") as exc:
        apply_transfer(create_model("convnext_demo", num_classes=3), "convnext_demo",
                       TransferSpec(base="timm:convnext_tiny.fb_in1k", depth=1))
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(("spec", "match"), [
    ({"base": "timm:no_such_model", "depth": 1}, "unknown architecture"),
    ({"base": "timm:convnext_demo", "base_file": "/nonexistent.pth", "depth": 1}, "does not exist"),
    ({"base": "runs/x", "base_file": "w.pth", "depth": 1}, "only applies to timm"),
    ({"base": "", "depth": 1}, "init random"),
    ({"base": "runs/x", "init": "warm", "depth": 1}, "transfer.init"),
])
def test_bad_sources_are_user_errors(spec: dict[str, object], match: str) -> None:
    with pytest.raises(UserError, match=match):
        apply_transfer(create_model("convnext_demo", num_classes=3), "convnext_demo", TransferSpec(**spec))  # type: ignore[arg-type]
