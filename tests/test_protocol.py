"""Experiments that measure what they claim (issue 22): each defect of the old protocol, on the paper's real
architectures where it lives, and the run-time checks that keep a comparison's cells trained alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import yaml
from test_bad_input import assert_user_error

import pipeline.models.zoo  # noqa: F401  (registers the demo and HorNet variants)
from datamodules.errors import UserError
from launch.cli import main
from pipeline.config import dump_yaml, to_dict
from pipeline.models.layer_plan import plan_units
from pipeline.results.run_folder import read_evidence
from pipeline.training.train import train_cell
from pipeline.transfer.apply import TransferSpec, apply_transfer
from pipeline.transfer.probe import PROBE_MARGIN, probe_units
from tests.conftest import cell_config

# ---- 1. the random-frozen control is random features, not an identity ---------------------------------------


@pytest.mark.parametrize(("arch", "kind"), [("resnet18", "block"), ("resnet50", "block"),
                                            ("convnext_tiny", "block"), ("hornet_tiny_7x7", "block")])
def test_random_frozen_blocks_of_the_papers_archs_are_no_identity(arch: str, kind: str) -> None:
    """timm builds these blocks as identities at init (zero-init last BatchNorm, 1e-6 layer scale): frozen like
    that, resnet18's blocks 2-5 returned their input bit for bit. The control's blocks must move their skip path
    by more than the probe's margin, every one of them."""
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=10)
    units = plan_units(model, kind)[:5]
    as_built = probe_units(model, units[1:], 32)
    assert all(r["trivial"] and r["change"] == pytest.approx(0.0, abs=1e-6) for r in as_built), as_built
    applied = apply_transfer(model, arch, TransferSpec(init="random", unit_kind=kind, depth=5))
    rows = probe_units(model, units, 32)
    assert applied.redrawn and not any(r["trivial"] for r in rows), rows
    assert min(r["change"] for r in rows if r["change"] is not None) > 5 * PROBE_MARGIN


def test_copied_blocks_are_left_as_trained(tmp_path: Path) -> None:
    """Only the control is redrawn: an AnB block keeps its source's branch exactly, zero-init or not."""
    from pipeline.models.weights import save_weights

    torch.manual_seed(0)
    source = timm.create_model("resnet18", num_classes=10)
    save_weights(source, tmp_path / "a.safetensors", "resnet18", 10)
    target = timm.create_model("resnet18", num_classes=10)
    applied = apply_transfer(target, "resnet18", TransferSpec(base=str(tmp_path / "a.safetensors"),
                                                              unit_kind="block", depth=3))
    assert not applied.redrawn
    assert torch.equal(target.layer1[0].bn2.weight, source.layer1[0].bn2.weight)
    assert not target.layer1[0].bn2.weight.any(), "the source's zero-init branch is what AnB transfers"


# ---- 2. a comparison trains at one global batch ----------------------------------------------------------------


def _catalog_sweep(tmp_path: Path, profiles: dict[str, str]) -> Path:
    raw = yaml.safe_load((Path(__file__).parents[1] / "configs/paper/fig4_reverse.yaml").read_text())
    raw.update(output_dir=str(tmp_path / "out"), store=None, slurm={"profiles": profiles})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_plan_refuses_stage_profiles_of_different_world_sizes(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The old profiles.yaml suggested {base: a100-2node, transfer: a100}: bases at 8 GPUs, transfers at 4."""
    path = _catalog_sweep(tmp_path, {"base": "a100-2node", "transfer": "a100"})
    assert_user_error(capsys, ["sweep", "plan", str(path)], "8 devices", "a100-2node", "4", "a100",
                      "global_batch_size", must_not_exist=tmp_path / "out")
    assert main(["sweep", "plan", str(_catalog_sweep(tmp_path, {"base": "a100-long", "transfer": "a100"}))]) == 0


@pytest.mark.usefixtures("fashion_root")
def test_a_transfer_cell_refuses_a_base_trained_at_another_global_batch(tmp_path: Path) -> None:
    base = tmp_path / "base"
    train_cell(cell_config(base, data={"batch_size": 32, "max_train_samples": 128}))
    assert read_evidence(base)["schedule"]["global_batch"] == 32
    cfg = cell_config(tmp_path / "anb", data={"batch_size": 16, "max_train_samples": 128},
                      transfer={"base": str(base), "depth": 1})
    with pytest.raises(UserError, match=r"global batch 32.*at 16"):
        train_cell(cfg)
    assert not (tmp_path / "anb").exists(), "refused before anything was written"
    same = cell_config(tmp_path / "anb2", data={"batch_size": 16, "max_train_samples": 128},
                       trainer={"global_batch_size": 32}, transfer={"base": str(base), "depth": 1})
    result = train_cell(same)  # accumulation makes up the base's batch: accepted
    assert result["steps"] == 4 and read_evidence(tmp_path / "anb2")["schedule"]["accumulate"] == 2


def test_a_resume_on_another_world_size_is_refused() -> None:
    from datamodules.loaders.samplers import ResumePosition
    from pipeline.training.resume import TrainingState

    written_by_two = TrainingState(ResumePosition(), seed=0, world_size=2)
    state = written_by_two.state_dict()
    state["ranks"] = [state["ranks"][0]] * 2
    state["world_size"] = 2
    with pytest.raises(UserError, match="written by 2 ranks but this attempt has 4"):
        TrainingState(ResumePosition(), seed=0, world_size=4).load_state_dict(state)
    TrainingState(ResumePosition(), seed=0, world_size=2).load_state_dict(state)  # same size: resumes


# ---- 3. re-initialised layers are a fresh draw per cell, unless paired is asked for -------------------------


@pytest.mark.usefixtures("fashion_root")
@pytest.mark.parametrize("reinit", ["fresh", "paired"])
def test_reinitialised_layers_are_fresh_per_cell_or_the_references(tmp_path: Path, reinit: str) -> None:
    base_b = tmp_path / "base_b"
    train_cell(cell_config(base_b))
    ref_start = read_evidence(base_b)["tensors"]["start"]
    starts = {}
    for name, transfer in {"AnB": {"base": str(base_b), "depth": 2},
                           "random": {"init": "random", "depth": 2},
                           "AnB3": {"base": str(base_b), "depth": 3}}.items():
        train_cell(cell_config(tmp_path / name, transfer={**transfer, "reinit": reinit}))
        evidence = read_evidence(tmp_path / name)
        drawn = [k for k in evidence["random_init"] if k not in evidence["transfer"]["copied"]]
        assert drawn and "head.fc.weight" in drawn
        starts[name] = {k: evidence["tensors"]["start"][k] for k in drawn}
    for name, start in starts.items():
        same = {k for k, v in start.items() if ref_start[k] == v}
        assert same == (set(start) if reinit == "paired" else set()), (name, sorted(same)[:3])
    if reinit == "fresh":  # and every cell its own draw
        assert starts["AnB"]["head.fc.weight"] != starts["AnB3"]["head.fc.weight"] != \
            starts["random"]["head.fc.weight"]


# ---- 5. evaluate reads every loader through the Trainer's hooks ---------------------------------------------


@pytest.mark.usefixtures("fashion_root")
def test_masterkey_search_runs_on_a_wds_cell(tmp_path: Path) -> None:
    """`mkf filters masterkey` on a cell trained from webdataset shards (the wds batch is a 3-tuple: a
    ValueError before evaluate went through on_before_batch_transfer)."""
    assert main(["data", "write", "--source", "fashion_mnist", "--out", str(tmp_path / "wds"), "--split",
                 "random_halves:0", "--shard-size", "2000", "--max-per-class", "60", "--no-progress"]) == 0
    run = tmp_path / "cell"
    train_cell(cell_config(run, data={"dataset": "image_folder", "loader": "wds", "shards": str(tmp_path / "wds"),
                                      "num_workers": 0, "max_train_samples": 128, "max_val_samples": 64}))
    out = tmp_path / "mk"
    assert main(["filters", "masterkey", str(run), "--candidates", "4", "--k", "2", "--budget", "1.0",
                 "--max-val-samples", "64", "--out", str(out)]) == 0
    report = json.loads((out / "masterkey.json").read_text())
    assert report["original_accuracy"] == pytest.approx(json.loads((run / "result.json").read_text())["top1"],
                                                        abs=0.2)


# ---- 6. an empty cell config is an error, not the demo cell ----------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n# nothing here\n", "{}\n", "- run_dir\n", "42\n"])
def test_empty_or_keyless_cell_config_is_one_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    """A config truncated mid-write on a network filesystem must not train convnext_demo into runs/cell."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(text)
    assert_user_error(capsys, ["train", "--config", str(config)], str(config), must_not_exist=tmp_path / "runs")


# ---- the schedule rules a comparison relies on -------------------------------------------------------------


@pytest.mark.usefixtures("fashion_root")
def test_global_batch_warmup_share_ema_rule_and_full_steps_reach_the_trainer(tmp_path: Path) -> None:
    from pipeline.schedule import ema_decay

    cfg = cell_config(tmp_path / "cell", data={"batch_size": 16, "max_train_samples": 256,
                                               "subset": {"per_class": 12, "seed": 0, "steps": "full"}},
                      trainer={"global_batch_size": 32, "max_epochs": 2},
                      optim={"warmup_steps": 0, "warmup_fraction": 0.25},
                      model={"ema": {"decay": 0.99998, "every_n_steps": 2, "adjust": "torchvision"}})
    result = train_cell(cfg)
    schedule = read_evidence(tmp_path / "cell")["schedule"]
    full = 256 // 16 // 2  # the full (capped) set's optimizer steps per epoch at global batch 32; the subset: 2
    assert result["steps"] == schedule["total_steps"] == 2 * full, "a reduced source trains the full set's steps"
    assert result["train_samples"] == 60 and result["epochs"] == 8 and schedule["accumulate"] == 2 and schedule["global_batch"] == 32
    assert schedule["warmup_steps"] == round(0.25 * 2 * full)
    assert schedule["ema_decay"] == pytest.approx(1 - (1 - 0.99998) * 32 * 2 / 2)
    assert schedule["ema_decay"] == pytest.approx(ema_decay(to_dict(cfg)["model"]["ema"], 32, 2))
    with pytest.raises(UserError, match="not a multiple of data.batch_size 16"):
        train_cell(cell_config(tmp_path / "bad", data={"batch_size": 16}, trainer={"global_batch_size": 24}))
    dump_yaml(to_dict(cfg), tmp_path / "c.yaml")
