"""Per-task Slurm dependencies: each transfer array waits (afterok) for exactly the base tasks its cells need.

The fast tests put a fake ``sbatch`` (and ``scontrol``) on PATH that record their arguments, so the grouping is
checked without a cluster. The slow one makes one base of a real sweep fail on the test cluster: only the
transfer cells that need that base are cancelled; the others run and finish.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from launch.cli import main
from launch.core.plan import Cell, SweepPlan, materialize_configs, write_plan
from launch.execution.slurm.commands import ClusterLimits, JobBook
from launch.execution.slurm.executor import SlurmExecutor
from launch.planning.planner import plan_sweep
from launch.planning.schema import load_sweep
from pipeline.results.run_folder import read_result
from tests.test_slurm import cell_job, job_state, submit, wait_for, write_profiles, write_sweep

FAKE_SBATCH = """#!{python}
import json, os, sys
log = os.environ["FAKE_SLURM_LOG"]
with open(log, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
n = sum(1 for _ in open(log))
print(f"{{1000 + n}}")
"""
FAKE_SCONTROL = """#!{python}
import os, sys
if sys.argv[1:3] == ["show", "job"]:
    print(open(os.environ["FAKE_SLURM_QUEUE"]).read(), end="")
"""


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A bin folder first on PATH whose sbatch logs its argv (one JSON line per call) and prints a job id, and
    whose scontrol prints the queue written to FAKE_SLURM_QUEUE. Returns the log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("sbatch", FAKE_SBATCH), ("scontrol", FAKE_SCONTROL)):
        path = bin_dir / name
        path.write_text(body.format(python=sys.executable))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    log, queue = tmp_path / "sbatch.log", tmp_path / "queue.txt"
    queue.write_text("")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_LOG", str(log))
    monkeypatch.setenv("FAKE_SLURM_QUEUE", str(queue))
    return log


def _two_seed_sweep(tmp_path: Path) -> Path:
    """Both directions (A->B, B->A), 2 seeds: per seed, cells that wait for {A, B} (AnB), {B} (BnB of A->B,
    random-frozen's reference) and {A} (the same for B->A): 3 dependency sets per seed."""
    halves = {half: {"dataset": "fashion_mnist", "half": half} for half in ("A", "B")}
    return write_sweep(tmp_path, seeds=[0, 1], variants=["AnB", "BnB", "random-frozen"], datasets=halves,
                       transfers=[{"source": "A", "target": "B"}, {"source": "B", "target": "A"}])


def _calls(log: Path) -> list[dict[str, Any]]:
    """Each sbatch call: its dependency (set of task ids), whether it kills on a failed dependency, its cells."""
    calls = []
    for line in log.read_text().splitlines():
        argv = json.loads(line)
        opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
        if "array" not in opts:  # a report (or prepare) job: tests/test_slurm_stages.py checks those
            continue
        dep = opts.get("dependency", "")
        assert dep == "" or dep.startswith("afterok:"), dep
        cells_file = Path(argv[-1]).with_suffix(".cells")
        ids = [row.split()[0] for row in cells_file.read_text().splitlines()]
        assert opts["array"] == f"0-{len(ids) - 1}"
        calls.append({"after": set(dep.removeprefix("afterok:").split(":")) - {""}, "cells": ids,
                      "kill": opts.get("kill-on-invalid-dep") == "yes"})
    return calls


def _needs(cell: Cell) -> set[str]:
    """What the issue asks a transfer cell to wait for: the base it copies from and its reference base."""
    return set(cell.depends_on) | ({cell.reference} if cell.reference else set())


def _check_exact(plan: SweepPlan, calls: list[dict[str, Any]], unfinished: set[str]) -> None:
    """Every array's dependency is exactly the task ids of its cells' unfinished bases, for every cell in it."""
    by_id, book = plan.by_id(), JobBook.load(plan.output_dir).cells
    for call in calls:
        for cid in call["cells"]:
            want = {book[d]["job_id"] for d in _needs(by_id[cid]) & unfinished}
            assert call["after"] == want, (by_id[cid].label, call["after"], want)
        assert call["kill"] == bool(call["after"])


def test_each_transfer_array_waits_for_exactly_the_base_tasks_of_its_cells(tmp_path: Path, fake_slurm: Path) -> None:
    plan = plan_sweep(load_sweep(_two_seed_sweep(tmp_path)))
    write_plan(plan)
    executor = SlurmExecutor(profile="test", profiles_file=str(write_profiles(tmp_path)), limits=ClusterLimits())
    outcome = executor.run(plan, plan.cells)
    assert set(outcome.states.values()) == {"submitted"}
    calls = _calls(fake_slurm)
    transfer = [c for c in plan.cells if c.stage == "transfer"]
    sets = {frozenset(_needs(c)) for c in transfer}
    assert len(sets) == 6  # 2 seeds x {A, B}, {A}, {B}
    assert len(calls) == 1 + len(sets), [c["after"] for c in calls]  # one base array, one per dependency set
    assert calls[0]["after"] == set() and len(calls[0]["cells"]) == 4
    assert sorted(cid for call in calls[1:] for cid in call["cells"]) == sorted(c.id for c in transfer)
    _check_exact(plan, calls, {c.id for c in plan.cells})
    assert all(re.fullmatch(r"\d+_\d+", task) for call in calls for task in call["after"])


def test_array_size_and_job_cap_cut_groups_but_never_change_a_cells_dependency(tmp_path: Path,
                                                                              fake_slurm: Path) -> None:
    """MaxArraySize splits a group into several arrays with the same dependency; a job cap submits a prefix
    (part of a group) and defers the rest."""
    plan = plan_sweep(load_sweep(_two_seed_sweep(tmp_path)))
    write_plan(plan)
    profiles = str(write_profiles(tmp_path))
    SlurmExecutor(profile="test", profiles_file=profiles, limits=ClusterLimits(max_array_tasks=1)).run(plan, plan.cells)
    calls = _calls(fake_slurm)
    assert len(calls) == len(plan.cells) and all(len(c["cells"]) == 1 for c in calls)
    _check_exact(plan, calls, {c.id for c in plan.cells})
    fake_slurm.write_text("")
    (tmp_path / "capped").mkdir()
    plan = plan_sweep(load_sweep(_two_seed_sweep(tmp_path / "capped")))
    write_plan(plan)
    outcome = SlurmExecutor(profile="test", profiles_file=profiles,
                            limits=ClusterLimits(max_submit_jobs=7)).run(plan, plan.cells)
    calls = _calls(fake_slurm)
    assert [len(c["cells"]) for c in calls] == [4, 1]  # 7 jobs: 5 cells and the 2 report jobs
    assert len(fake_slurm.read_text().splitlines()) == 2 + 2  # two arrays, two report jobs
    assert sum(s == "deferred" for s in outcome.states.values()) == len(plan.cells) - 5
    _check_exact(plan, calls, {c.id for c in plan.cells})


def test_bases_still_queued_are_waited_for_by_task_and_finished_ones_not_at_all(tmp_path: Path,
                                                                               fake_slurm: Path) -> None:
    """A re-run while the bases are still queued resubmits the (cancelled) transfer cells after the queued base
    tasks; a finished base is not waited for, so cells that differed only by it share one array."""
    plan = plan_sweep(load_sweep(_two_seed_sweep(tmp_path)))
    write_plan(plan)
    profiles = str(write_profiles(tmp_path))
    SlurmExecutor(profile="test", profiles_file=profiles, limits=ClusterLimits()).run(plan, plan.cells)
    book = JobBook.load(plan.output_dir).cells
    bases = [c for c in plan.cells if c.stage == "base"]
    queue = Path(os.environ["FAKE_SLURM_QUEUE"])
    queue.write_text("".join(f"JobId=9{i} ArrayJobId={book[c.id]['array']} ArrayTaskId={book[c.id]['task']} "
                             "JobState=PENDING Reason=None\n" for i, c in enumerate(bases)))
    fake_slurm.write_text("")
    finished = bases[0]  # seed 0's base A, taken as finished: not among the cells to run
    cells = [c for c in plan.cells if c.id != finished.id]
    outcome = SlurmExecutor(profile="test", profiles_file=profiles, limits=ClusterLimits()).run(plan, cells)
    assert {outcome.states[c.id] for c in bases[1:]} == {"submitted"}
    calls = _calls(fake_slurm)
    assert all(plan.by_id()[cid].stage == "transfer" for call in calls for cid in call["cells"]), "bases resubmitted"
    queued = {b.id: book[b.id]["job_id"] for b in bases[1:]}
    for call in calls:
        assert call["after"] <= set(queued.values())
    _check_exact(plan, calls, set(queued))
    # seed 0 without its base A: {A, B} and {B} collapse into {B}, {A} into nothing; seed 1 keeps its 3 sets
    assert len(calls) == 2 + 3


def test_dry_run_says_which_base_tasks_each_array_waits_for(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = _two_seed_sweep(tmp_path)
    capsys.readouterr()
    assert main(["sweep", "run", str(sweep), "--executor", "slurm", "--profiles", str(write_profiles(tmp_path)),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("--array=0-") == 7 and out.count("#!/bin/bash") == 2 + 2  # one script per stage, 2 reports
    assert out.count("# report job") == 2 and out.count("--dependency=afterany:") == 2
    headers = [line for line in out.splitlines() if line.startswith("# transfer array")]
    assert len(headers) == 6 and all("waits for base tasks <base-" in h for h in headers), headers
    assert any("base-A seed=1" in h and "base-B seed=1" in h for h in headers), headers
    assert not Path(load_sweep(sweep).output_dir).exists()


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster", "fashion_root")
@pytest.mark.timeout(400)
def test_a_failed_base_cancels_only_the_transfer_cells_that_need_it(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Base A's data is missing, so its job fails (FAILED); AnB (copies from A) is cancelled by Slurm
    (DependencyNeverSatisfied) while BnB (copies from and is compared with B) runs and finishes."""
    data = {"split": {"kind": "random_halves", "seed": 0}, "batch_size": 64, "max_train_samples": 512,
            "max_val_samples": 256}
    sweep = write_sweep(tmp_path, variants=["AnB", "BnB"], data=data,
                        datasets={"A": {"dataset": "image_folder", "root": str(tmp_path / "missing"), "split": None},
                                  "B": {"dataset": "fashion_mnist", "half": "B"}},
                        transfers=[{"source": "A", "target": "B"}])
    # submitted past `sweep run`, whose plan-time checks refuse the missing root before anything is submitted
    plan = plan_sweep(load_sweep(sweep))
    write_plan(plan)
    materialize_configs(plan, plan.cells)
    SlurmExecutor(profile="test", profiles_file=str(write_profiles(tmp_path))).run(plan, plan.cells)
    cells = {(c.stage, c.variant): c for c in plan.cells}
    base_a, base_b = cells["base", "base-A"], cells["base", "base-B"]
    anb, bnb = cells["transfer", "AnB"], cells["transfer", "BnB"]
    jobs = {c.id: cell_job(plan.output_dir, c.id) for c in plan.cells}
    assert len({j.split("_")[0] for j in jobs.values()}) == 3  # bases; AnB after {A, B}; BnB after {B}
    wait_for(lambda: job_state(jobs[base_a.id]) == "FAILED", 120, "base A to fail")
    wait_for(lambda: job_state(jobs[anb.id]) in ("CANCELLED", "GONE"), 60, "AnB to be cancelled")
    wait_for(lambda: read_result(bnb.run_dir), 240, "BnB to finish although base A failed")
    assert read_result(base_b.run_dir) and read_result(anb.run_dir) is None
    assert not (Path(anb.run_dir) / "attempts.json").exists(), "AnB started"
    wait_for(lambda: job_state(jobs[bnb.id]) in ("COMPLETED", "GONE"), 60, "BnB's job to exit")
    capsys.readouterr()
    assert main(["sweep", "status", str(plan.output_dir)]) == 0
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[1:-1]]
            for line in capsys.readouterr().out.splitlines() if line.count("│") > 5}
    assert rows[base_a.id][6] == "failed" and "FAILED" in rows[base_a.id], rows[base_a.id]
    assert rows[anb.id][6] == "pending" and "CANCELLED (DependencyNeverSatisfied)" in rows[anb.id], rows[anb.id]
    assert rows[bnb.id][6] == "finished" and "COMPLETED" in rows[bnb.id], rows[bnb.id]


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster", "fashion_root")
@pytest.mark.timeout(400)
def test_a_transfer_starts_when_its_own_bases_finish_not_after_the_slowest_base(tmp_path: Path) -> None:
    """Base A trains on the whole half A for 2 epochs (~940 steps), base B on 512 images: BnB (needs only B)
    starts while A is still training; AnB (needs A) after A. With one dependency on the whole base array (the old
    way), BnB would wait for A too."""
    data = {"split": {"kind": "random_halves", "seed": 0}, "batch_size": 64, "max_val_samples": 256}
    sweep = write_sweep(tmp_path, variants=["AnB", "BnB"], data=data,
                        datasets={"A": {"dataset": "fashion_mnist", "half": "A"},
                                  "B": {"dataset": "fashion_mnist", "half": "B", "max_train_samples": 512}},
                        transfers=[{"source": "A", "target": "B"}], stages={"base": {"trainer": {"max_epochs": 2}}})
    submit(sweep, write_profiles(tmp_path))
    plan = plan_sweep(load_sweep(sweep))
    cells = {c.variant: c for c in plan.cells}
    wait_for(lambda: all(read_result(c.run_dir) for c in plan.cells), 300, "every cell to finish")
    base_a, base_b, anb, bnb = (read_result(cells[v].run_dir) for v in ("base-A", "base-B", "AnB", "BnB"))
    assert base_a and base_b and anb and bnb
    assert bnb["started_at"] >= base_b["finished_at"] and anb["started_at"] >= base_a["finished_at"]
    assert bnb["started_at"] < base_a["finished_at"], ("BnB waited for base A, which it does not need",
                                                       base_b["finished_at"], bnb["started_at"], base_a["finished_at"])


def test_a_cell_another_sweeps_job_is_training_is_left_to_that_job_and_waited_for(tmp_path: Path,
                                                                                   fake_slurm: Path) -> None:
    """A shared store: another sweep's array task 777_3 holds seed 0's base A (its claim names the job). This
    sweep does not submit that base again (it would hold an allocation while it waits inside run_once); its
    transfer cells wait for 777_3 instead. A claim whose job Slurm no longer knows is no reason to wait."""
    from launch.store.claims import claim_path

    plan = plan_sweep(load_sweep(_two_seed_sweep(tmp_path)))
    write_plan(plan)
    bases = {(c.variant, c.seed): c for c in plan.cells if c.stage == "base"}
    held, stale = bases["base-A", 0], bases["base-B", 1]
    for cell, job in ((held, "777"), (stale, "778")):
        claim_path(cell).parent.mkdir(parents=True, exist_ok=True)
        claim_path(cell).write_text(json.dumps({"host": "gpu-node-3", "pid": 4242, "job": job, "task": "3",
                                                "time": 0, "token": job}) + "\n")
    Path(os.environ["FAKE_SLURM_QUEUE"]).write_text(
        "JobId=9001 ArrayJobId=777 ArrayTaskId=3 JobState=RUNNING Reason=None\n")  # 778_3 is gone
    executor = SlurmExecutor(profile="test", profiles_file=str(write_profiles(tmp_path)), limits=ClusterLimits())
    outcome = executor.run(plan, plan.cells)
    calls = _calls(fake_slurm)
    submitted = {cid for call in calls for cid in call["cells"]}
    assert held.id not in submitted and stale.id in submitted
    assert outcome.states[held.id] == "submitted"  # queued/running, as far as this sweep can tell
    for call in calls:
        for cid in call["cells"]:
            needs_held = held.id in _needs(plan.by_id()[cid])
            assert ("777_3" in call["after"]) == needs_held, (plan.by_id()[cid].label, call["after"])
    assert any("777_3" in call["after"] for call in calls)
