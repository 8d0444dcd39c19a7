"""Bad input to `mkf`: one `mkf: error:` line on stderr, exit status 2, no traceback, nothing written.

Every test drives the real CLI in-process through ``launch.cli.main`` and checks the whole contract with
:func:`assert_user_error`. All configs and outputs live under ``tmp_path``; every case fails before training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from launch.cli import main

SMALL_DATA = {"split": {"kind": "random_halves", "seed": 0}, "half": "B",
              "max_train_samples": 64, "max_val_samples": 64}
SMALL_TRAINER = {"max_epochs": 1, "progress_bar": False}


def _files(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def assert_user_error(capsys: pytest.CaptureFixture[str], argv: list[str], *expected: str,
                      must_not_exist: Path | None = None, untouched: Path | None = None) -> str:
    """Run `mkf argv` and check the bad-input contract; return the error line.

    ``expected`` are substrings the line must contain; ``must_not_exist`` is the run_dir / output_dir the
    command would have written; ``untouched`` is a folder that must hold exactly the same files afterwards.
    """
    before = _files(untouched) if untouched is not None else None
    capsys.readouterr()  # drop anything printed while setting up
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit status {code}, stderr: {err!r}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}: {err!r}"
    line = lines[0]
    assert line.startswith("mkf: error:"), line
    for word in expected:
        assert word in line, f"{word!r} missing from {line!r}"
    if must_not_exist is not None:
        assert not must_not_exist.exists(), f"{must_not_exist} was created by a failing command"
    if before is not None:
        assert _files(untouched) == before, "a failing command wrote files"
    return line


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cell(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    """A small cell config under tmp_path; ``sections`` replace or add top-level keys."""
    return {"run_dir": str(tmp_path / "run"), "seed": 0, "data": dict(SMALL_DATA),
            "model": {"arch": "convnext_demo"}, "trainer": dict(SMALL_TRAINER), **sections}


def sweep(tmp_path: Path, **keys: Any) -> dict[str, Any]:
    """A small sweep config under tmp_path; ``keys`` replace or add top-level keys."""
    return {"name": "bad", "output_dir": str(tmp_path / "sweep_out"), "seeds": [0],
            "data": {k: v for k, v in SMALL_DATA.items() if k != "half"},
            "archs": [{"arch": "convnext_demo", "unit_kind": "depthwise"}], "depths": [1],
            "variants": ["AnB"], "train": {"trainer": dict(SMALL_TRAINER)}, **keys}


def run_train(capsys: pytest.CaptureFixture[str], tmp_path: Path, config: dict[str, Any], *expected: str) -> str:
    """`mkf train` on ``config``: the contract holds and the cell's run_dir was never created."""
    path = write_yaml(tmp_path / "cell.yaml", config)
    return assert_user_error(capsys, ["train", "--config", str(path)], *expected,
                             must_not_exist=Path(config["run_dir"]), untouched=tmp_path)


def run_sweep_plan(capsys: pytest.CaptureFixture[str], tmp_path: Path, config: dict[str, Any], *expected: str) -> str:
    """`mkf sweep plan` on ``config``: the contract holds and no output_dir (manifest) was written."""
    path = write_yaml(tmp_path / "sweep.yaml", config)
    return assert_user_error(capsys, ["sweep", "plan", str(path)], *expected,
                             must_not_exist=Path(config["output_dir"]), untouched=tmp_path)


# ---- 1. unknown architecture ---------------------------------------------------------------------------------
def test_train_unknown_arch_suggests_close_match(capsys, tmp_path):
    """A typo in model.arch names the typo and suggests the real architecture."""
    run_train(capsys, tmp_path, cell(tmp_path, model={"arch": "convnxt_tiny"}),
              "convnxt_tiny", "did you mean", "convnext_tiny")


def test_layers_unknown_arch(capsys, tmp_path):
    """`mkf layers` with a name timm does not know says which name is unknown."""
    assert_user_error(capsys, ["layers", "notanarch"], "notanarch", "unknown architecture", untouched=tmp_path)


# ---- 2. depth beyond the arch's units ------------------------------------------------------------------------
def test_train_depth_larger_than_unit_count(capsys, tmp_path):
    """transfer.depth past the last depthwise unit says how many units exist and which depths are valid."""
    transfer = {"base": str(tmp_path / "base"), "unit_kind": "depthwise", "depth": 99}
    line = run_train(capsys, tmp_path, cell(tmp_path, transfer=transfer), "depth 99", "convnext_demo")
    assert "use a depth in 0.." in line


def test_sweep_plan_depth_larger_than_unit_count(capsys, tmp_path):
    """A sweep depth past the arch's units is caught at planning time, before any manifest is written."""
    run_sweep_plan(capsys, tmp_path, sweep(tmp_path, depths=[99]), "depth 99", "convnext_demo", "depthwise",
                   "fix depths")


# ---- 3. a unit kind the arch lacks ---------------------------------------------------------------------------
def test_layers_kind_the_arch_lacks(capsys, tmp_path):
    """`mkf layers resnet18 --kind depthwise` says resnet18 has none and suggests another kind."""
    assert_user_error(capsys, ["layers", "resnet18", "--kind", "depthwise"], "resnet18", "no depthwise units",
                      "--kind block", untouched=tmp_path)


def test_sweep_plan_kind_the_arch_lacks(capsys, tmp_path):
    """A sweep asking for depthwise units of a ResNet fails at planning time and suggests another unit_kind."""
    config = sweep(tmp_path, archs=[{"arch": "resnet_demo", "unit_kind": "depthwise"}])
    run_sweep_plan(capsys, tmp_path, config, "resnet_demo", "no depthwise units", "unit_kind")


# ---- 4. bad class splits -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("split", "expected"), [
    pytest.param({"kind": "explicit", "a": [0, 1, 2], "b": [2, 3]}, ("overlap", "Pullover", "disjoint"),
                 id="overlapping"),
    pytest.param({"kind": "explicit", "a": [0, 1, 2], "b": []}, ("'b' is empty", "data.split.b"), id="empty-half"),
])
def test_train_bad_class_split(capsys, tmp_path, split, expected):
    """An explicit split whose halves overlap, or with an empty half, is rejected with the offending classes."""
    run_train(capsys, tmp_path, cell(tmp_path, data={**SMALL_DATA, "split": split}), *expected)


# ---- 5. missing dataset --------------------------------------------------------------------------------------
def test_train_fashion_mnist_missing_everywhere(capsys, tmp_path, monkeypatch):
    """With no data in data.root, Debian's package or torchvision's cache, and no network, all three are named."""
    import torchvision.datasets

    import datamodules.sources.fashion_mnist as fm

    debian, cache, root = tmp_path / "debian", tmp_path / "cache", tmp_path / "empty_root"
    for d in (debian, cache, root):
        d.mkdir()

    def offline(*args: Any, **kwargs: Any) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(fm, "DEBIAN_ROOT", debian)
    monkeypatch.setattr(fm, "DOWNLOAD_ROOT", cache)
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)  # imported inside locate_fashion_mnist
    config = cell(tmp_path, data={**SMALL_DATA, "dataset": "fashion_mnist", "root": str(root)})
    run_train(capsys, tmp_path, config, "Fashion-MNIST not found", f"data.root={root}", str(debian),
              "apt-get install", f"download to {cache} failed (OSError)")


def test_train_image_folder_without_train_dir(capsys, tmp_path):
    """An image_folder root without train/ says which folder is missing and the layout it needs."""
    root = tmp_path / "images"
    root.mkdir()
    config = cell(tmp_path, data={**SMALL_DATA, "dataset": "image_folder", "root": str(root)})
    run_train(capsys, tmp_path, config, str(root / "train"), "ROOT/train and ROOT/val")


# ---- 6. malformed configs ------------------------------------------------------------------------------------
def test_train_malformed_yaml_names_file_and_line(capsys, tmp_path):
    """A YAML syntax error points at the file and the line, not at a parser traceback."""
    path = tmp_path / "broken.yaml"
    path.write_text(f"run_dir: {tmp_path / 'run'}\nmodel: {{arch: [unclosed\ntrainer: {{max_epochs: 1}}\n")
    assert_user_error(capsys, ["train", "--config", str(path)], str(path), "not valid YAML", "line 3",
                      must_not_exist=tmp_path / "run", untouched=tmp_path)


@pytest.mark.parametrize(("change", "expected"), [
    pytest.param({"modle": {"arch": "convnext_demo"}}, ("unknown key modle", "model"), id="unknown-top-level-key"),
    pytest.param({"optim": {"lrr": 0.1}}, ("unknown key optim.lrr", "lr"), id="unknown-nested-key"),
    pytest.param({"seed": "abc"}, ("seed", "'abc'", "wrong type", "int"), id="wrong-type"),
])
def test_train_config_typos(capsys, tmp_path, change, expected):
    """Typos in a cell config (unknown keys, wrong types) are named with the valid choices, never ignored."""
    run_train(capsys, tmp_path, cell(tmp_path, **change), *expected)


@pytest.mark.parametrize(("change", "expected"), [
    pytest.param({"variantz": ["AnB"]}, ("unknown key variantz", "variants"), id="unknown-sweep-key"),
    pytest.param({"variants": ["AxB"]}, ("unknown variant 'AxB'", "AnB", "BnB"), id="unknown-variant"),
])
def test_sweep_plan_config_typos(capsys, tmp_path, change, expected):
    """Typos in a sweep config are caught by `mkf sweep plan` before a manifest is written."""
    run_sweep_plan(capsys, tmp_path, sweep(tmp_path, **change), *expected)


# ---- 7. transfer base problems -------------------------------------------------------------------------------
def test_train_transfer_base_of_another_arch(capsys, tmp_path):
    """A base checkpoint of a different arch (and no mapping) names both archs and points at transfer.mapping."""
    import timm

    import pipeline.models.zoo  # noqa: F401  (registers the demo archs)
    from pipeline.models.weights import save_weights

    base = tmp_path / "base"
    base.mkdir()
    save_weights(timm.create_model("resnet_demo", num_classes=5), base / "weights.safetensors", "resnet_demo", 5)
    transfer = {"base": str(base), "unit_kind": "depthwise", "depth": 1}
    config = cell(tmp_path, model={"arch": "convnext_demo"}, transfer=transfer)
    run_train(capsys, tmp_path, config, "resnet_demo", "convnext_demo", "transfer.mapping")


def test_train_transfer_base_missing(capsys, tmp_path):
    """A transfer.base that does not exist says so and tells the user to train the base or fix the path."""
    missing = tmp_path / "no_such_base"
    transfer = {"base": str(missing), "unit_kind": "depthwise", "depth": 1}
    run_train(capsys, tmp_path, cell(tmp_path, transfer=transfer), str(missing), "do not exist", "transfer.base")


# ---- 8. config file that does not exist ----------------------------------------------------------------------
@pytest.mark.parametrize("command", [["train", "--config"], ["sweep", "plan"]], ids=["train", "sweep-plan"])
def test_config_file_missing(capsys, tmp_path, command):
    """A mistyped config path is reported as such, for cells and sweeps alike."""
    missing = tmp_path / "nope.yaml"
    assert_user_error(capsys, [*command, str(missing)], str(missing), "does not exist", "check the path",
                      untouched=tmp_path)
