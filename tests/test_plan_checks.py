"""Plan-time checks (launch/planning/checks.py): every value and path of a sweep that can be checked without
training fails `mkf sweep plan` and `mkf sweep run` with one `mkf: error:` line, exit status 2 and nothing written;
a cell that still meets bad input at train time logs one line, no traceback, and is not charged an attempt; a
local shard set is sized by its index.json when configs/costs.yaml does not list it.

The shards are tiny real webdataset sets written by `mkf data write` from scikit-learn's digits (6 images a class).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_bad_input import assert_user_error, write_yaml

from launch.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two digit shard sets: written per half of random_halves:0 (sets A, B), and whole (set all)."""
    root = tmp_path_factory.mktemp("plan-checks-shards")
    out = {"halves": root / "digits-rh", "all": root / "digits-all"}
    for name, split in (("halves", ["--split", "random_halves:0"]), ("all", [])):
        assert main(["data", "write", "--source", "sklearn_digits", "--format", "wds", "--out", str(out[name]),
                     "--max-per-class", "6", "--shard-size", "500", "--workers", "1", "--no-progress", *split]) == 0
    return out


def sweep(tmp_path: Path, shards_dir: Path | str, data: dict[str, Any] | None = None, **keys: Any) -> dict[str, Any]:
    """A newcomer's sweep over their own shards (image_folder read as wds), halves A -> B."""
    shared = {"dataset": "image_folder", "loader": "wds", "shards": str(shards_dir),
              "split": {"kind": "random_halves", "seed": 0}, "image_size": 16, "batch_size": 8, "num_workers": 0,
              **(data or {})}
    return {"name": "mine", "output_dir": str(tmp_path / "out"), "seeds": [0], "data": shared,
            "datasets": {"A": {"half": "A"}, "B": {"half": "B"}}, "transfers": [{"source": "A", "target": "B"}],
            "archs": [{"arch": "convnext_demo", "unit_kind": "depthwise"}], "depths": [1], "variants": ["AnB"],
            "train": {"trainer": {"max_epochs": 1, "progress_bar": False}}, **keys}


def deep(config: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    """``config`` with ``sections`` merged into its top-level mappings (train: {optim: ...} and the like)."""
    out = json.loads(json.dumps(config))
    for key, value in sections.items():
        for sub, inner in value.items():
            out[key].setdefault(sub, {})
            out[key][sub] = {**out[key][sub], **inner} if isinstance(inner, dict) else inner
    return out


def _missing(tmp_path: Path, s: dict[str, Path]) -> dict[str, Any]:
    return sweep(tmp_path, tmp_path / "no-such-shards")


def _no_index(tmp_path: Path, s: dict[str, Path]) -> dict[str, Any]:
    (tmp_path / "empty-shards").mkdir()
    return sweep(tmp_path, tmp_path / "empty-shards")


def _foreign_index(tmp_path: Path, s: dict[str, Path]) -> dict[str, Any]:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "index.json").write_text(json.dumps({"shards": ["a.tar"]}))
    return sweep(tmp_path, tmp_path / "other")


BAD_INPUTS = {
    # name: (sweep builder, words the line must hold)
    "missing-shards": (_missing, ("datasets.A.shards", "no-such-shards", "does not exist", "mkf data write")),
    "shards-without-index": (_no_index, ("datasets.A.shards", "holds no index.json", "mkf data write")),
    "index-of-another-tool": (_foreign_index, ("datasets.A.shards", "is not an index", "rewrite")),
    "ffcv-loader-over-wds": (lambda t, s: sweep(t, s["all"], {"loader": "ffcv"}), ("holds wds data", "loader: wds")),
    "negative-batch": (lambda t, s: sweep(t, s["halves"], {"batch_size": -4}), ("data.batch_size", "-4", ">= 1")),
    "zero-image-size": (lambda t, s: sweep(t, s["halves"], {"image_size": 0}), ("data.image_size", "0 px")),
    "negative-workers": (lambda t, s: sweep(t, s["halves"], {"num_workers": -1}), ("data.num_workers", "-1")),
    "zero-epochs": (lambda t, s: deep(sweep(t, s["halves"]), train={"trainer": {"max_epochs": 0}}),
                    ("trainer.max_epochs", "0 epochs trains nothing")),
    "negative-lr": (lambda t, s: deep(sweep(t, s["halves"]), train={"optim": {"lr": -0.1}}),
                    ("optim.lr", "-0.1", "positive")),
    "half-not-a-half": (lambda t, s: deep(sweep(t, s["halves"]), datasets={"B": {"half": "C"}}),
                        ("datasets.B.half", "'C'", "use A or B")),
    "split-the-shards-were-not-written-for": (
        lambda t, s: sweep(t, s["halves"], {"split": {"kind": "random_halves", "seed": 3}}),
        ("datasets.A.split", "written for split random_halves", "seed 0")),
    "per-half-shards-without-split": (lambda t, s: sweep(t, s["halves"], {"split": None}),
                                      ("datasets.A.split", "written per half", "no split")),
    "explicit-split-of-unknown-classes": (
        lambda t, s: sweep(t, s["all"], {"split": {"kind": "explicit", "a": ["0", "1"], "b": ["cat"]}}),
        ("datasets.A.split", "cat")),
    "split-needing-imagenet": (lambda t, s: sweep(t, s["all"], {"split": {"kind": "imagenet_manmade_natural"}}),
                               ("datasets.A.split", "1000 ILSVRC-2012 classes")),
    "shards-without-a-shard-loader": (lambda t, s: sweep(t, s["all"], {"loader": "default"}),
                                      ("datasets.A.loader", "does not read data.shards", "loader: wds")),
    "zero-subset-fraction": (lambda t, s: sweep(t, s["halves"], {"subset": {"fraction": 0.0}}),
                             ("data.subset.fraction", "outside (0, 1]")),
    "fashion-mnist-split-of-unknown-classes": (
        lambda t, s: sweep(t, s["all"], {"dataset": "fashion_mnist", "loader": "default", "shards": None,
                                         "image_size": 28, "split": {"kind": "explicit", "a": ["Trouser"],
                                                                     "b": ["Sandals"]}}),
        ("datasets.A.split", "Sandals")),
    "image-folder-root-without-train": (
        lambda t, s: sweep(t, s["all"], {"loader": "default", "shards": None, "root": str(t)}),
        ("datasets.A.root", "train is not a folder", "ROOT/train")),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_plan_refuses_bad_input_in_one_line_writing_nothing(case: str, shards: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    build, words = BAD_INPUTS[case]
    path = write_yaml(tmp_path / "sweep.yaml", build(tmp_path, shards))
    assert_user_error(capsys, ["sweep", "plan", str(path)], *words, must_not_exist=tmp_path / "out",
                      untouched=tmp_path)


@pytest.mark.parametrize("case", ["missing-shards", "negative-batch", "zero-epochs", "negative-lr",
                                  "split-the-shards-were-not-written-for", "half-not-a-half"])
@pytest.mark.parametrize("dry", [True, False], ids=["dry-run", "run"])
def test_run_refuses_bad_input_before_anything_is_written(case: str, dry: bool, shards: dict[str, Path],
                                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build, words = BAD_INPUTS[case]
    path = write_yaml(tmp_path / "sweep.yaml", build(tmp_path, shards))
    argv = ["sweep", "run", str(path), "--no-progress", *(["--dry-run"] if dry else [])]
    assert_user_error(capsys, argv, *words, must_not_exist=tmp_path / "out", untouched=tmp_path)


def test_slurm_run_refuses_an_unknown_profile(shards: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`--profile` and the sweep's slurm.profiles name profiles of the file a Slurm run submits with; a dry run
    says so before any script is made. `plan` has no --profiles: it warns about the shipped file, and plans."""
    path = write_yaml(tmp_path / "sweep.yaml", sweep(tmp_path, shards["halves"]))
    assert_user_error(capsys, ["sweep", "run", str(path), "--executor", "slurm", "--profile", "nope", "--dry-run"],
                      "--profile", "'nope'", "add it", must_not_exist=tmp_path / "out", untouched=tmp_path)
    named = sweep(tmp_path, shards["halves"], slurm={"profiles": {"base": "mine", "transfer": "mine"}})
    write_yaml(path, named)
    assert_user_error(capsys, ["sweep", "run", str(path), "--executor", "slurm", "--dry-run"],
                      "slurm.profiles.base", "'mine'", "profiles.yaml", must_not_exist=tmp_path / "out")
    profiles = write_yaml(tmp_path / "profiles.yaml", {"mine": {"partition": "gpu", "time": "00:10:00"}})
    assert main(["sweep", "run", str(path), "--executor", "slurm", "--profiles", str(profiles), "--dry-run"]) == 0
    assert not (tmp_path / "out").exists()
    capsys.readouterr()
    assert main(["sweep", "plan", str(path)]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: slurm.profiles.base: profile 'mine'") == 1 and "--profiles FILE" in err, err


def test_a_missing_data_root_warns_at_plan_and_fails_the_run(shards: dict[str, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The paper's configs name `data_root: /data`: planning them away from the data (for the cost) works, with
    one warning line; running them there is one error line naming data_root."""
    config = sweep(tmp_path, "digits-rh", data_root=str(tmp_path / "not-mounted"))
    path = write_yaml(tmp_path / "sweep.yaml", config)
    capsys.readouterr()
    assert main(["sweep", "plan", str(path)]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: data_root") == 1 and "not-mounted" in err, err
    assert (tmp_path / "out" / "manifest.json").is_file()
    (tmp_path / "out" / "manifest.json").unlink()
    (tmp_path / "out").rmdir()
    assert_user_error(capsys, ["sweep", "run", str(path), "--no-progress"], "data_root", "not-mounted",
                      "does not exist", must_not_exist=tmp_path / "out")
    config["data_root"] = str(shards["halves"].parent)  # the root that holds digits-rh: plans without a word
    write_yaml(path, config)
    capsys.readouterr()
    assert main(["sweep", "plan", str(path)]) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_shard_set_is_sized_by_its_index(shards: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Shards configs/costs.yaml does not list: plan prints a cost from their index.json (each half its own set),
    and a dataset sized nowhere gets the message that names both fixes."""
    from launch.planning.cost import Estimate
    from pipeline.results.costs import index_entry

    path = write_yaml(tmp_path / "sweep.yaml", sweep(tmp_path, shards["halves"]))
    capsys.readouterr()
    assert main(["sweep", "plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "cost unknown" not in out and "not in configs/costs.yaml" not in out, out
    index = json.loads((shards["halves"] / "index.json").read_text())
    name, entry = index_entry({"shards": str(shards["halves"]), "split": {"kind": "random_halves"}, "half": "A"})
    assert entry["per_set"] and entry["train_images"] == index["sets"]["A"]["train"]["samples"]
    _, whole = index_entry({"shards": str(shards["all"]), "split": {"kind": "random_halves"}, "half": "A"})
    assert not whole["per_set"] and whole["classes"] == 10
    assert index_entry({"shards": str(tmp_path / "nowhere")}) is None
    est = Estimate("a100")
    est.unknown["dataset '/x'"] = 3
    assert ("  cost unknown for 3 cells: dataset '/x' not in configs/costs.yaml and no index.json at data.shards; "
            "add it or write the shards") in est.lines()


def test_a_cell_with_bad_input_logs_one_line_and_is_not_charged(tmp_path: Path) -> None:
    """A bundle worker meets a UserError in a cell (here a config written past the plan's checks): the cell's
    log holds one `mkf: error:` line and no traceback, attempts.json charges no failure, and the cell is marked
    failed (it would fail the same way every time)."""
    run_dir = tmp_path / "cell"
    config = {"run_dir": str(run_dir), "seed": 0, "model": {"arch": "convnext_demo"},
              "data": {"dataset": "fashion_mnist", "split": {"kind": "random_halves", "seed": 0}, "half": "B",
                       "batch_size": -4, "max_train_samples": 64, "max_val_samples": 64},
              "trainer": {"max_epochs": 1, "progress_bar": False}}
    path = tmp_path / "cell.yaml"
    path.write_text(yaml.safe_dump(config))
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "launch.worker.bundle", "--log-dir", str(logs), str(path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    log = (logs / "cell.log").read_text()
    lines = [line for line in log.splitlines() if line.strip()]
    assert "Traceback" not in log and "Traceback" not in proc.stderr, log
    assert [line for line in lines if line.startswith("mkf: error:")] == lines[-1:], log
    assert "data.batch_size" in lines[-1] and "-4" in lines[-1]
    attempts = json.loads((run_dir / "attempts.json").read_text())
    assert attempts["failures"] == 0, attempts
    assert attempts["history"][-1]["outcome"] == "bad_input"
    assert json.loads((run_dir / "failed.json").read_text())["bad_input"] is True


@pytest.mark.parametrize("case", ["missing-shards", "negative-batch"])
def test_calibrate_refuses_bad_input_before_any_manifest(case: str, shards: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`mkf sweep calibrate` plans its short and full sweeps through the same checks: one line, exit 2, and no
    manifest (it still writes its two derived sweep files, OUTPUT/calibration/{short,full}.yaml)."""
    build, words = BAD_INPUTS[case]
    config = deep(build(tmp_path, shards), train={"trainer": {"max_epochs": 2}})
    config.update(budget={"epochs": 1}, calibration={"seeds": [0]})
    path = write_yaml(tmp_path / "sweep.yaml", config)
    assert_user_error(capsys, ["sweep", "calibrate", str(path)], *words)
    assert not list((tmp_path / "out").rglob("manifest.json"))


def test_a_local_dry_run_of_a_good_sweep_trains_and_writes_nothing(shards: dict[str, Path], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`sweep run --dry-run` passes the checks, prints the plan and stops: the local executor has no scripts to
    print, and used to train every cell (without a manifest)."""
    path = write_yaml(tmp_path / "sweep.yaml", sweep(tmp_path, shards["halves"]))
    capsys.readouterr()
    assert main(["sweep", "run", str(path), "--dry-run", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "3 to run" in out and "dry run: nothing trained or written" in out, out
    assert not (tmp_path / "out").exists()
