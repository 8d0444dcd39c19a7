"""The login-node commands never import torch, Lightning or timm (each would cost seconds per call)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PROBE = """
import sys
from launch.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # --help exits
    code = exc.code
heavy = sorted(m for m in ("torch", "lightning", "timm") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
sys.exit(code)
"""


def heavy_imports(*argv: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = [x for x in proc.stdout.splitlines() if x.startswith("HEAVY=")][-1]
    return [m for m in line[len("HEAVY="):].split(",") if m]


@pytest.fixture
def planned_sweep(tmp_path: Path) -> tuple[Path, Path]:
    sweep = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    sweep["output_dir"] = str(tmp_path / "out")
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path, tmp_path / "out"


@pytest.mark.parametrize("argv", [["--help"], ["layers", "--help"], ["sweep", "--help"], ["bench", "--help"]])
def test_help_is_torch_free(argv: list[str]) -> None:
    assert heavy_imports(*argv) == []


def test_sweep_plan_status_cancel_are_torch_free(planned_sweep: tuple[Path, Path]) -> None:
    sweep, out = planned_sweep
    assert heavy_imports("sweep", "plan", str(sweep)) == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["cells"]) > 2
    # a finished cell and a preempted one: status reads their run directories, still without torch
    done, preempted = manifest["cells"][0], manifest["cells"][1]
    Path(done["run_dir"]).mkdir(parents=True)
    (Path(done["run_dir"]) / "result.json").write_text(json.dumps({"status": "finished", "top1": 0.75}))
    Path(preempted["run_dir"], "checkpoints").mkdir(parents=True)
    (Path(preempted["run_dir"]) / "checkpoints" / "preempt.ckpt").write_bytes(b"x")
    (Path(preempted["run_dir"]) / "attempts.json").write_text(
        json.dumps({"preemptions": 3, "failures": 1, "history": []}))
    assert heavy_imports("sweep", "status", str(out)) == []
    assert heavy_imports("sweep", "cancel", str(out)) == []


def test_status_shows_preemptions_and_failures_apart(planned_sweep: tuple[Path, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from launch.cli import main

    sweep, out = planned_sweep
    assert main(["sweep", "plan", str(sweep)]) == 0
    cell = json.loads((out / "manifest.json").read_text())["cells"][1]
    Path(cell["run_dir"], "checkpoints").mkdir(parents=True)
    (Path(cell["run_dir"]) / "checkpoints" / "preempt.ckpt").write_bytes(b"x")
    (Path(cell["run_dir"]) / "attempts.json").write_text(json.dumps({"preemptions": 7, "failures": 1, "history": []}))
    capsys.readouterr()
    assert main(["sweep", "status", str(out), "--only", "interrupted"]) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if cell["id"] in line)
    assert [c.strip() for c in row.split("│")][1:-1][6:9] == ["interrupted", "7", "1"], row
    assert "interrupted: 1" in text
