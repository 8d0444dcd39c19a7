"""A sweep's ``prepare:`` through `mkf sweep run` on this machine: the role's shards are written first (the real
writer, from Fashion-MNIST's raw files), its cells train on them, a second run skips the complete write, and a
missing raw dataset is one error line before anything is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from launch.cli import main
from launch.planning.prepare import MARKER
from launch.planning.schema import load_sweep
from pipeline.results.run_folder import read_result

pytestmark = pytest.mark.usefixtures("fashion_root")


def _sweep(tmp_path: Path, source: str) -> Path:
    shards = tmp_path / "shards-b"
    body: dict[str, Any] = {
        "name": "prep", "output_dir": str(tmp_path / "out"), "seeds": [0],
        "data": {"batch_size": 32, "max_train_samples": 128, "max_val_samples": 64},
        "datasets": {"A": {"dataset": "fashion_mnist", "split": {"kind": "random_halves", "seed": 0}, "half": "A"},
                     "B": {"dataset": "image_folder", "loader": "wds", "shards": str(shards),
                           "prepare": {"source": source, "format": "wds", "shard_size": 50, "max_per_class": 12}}},
        "transfers": [{"source": "A", "target": "B"}],
        "archs": [{"arch": "convnext_demo", "unit_kind": "depthwise"}], "depths": [1], "variants": ["AnB"],
        "train": {"trainer": {"max_epochs": 1, "progress_bar": False, "accelerator": "cpu"}},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.mark.slow
def test_prepare_runs_first_then_is_skipped(tmp_path: Path, fashion_root: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    sweep = _sweep(tmp_path, f"fashion_mnist:{fashion_root}")
    config = load_sweep(sweep)
    assert "prepare" not in config.dataset_sections()["B"]  # cells never see it
    assert set(config.prepare_specs()) == {"B"}
    assert main(["sweep", "run", str(sweep), "--slots", "1", "--no-progress", "--no-bundle"]) == 0
    out = capsys.readouterr().out
    shards = tmp_path / "shards-b"
    assert (shards / MARKER).is_file() and "writing fashion_mnist:" in out
    marker_time = (shards / MARKER).stat().st_mtime_ns
    results = [read_result(p.parent) for p in (tmp_path / "out" / "cells").glob("*/result.json")]
    assert len(results) == 3 and all(r and r["status"] == "finished" for r in results)
    base_b = next(r for r in results if (r.get("labels") or {}).get("variant") == "base-B")
    assert base_b["loader"] == "wds" and str(shards) in str(base_b["shards"])  # trained on what the write produced
    assert main(["sweep", "run", str(sweep), "--slots", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "prepared already; skipped" in out and "3 already finished" in out
    assert (shards / MARKER).stat().st_mtime_ns == marker_time


def test_a_missing_raw_dataset_is_one_line_before_anything_is_written(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    sweep = _sweep(tmp_path, f"fashion_mnist:{tmp_path / 'nowhere'}")
    assert main(["sweep", "run", str(sweep), "--slots", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "datasets.B" in err[0] and "nowhere" in err[0], err
    assert not (tmp_path / "out").exists() and not (tmp_path / "shards-b").exists()


def test_an_unknown_prepare_key_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = _sweep(tmp_path, "fashion_mnist:/raw")
    body = yaml.safe_load(sweep.read_text())
    body["datasets"]["B"]["prepare"]["shardsize"] = 3
    sweep.write_text(yaml.safe_dump(body))
    assert main(["sweep", "plan", str(sweep)]) == 2
    err = capsys.readouterr().err
    assert "shardsize" in err and "datasets.B" in err, err
