"""Sweeps and recipe files: train.augment reaches the cells, an arch entry's recipe sits between the cell defaults
and the sweep's own train / stages keys, a recipe is part of its cells' ids, and bad recipe references are one
`mkf: error:` line. Planning only (no training)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from launch.cli import main
from launch.planning.planner import plan_sweep
from launch.planning.schema import load_sweep

SWEEP: dict[str, Any] = {
    "name": "recipes",
    "seeds": [0],
    "data": {"dataset": "fashion_mnist", "split": {"kind": "random_halves", "seed": 1}},
    "archs": [{"arch": "convnext_demo", "unit_kind": "depthwise"}],
    "depths": [1],
    "variants": ["AnB", "BnB"],
}
CONVNEXT = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/recipes/convnext_in1k.yaml").read_text())


def write_sweep(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, "output_dir": str(tmp_path / "out"), **changes}))
    return path


def configs_of(path: Path, stage: str, arch: str | None = None) -> list[dict[str, Any]]:
    plan = plan_sweep(load_sweep(path))
    return [plan.configs[c.id] for c in plan.cells if c.stage == stage and (arch is None or c.arch == arch)]


def test_train_augment_reaches_every_cell(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, train={"augment": {"mixup": 0.8, "reprob": 0.25}},
                       stages={"transfer": {"augment": {"reprob": 0.0}}})
    bases, transfers = configs_of(path, "base"), configs_of(path, "transfer")
    assert bases and transfers
    assert all(c["augment"]["mixup"] == 0.8 and c["augment"]["reprob"] == 0.25 for c in bases)
    assert all(c["augment"]["mixup"] == 0.8 and c["augment"]["reprob"] == 0.0 for c in transfers)
    assert all(c["augment"]["cutmix"] == 0.0 for c in bases + transfers), "unset keys keep the cell defaults"


def test_shipped_recipe_sits_under_the_sweeps_train_and_stages(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, archs=[{"arch": "convnext_demo", "recipe": "recipes/convnext_in1k.yaml"}],
                       train={"trainer": {"max_epochs": 2}}, stages={"transfer": {"optim": {"lr": 1e-3}}})
    bases, transfers = configs_of(path, "base"), configs_of(path, "transfer")
    published = CONVNEXT["train"]
    for config in bases:
        for section in ("optim", "augment"):
            assert {k: config[section][k] for k in published[section]} == published[section], section
        assert config["model"]["ema"] == published["model"]["ema"]
        assert config["trainer"]["max_epochs"] == 2, "the sweep's train beats the recipe"
    assert all(c["optim"]["lr"] == 1e-3 and c["trainer"]["max_epochs"] == 2 for c in transfers), "stages win"
    assert all(c["optim"]["warmup_fraction"] == 0.0667 and c["augment"]["mixup"] == 0.8 for c in transfers)


def test_archs_with_different_recipes_get_their_own_templates_and_ids(tmp_path: Path) -> None:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "convnext_in1k.yaml").write_text(  # next to the sweep: wins over the shipped one
        yaml.safe_dump({"train": {"optim": {"lr": 0.123}, "augment": {"reprob": 0.5}}}))
    entries = [{"arch": "convnext_demo"}, {"arch": "convnext_demo", "recipe": "recipes/convnext_in1k.yaml"},
               {"arch": "convnext_demo", "recipe": str(Path(__file__).resolve().parents[1] /
                                                       "configs/recipes/resnet_in1k.yaml")}]
    ids, templates = [], []
    for entry in entries:
        plan = plan_sweep(load_sweep(write_sweep(tmp_path, archs=[entry])))
        ids.append({c.id for c in plan.cells})
        templates.append(set(plan.templates))
    assert not ids[0] & ids[1] and not ids[1] & ids[2] and not ids[0] & ids[2], "a recipe changes every cell's id"
    together = plan_sweep(load_sweep(write_sweep(tmp_path, archs=entries)))
    assert {c.id for c in together.cells} == ids[0] | ids[1] | ids[2], "one sweep plans each recipe's cells"
    assert len(together.templates) == sum(map(len, templates))
    lrs = {together.configs[c.id]["optim"]["lr"] for c in together.cells if c.stage == "base"}
    assert lrs == {2e-3, 0.123, 0.5}, "defaults, the sweep folder's recipe, the absolute ResNet one"
    for cell in together.cells:  # a transfer cell's bases are those of its own recipe
        config = together.configs[cell.id]
        for dep in [*cell.depends_on, *([cell.reference] if cell.reference else [])]:
            assert together.configs[dep]["optim"]["lr"] == config["optim"]["lr"]


def test_cross_arch_source_bases_train_under_the_source_archs_recipe(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, archs=[
        {"arch": "convnext_demo", "recipe": "recipes/convnext_in1k.yaml"},
        {"arch": "hornet_demo", "source_arch": "convnext_demo", "recipe": "recipes/resnet_in1k.yaml"}])
    plan = plan_sweep(load_sweep(path))
    cross = [c for c in plan.cells if c.arch == "hornet_demo" and c.depends_on]
    assert cross
    assert all(plan.configs[c.depends_on[0]]["optim"]["name"] == "adamw" for c in cross)  # convnext's recipe
    assert all(plan.configs[c.id]["optim"]["name"] == "sgd" for c in cross)  # its own


@pytest.mark.parametrize(("recipe", "body", "message"), [
    ("recipes/nope.yaml", None, "archs[0].recipe: recipe file recipes/nope.yaml not found (looked at "),
    ("mine.yaml", {"train": {"optim": {"lrr": 1}}}, "mine.yaml: unknown key train.optim.lrr; valid keys here: "),
    ("mine.yaml", {"train": {}, "data": {}}, "mine.yaml: unknown key data; valid keys here: train"),
    ("mine.yaml", {"train": {"schedule": {}}}, "mine.yaml: unknown key train.schedule; valid keys here: model"),
    ("mine.yaml", {"train": {"model": {"arch": "resnet50"}}}, "mine.yaml: train.model.arch is set by the sweep"),
])
def test_bad_recipes_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], recipe: str,
                                         body: dict[str, Any] | None, message: str) -> None:
    if body is not None:
        (tmp_path / recipe).write_text(yaml.safe_dump(body))
    path = write_sweep(tmp_path, archs=[{"arch": "convnext_demo", "recipe": recipe}])
    assert main(["sweep", "plan", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mkf: error:") and message in err and len(err.splitlines()) == 1, err
    if body is None:
        assert str(tmp_path / recipe) in err and "configs/recipes/nope.yaml" in err, "names where it looked"
    assert not (tmp_path / "out").exists(), "nothing written"


def test_source_arch_with_two_recipes_is_ambiguous(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_sweep(tmp_path, archs=[
        {"arch": "convnext_demo"}, {"arch": "convnext_demo", "recipe": "recipes/convnext_in1k.yaml"},
        {"arch": "hornet_demo", "source_arch": "convnext_demo"}])
    assert main(["sweep", "plan", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "archs[2].source_arch convnext_demo is listed with several recipes" in err and len(err.splitlines()) == 1
