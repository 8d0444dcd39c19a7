"""Adaptive rounds on a real Slurm (slurm/testcluster): one submission, then a planner job after each round plans
and submits the next, until the curve stops."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from launch.core.plan import load_manifest
from launch.execution.rounds import run_rounds
from launch.execution.slurm.commands import JobBook
from launch.planning.adaptive import adaptive_status_lines, load_state
from pipeline.results.run_folder import read_result
from tests.test_adaptive import TINY
from tests.test_slurm import job_state, wait_for, write_profiles

pytestmark = [pytest.mark.usefixtures("slurm_cluster", "fashion_root"), pytest.mark.slow]


@pytest.mark.timeout(900)
def test_planner_job_runs_after_the_round_and_submits_the_next(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({**TINY, "output_dir": str(out),
                                     "depths": {"adaptive": {"start": [1, 5], "tolerance": 0.0, "max_rounds": 1}},
                                     "slurm": {"profiles": {"base": "test", "transfer": "test"}}}))
    profiles = write_profiles(tmp_path)
    assert run_rounds(sweep, "slurm", profiles_file=str(profiles)) == 0

    state = load_state(out)
    assert state is not None and state.planner_job
    first = state.planner_job
    book = JobBook.load(out)
    assert len(book.cells) == 4  # base-A, base-B, AnB at 1 and 5
    arrays = sorted({e["array"] for e in book.cells.values()})
    show = subprocess.run(["scontrol", "show", "job", first], capture_output=True, text=True).stdout
    assert "Dependency=afterany:" in show and all(a in show for a in arrays), show  # after every array of round 0
    assert any(line.startswith("adaptive depths: round 0 of at most 1") and first in line
               for line in adaptive_status_lines(load_manifest(out)))

    def stopped() -> bool:
        assert job_state(first) not in ("FAILED", "CANCELLED", "TIMEOUT"), _logs(out)
        current = load_state(out)
        return current is not None and all(g.status != "training" for g in current.groups.values())

    wait_for(stopped, 600, "the planner jobs to refine and stop the curve")
    state = load_state(out)
    assert state is not None
    (group,) = state.groups.values()
    assert group.depths == [1, 3, 5] and group.round == 1 and group.status == "max_rounds", (group, _logs(out))
    plan = load_manifest(out)
    assert len(plan.cells) == 5 and all(read_result(c.run_dir) for c in plan.cells), _logs(out)
    refined = next(c for c in plan.cells if c.depth == 3)
    assert refined.id in JobBook.load(out).cells  # submitted by the first planner job, not by us
    assert state.planner_job is None  # the second planner job found nothing to add and submitted no third
    assert len(list((out / "slurm" / "logs").glob("advance-*.out"))) == 2
    wait_for(lambda: not subprocess.run(["squeue", "-h", "-n", "mkf-tiny-advance"], capture_output=True,
                                        text=True).stdout.strip(), 60, "the last planner job to exit")


def _logs(out: Path) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text()[-1500:]}" for p in sorted((out / "slurm" / "logs").glob("*.out")))
