"""Cross-architecture mapping: the identity case, shapes, each channel/kernel policy, determinism, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from datamodules.errors import UserError
from launch.cli import main
from pipeline.models.zoo import create_model
from pipeline.training.train import read_result, train_cell
from pipeline.transfer.apply import TransferSpec, apply_transfer
from pipeline.transfer.mapping import MappingPolicy, channel_index, map_kernel, map_tensor, pair_units
from tests.conftest import cell_config

DW1 = "stages.0.blocks.0.conv_dw"  # depthwise unit 1 of convnext_demo (16 channels, 7x7)
HORNET_DW1 = "stages.0.blocks.0.gnconv.dwconv"  # depthwise unit 1 of hornet_demo (24 channels, 7x7)


@pytest.fixture(scope="module")
def convnext_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An mkf weights file of a convnext_demo with its own seed (no training needed to test the mapping)."""
    torch.manual_seed(11)
    model = create_model("convnext_demo", num_classes=5)
    path = tmp_path_factory.mktemp("src") / "convnext.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"arch": "convnext_demo", "num_classes": "5"})
    return path


def transferred(arch: str, base: Path, **spec: object) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = create_model(arch, num_classes=5)
    apply_transfer(model, arch, TransferSpec(base=str(base), **spec))  # type: ignore[arg-type]
    return model.state_dict()


def test_identity_mapping_equals_same_arch_transfer_bitwise(convnext_file: Path) -> None:
    plain = transferred("convnext_demo", convnext_file, depth=5, unit_kind="both")
    for units in ("by_index", "by_stage", "proportional"):
        mapped = transferred("convnext_demo", convnext_file, depth=5, unit_kind="both",
                             mapping={"units": units, "channels": "subsample", "kernel": "resample", "seed": 3})
        assert plain.keys() == mapped.keys()
        assert all(torch.equal(plain[k], mapped[k]) for k in plain), units


def test_convnext_into_hornet_tiles_channels_and_records_the_table(convnext_file: Path) -> None:
    source = load_file(str(convnext_file))
    out = transferred("hornet_demo", convnext_file, depth=5, mapping={"units": "by_stage", "channels": "tile"})
    fresh = create_model("hornet_demo", num_classes=5).state_dict()
    w = out[f"{HORNET_DW1}.weight"]
    assert w.shape == fresh[f"{HORNET_DW1}.weight"].shape == (24, 1, 7, 7)
    src = source[f"{DW1}.weight"]
    assert torch.equal(w[:16], src) and torch.equal(w[16:], src[:8])  # tile: channel c <- c mod 16
    assert torch.equal(out[f"{HORNET_DW1}.bias"][16:], source[f"{DW1}.bias"][:8])


def test_subsample_is_seeded_and_deterministic(convnext_file: Path) -> None:
    def run(seed: int) -> torch.Tensor:
        return transferred("hornet_demo", convnext_file, depth=1,
                           mapping={"channels": "subsample", "seed": seed})[f"{HORNET_DW1}.weight"]

    first, again, other = run(0), run(0), run(1)
    assert torch.equal(first, again) and not torch.equal(first, other)
    source = load_file(str(convnext_file))[f"{DW1}.weight"]
    rows = [next(j for j in range(16) if torch.equal(first[i], source[j])) for i in range(24)]
    assert sorted(set(rows)) == list(range(16))  # wider target: every source channel used, 8 of them twice


def test_channel_policies() -> None:
    assert channel_index("tile", 4, 6, 0, 1, "x").tolist() == [0, 1, 2, 3, 0, 1]
    narrow = channel_index("subsample", 10, 4, 0, 1, "x")
    assert len(set(narrow.tolist())) == 4 and narrow.max() < 10
    with pytest.raises(UserError, match="channels"):
        channel_index("error", 4, 6, 0, 1, "x")


def test_kernel_policies() -> None:
    k7 = torch.randn(3, 1, 7, 7)
    assert torch.equal(map_kernel("center", k7, (5, 5), "x"), k7[..., 1:6, 1:6])
    k3 = torch.randn(3, 1, 3, 3)
    padded = map_kernel("center", k3, (7, 7), "x")
    assert torch.equal(padded[..., 2:5, 2:5], k3) and padded.abs().sum() == k3.abs().sum()
    resampled = map_kernel("resample", k7, (3, 3), "x")
    assert resampled.shape == (3, 1, 3, 3)
    assert torch.allclose(resampled.flatten(1).norm(dim=1), k7.flatten(1).norm(dim=1))  # energy kept
    assert torch.equal(resampled[:, :, 0, 0], k7[:, :, 0, 0] * (k7.flatten(1).norm(dim=1) /
                       torch.nn.functional.interpolate(k7, (3, 3), mode="bilinear", align_corners=True)
                       .flatten(1).norm(dim=1))[:, None])
    with pytest.raises(UserError, match="kernel"):
        map_tensor(MappingPolicy(kernel="error"), k7, torch.Size((3, 1, 5, 5)), 1, "x")


def test_unit_policies_follow_the_documented_example() -> None:
    """The module docstring's example: source stages (1,1,2,1) units into target stages (2,2,2,2)."""
    src_stages, dst_stages = [0, 1, 2, 2, 3], [0, 0, 1, 1, 2, 2, 3, 3]
    src, dst = list(range(5)), list(range(8))
    assert pair_units("by_stage", src, dst, src_stages, dst_stages) == [0, 0, 1, 1, 2, 3, 4, 4]
    assert pair_units("proportional", src, dst, src_stages, dst_stages) == [0, 0, 1, 1, 2, 3, 3, 4]
    assert pair_units("by_index", src, dst, src_stages, dst_stages) == list(range(8))


def test_cross_arch_without_mapping_or_with_unmappable_units_is_one_clear_error(convnext_file: Path) -> None:
    with pytest.raises(UserError, match="transfer.mapping"):
        transferred("hornet_demo", convnext_file, depth=1)
    with pytest.raises(UserError, match="different layers|share no tensors"):
        transferred("hornet_demo", convnext_file, depth=1, unit_kind="both", mapping={})
    with pytest.raises(UserError, match="mapping.units"):
        TransferSpec(base="x", mapping={"units": "by_magic"})


def test_layers_map_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["layers", "--map", "convnext_demo", "hornet_demo", "--units", "by_stage"]) == 0
    out = capsys.readouterr().out
    assert "channels tile 16->24" in out and "5 target units from 5 source units" in out


@pytest.mark.usefixtures("fashion_root")
def test_convnext_to_hornet_end_to_end(tmp_path: Path, convnext_file: Path) -> None:
    """A HorNet cell trains one tiny epoch on depthwise filters mapped from a ConvNeXt weights file, frozen."""
    run = tmp_path / "hornet_AnB2"
    train_cell(cell_config(run, model={"arch": "hornet_demo"}, data={"max_train_samples": 256},
                           transfer={"base": str(convnext_file), "depth": 2,
                                     "mapping": {"units": "by_stage", "channels": "tile", "kernel": "center"}}))
    result = read_result(run)
    assert result is not None and result["transfer"]["base_arch"] == "convnext_demo"
    assert [row["source"] for row in result["transfer"]["mapped_units"]] == [1, 2]
    trained = load_file(str(run / "weights.safetensors"))
    source = load_file(str(convnext_file))
    assert torch.equal(trained[f"{HORNET_DW1}.weight"][:16], source[f"{DW1}.weight"])  # frozen through training
