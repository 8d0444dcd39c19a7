"""The transfer protocol itself: what is copied, what is frozen, what trains (Yosinski's AnB / AnB+ / reverse)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from pipeline.config import CellConfig, ModelConfig, OptimConfig
from pipeline.models.layer_plan import plan_units, unit_param_names
from pipeline.models.zoo import create_model
from pipeline.training.classifier import ImageClassifier
from pipeline.training.train import build_datamodule_for, init_seed, read_result, train_cell
from pipeline.transfer.apply import TransferSpec
from tests.conftest import cell_config

# Base A trains with another seed than the transfer cells (seed 0): a unit equal to A's was copied, not merely
# initialised alike, and "trained" is checked against the cell's own starting weights, not against A.
BASE_SEED = 1

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
    train_cell(cell_config(run, seed=BASE_SEED, data={"half": "A"}))
    return run


@pytest.fixture(scope="module")
def resnet_base_a(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("base") / "resnet_A"
    train_cell(cell_config(run, seed=BASE_SEED, data={"half": "A"}, model={"arch": "resnet_demo"}))
    return run


def transfer_config(tmp_path: Path, base: Path | str, name: str, **transfer: object) -> CellConfig:
    return cell_config(tmp_path / name, transfer={"base": str(base), "unit_kind": "depthwise", **transfer})


def transfer_cell(tmp_path: Path, base: Path | str, name: str, **transfer: object) -> Path:
    cfg = transfer_config(tmp_path, base, name, **transfer)
    train_cell(cfg)
    return Path(cfg.run_dir)


def initial_weights(cfg: CellConfig) -> dict[str, torch.Tensor]:
    """The cell's weights before its first step, built exactly as train_cell builds them (same seed, same order)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule_for(cfg)
    spec = TransferSpec(**{k: getattr(cfg.transfer, k) for k in cfg.transfer.__dataclass_fields__}) \
        if cfg.transfer else None
    module = ImageClassifier(cfg.model, cfg.optim, num_classes=datamodule.num_classes, transfer=spec,
                             init_seed=init_seed(cfg))
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def model_params(arch: str = "convnext_demo") -> set[str]:
    return {n for n, _ in create_model(arch, num_classes=5).named_parameters()}


def kernels(keys: set[str] | list[str]) -> set[str]:
    """What transfer.freeze: kernel (the default) fixes in a depthwise/pointwise/both unit: the weight tensors."""
    return {k for k in keys if k.endswith(".weight")}


def test_frozen_units_stay_identical_to_a_and_everything_else_trains(tmp_path: Path, base_a: Path) -> None:
    """AnB (freeze: kernel): units 1..n's kernels are A's bit for bit after training on B; their biases start as
    A's and train; every other parameter moved from its start."""
    cfg = transfer_config(tmp_path, base_a, "AnB3", depth=3, mode="frozen")
    start = initial_weights(cfg)
    train_cell(cfg)
    a, b = weights(base_a), weights(Path(cfg.run_dir))
    units = unit_keys("convnext_demo", "depthwise")
    copied = {k for unit in units[:3] for k in unit}
    frozen = kernels(copied)
    assert len(frozen) == 3 and len(copied) == 6, "the first 3 depthwise units must own a kernel and a bias each"
    L.seed_everything(cfg.seed, verbose=False)
    own_init = create_model("convnext_demo", num_classes=5).state_dict()
    for key in frozen:
        assert torch.equal(a[key], b[key]), f"frozen {key} changed"
        assert not torch.equal(a[key], own_init[key]), f"{key}: A's unit equals the cell's own init"
    for key in copied - frozen:
        assert torch.equal(start[key], a[key]), f"{key} was not copied from A"
        assert not torch.equal(a[key], b[key]), f"{key}: the bias of a kernel-frozen unit must train"
    for key in model_params() - copied:
        assert not torch.equal(start[key], b[key]), f"{key} did not train on B"
        assert not torch.equal(a[key], b[key]), f"{key} equals A's: it was copied but should not have been"
    result = read_result(cfg.run_dir)
    assert result is not None
    assert result["transfer"]["freeze"] == "kernel" and result["transfer"]["frozen_tensors"] == 3


def test_reverse_freezes_from_the_end(tmp_path: Path, base_a: Path) -> None:
    """reverse: units n..L come from A and stay frozen; the units before n start fresh and train."""
    cfg = transfer_config(tmp_path, base_a, "rev4", depth=4, direction="last")
    start = initial_weights(cfg)
    train_cell(cfg)
    a, b = weights(base_a), weights(Path(cfg.run_dir))
    units = unit_keys("convnext_demo", "depthwise")
    assert all(torch.equal(a[k], b[k]) for unit in units[3:] for k in kernels(unit))
    for key in (k for unit in units[:3] for k in unit):
        assert not torch.equal(start[key], a[key]), f"{key} was copied from A but lies before the reversed units"
        assert not torch.equal(start[key], b[key]), f"{key} did not train"


def test_finetuned_units_start_as_a_and_move(tmp_path: Path, base_a: Path) -> None:
    """AnB+: the transferred units start from A's weights (not the cell's own init) and are trained further."""
    cfg = transfer_config(tmp_path, base_a, "AnB3plus", depth=3, mode="finetune")
    start = initial_weights(cfg)
    train_cell(cfg)
    a, b = weights(base_a), weights(Path(cfg.run_dir))
    for unit in unit_keys("convnext_demo", "depthwise")[:3]:
        for key in unit:
            assert torch.equal(start[key], a[key]), f"{key} did not start from A"
            assert not torch.equal(a[key], b[key]), f"{key} should have been fine-tuned"


@pytest.mark.parametrize("reinit", ["fresh", "paired"])
def test_random_frozen_control_keeps_the_cells_own_init(tmp_path: Path, reinit: str) -> None:
    """init random: no base at all; the chosen units keep the cell's init, frozen; the rest trains. Under
    reinit paired that init is the base's (the seed's scratch init); under fresh (the default) a draw of its own."""
    cfg = cell_config(tmp_path / "rnd3", transfer={"init": "random", "unit_kind": "both", "depth": 3,
                                                   "reinit": reinit},
                      data={"subset": {"per_class": 60, "seed": 3, "steps": "epochs"}})
    start = initial_weights(cfg)
    L.seed_everything(cfg.seed, verbose=False)
    scratch_init = create_model("convnext_demo", num_classes=5).state_dict()
    train_cell(cfg)
    b = weights(Path(cfg.run_dir))
    units = unit_keys("convnext_demo", "both")
    frozen = kernels({k for unit in units[:3] for k in unit})
    assert {"stages.0.blocks.0.conv_dw.weight", "stages.0.blocks.0.mlp.fc2.weight"} <= frozen
    for key in frozen:
        assert torch.equal(b[key], start[key]), key
        assert torch.equal(b[key], scratch_init[key]) == (reinit == "paired"), key
    for key in model_params() - frozen:
        assert not torch.equal(b[key], start[key]), f"{key} did not train"
    result = read_result(cfg.run_dir)
    assert result is not None
    assert result["transfer"]["init"] == "random" and result["transfer"]["units"] == [1, 2, 3]
    assert result["subset"] == {"per_class": 60, "fraction": None, "seed": 3, "steps": "epochs"}
    assert result["train_samples"] == 300


def test_shuffle_permutes_a_filters_across_channels(base_a: Path) -> None:
    """init shuffle: the same filter bank as A, each (kernel, bias) pair intact, moved to other channels, seeded."""
    def shuffled(seed: int) -> dict[str, torch.Tensor]:
        model = create_model("convnext_demo", num_classes=5)
        apply_transfer(model, "convnext_demo", TransferSpec(base=str(base_a), depth=2, init="shuffle", seed=seed))
        return model.state_dict()

    from pipeline.transfer.apply import apply_transfer

    a = weights(base_a)
    first, again, other = shuffled(0), shuffled(0), shuffled(1)
    w, bias = "stages.1.blocks.0.conv_dw.weight", "stages.1.blocks.0.conv_dw.bias"
    assert not torch.equal(first[w], a[w])
    # every target channel holds some source channel's (kernel, bias), and each source channel is used once
    source_of = [next(j for j in range(a[w].shape[0]) if torch.equal(first[w][i], a[w][j])) for i in range(32)]
    assert sorted(source_of) == list(range(32))
    assert all(torch.equal(first[bias][i], a[bias][j]) for i, j in enumerate(source_of))
    assert torch.equal(first[w], again[w]) and not torch.equal(first[w], other[w])
    assert not torch.equal(first["stages.2.blocks.0.conv_dw.weight"], a["stages.2.blocks.0.conv_dw.weight"])


def test_depth_zero_equals_training_from_scratch(tmp_path: Path, base_a: Path) -> None:
    """n = 0 copies nothing and consumes no randomness: with paired re-initialisation the result is the scratch run
    with the same seed (the training stream and data order are the seed's for every variant)."""
    zero = transfer_cell(tmp_path, base_a, "AnB0", depth=0, reinit="paired")
    assert not torch.equal(weights(zero)["stem.0.weight"], weights(base_a)["stem.0.weight"])
    scratch = tmp_path / "scratch"
    train_cell(cell_config(scratch))
    w0, ws = weights(zero), weights(scratch)
    assert w0.keys() == ws.keys()
    for key in w0:
        assert torch.equal(w0[key], ws[key]), key


def test_frozen_block_units_keep_batchnorm_statistics(tmp_path: Path, resnet_base_a: Path) -> None:
    """Frozen BatchNorm stays in eval mode: running statistics of frozen blocks remain A's exactly."""
    run = tmp_path / "resnet_AnB2"
    cfg = cell_config(run, model={"arch": "resnet_demo"},
                      transfer={"base": str(resnet_base_a), "unit_kind": "block", "depth": 2})
    start = initial_weights(cfg)
    train_cell(cfg)
    a, b = weights(resnet_base_a), weights(run)
    model = create_model("resnet_demo", num_classes=5)
    units = plan_units(model, "block")
    frozen_keys = [k for u in units[:2] for k in unit_param_names(model, u)]
    stats = [k for k in frozen_keys if k.endswith(("running_mean", "running_var"))]
    assert stats, "frozen resnet blocks must contain BatchNorm statistics"
    for key in frozen_keys:
        assert torch.equal(a[key], b[key]), key
    later = [k for u in units[2:] for k in unit_param_names(model, u) if k.endswith("running_mean")]
    assert all(not torch.equal(start[k], b[k]) for k in later), "unfrozen BN statistics should adapt to B"


def test_optimizer_holds_no_frozen_parameter(base_a: Path) -> None:
    """Frozen parameters must not even reach the optimizer (no weight decay or momentum on them)."""
    module = ImageClassifier(ModelConfig(arch="convnext_demo"), OptimConfig(), num_classes=5,
                             transfer=TransferSpec(base=str(base_a), depth=5))
    optimizer, _ = module.configure_optimizers_plain(10)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    frozen = [p for p in module.model.parameters() if not p.requires_grad]
    assert len(frozen) == 5  # 5 depthwise kernels (freeze: kernel); their biases train
    assert not in_optimizer & {id(p) for p in frozen}
    assert in_optimizer == {id(p) for p in module.model.parameters() if p.requires_grad}
    assert module.frozen_parameters() == sum(p.numel() for p in frozen)
