"""The README's quick start runs as written: the ```bash block right under its "Quick start" heading is run by bash
(`set -e`: every command must exit 0) in an empty folder holding only `photos/<class>/*.png`, with `mkf` meaning
this checkout's CLI. The photos are scikit-learn's 8x8 digits, 20 per class, upscaled to 32 px."""

from __future__ import annotations

import csv
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO


def quick_start_block() -> str:
    """The first fenced bash block after the README's "## Quick start" heading."""
    text = (REPO / "README.md").read_text()
    match = re.search(r"^## Quick start[^\n]*\n(.*?)^```bash\n(.*?)^```$", text, re.M | re.S)
    assert match, "README.md has no ```bash block under a '## Quick start' heading"
    assert "\n## " not in match.group(1), "the quick start's command block is not in its own section"
    return match.group(2)


def write_photos(root: Path, per_class: int = 20) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in range(10):
        folder = root / f"digit{label}"
        folder.mkdir(parents=True)
        for i in np.flatnonzero(digits.target == label)[:per_class]:
            pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)
            Image.fromarray(pixels).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR).save(folder / f"{i}.png")


def mkf_on_path(bin_dir: Path) -> dict[str, str]:
    """An environment whose `mkf` is this checkout's CLI (`python -m launch.cli`), whatever is installed."""
    bin_dir.mkdir()
    script = bin_dir / "mkf"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m launch.cli "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "WANDB_MODE": "disabled"}
    return env


def test_the_quick_start_block_is_marked_and_short() -> None:
    block = quick_start_block()
    commands = [line for line in block.splitlines() if line.startswith("mkf ")]
    assert [c.split()[:3] for c in commands] == [["mkf", "data", "write"], ["mkf", "sweep", "plan"],
                                                  ["mkf", "sweep", "run"], ["mkf", "sweep", "report"]]
    assert len(block.splitlines()) <= 16


@pytest.mark.slow
def test_the_readme_quick_start_runs_as_written(tmp_path: Path) -> None:
    block = quick_start_block()
    work = tmp_path / "work"
    write_photos(work / "photos")
    env = mkf_on_path(tmp_path / "bin")
    proc = subprocess.run(["bash", "-e", "-x", "-c", block], cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # the plan's comment says how many cells; the manifest and the report agree
    claimed = int(re.search(r"mkf sweep plan .*# (\d+) cells", block).group(1))
    out = work / "results" / "mine"
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["cells"]) == claimed
    for name in ("results.csv", "summary.csv", "summary.md", "figure.png"):
        assert (out / name).is_file(), f"the quick start promised {name}"
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == claimed
    assert {r["variant"] for r in rows} >= {"AnB", "BnB", "random-frozen"}
    index = json.loads((work / "shards" / "index.json").read_text())
    assert index["format"] == "wds" and len(index["classes"]) == 10


def test_the_readme_sweep_and_profile_examples_parse(tmp_path: Path) -> None:
    """The README's sweep-format example is a valid sweep, its worked profiles file loads, and its `sed` that
    moves data_root edits every paper config."""
    import yaml

    from configs import config_path
    from launch.planning.planner import plan_sweep
    from launch.planning.profiles import load_profiles
    from launch.planning.schema import parse_sweep
    from tests.test_docs_figures import fenced_blocks, section

    text = (REPO / "README.md").read_text()
    sweep = next(b for info, b in fenced_blocks(section(text, "The sweep format")) if info == "yaml")
    assert plan_sweep(parse_sweep(yaml.safe_load(sweep))).cells
    cluster = section(text, "On your cluster")
    profiles_yaml = next(b for info, b in fenced_blocks(cluster) if info == "yaml")
    (tmp_path / "my-profiles.yaml").write_text(profiles_yaml)
    profiles = load_profiles(tmp_path / "my-profiles.yaml")
    assert profiles["default"].partition and profiles["default"].account and profiles["default"].gpus_per_node
    sed = re.search(r"sed -i 's\|(.+?)\|(.+?)\|' configs/paper/\*\.yaml", cluster)
    assert sed, "the README's data_root sed moved; update this test"
    pattern, replacement = sed.groups()  # ^data_root: /data , data_root: /scratch/...
    assert pattern.startswith("^data_root: ") and replacement.startswith("data_root: ")
    for path in sorted(config_path("paper").glob("*.yaml")):
        edited = re.sub("^" + re.escape(pattern[1:]), replacement, path.read_text(), flags=re.M)
        assert yaml.safe_load(edited)["data_root"] == replacement.removeprefix("data_root: ").strip(), path.name
