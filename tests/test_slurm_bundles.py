"""Bundles on Slurm: cells estimated (configs/costs.yaml) shorter than the profile's ``task_length`` run K to one
array task, K = floor(target / estimate), which also shrinks the arrays counted against MaxArraySize and
MaxSubmitJobs. The fast tests use the real planner, cost table and a fake sbatch; the slow ones run bundles of 3
tiny cells in one array task of the real test cluster, in one process (the bundle worker, launch/worker/bundle.py): one
with a cell failing at train time, one preempted (``scontrol requeue``) while its 2nd cell trains.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from launch.core.plan import materialize_configs, write_plan
from launch.execution.slurm.commands import ClusterLimits, JobBook, query_jobs
from launch.execution.slurm.executor import SlurmExecutor, cancel_sweep
from launch.execution.slurm.script import cell_seconds, pack_bundles
from launch.planning.planner import plan_sweep
from launch.planning.profiles import parse_duration
from launch.planning.schema import load_sweep
from pipeline.results.run_folder import read_attempts, read_result
from tests.test_slurm import job_state, release_requeued, wait_for, write_profiles, write_sweep
from tests.test_slurm_deps import fake_slurm  # noqa: F401  (fixture)


def _three_bases(tmp_path: Path, bad: bool = True, seeds: list[int] | None = None) -> Path:
    """Base cells on roles A, B, C (no transfer variants); C's ``half: C`` plans but fails when its data is built."""
    datasets = {"A": {"dataset": "fashion_mnist", "half": "A"}, "B": {"dataset": "fashion_mnist", "half": "B"},
                "C": {"dataset": "fashion_mnist", "half": "C" if bad else "A", "max_val_samples": 128}}
    return write_sweep(tmp_path, datasets=datasets, transfers=[{"source": "A", "target": t} for t in "BC"] + [{"source": "B", "target": "A"}],
                       seeds=seeds or [0],
                       variants=[])


def test_k_is_the_target_over_the_cell_estimate(tmp_path: Path) -> None:
    plan = plan_sweep(load_sweep(_three_bases(tmp_path, seeds=list(range(10)))))
    seconds = cell_seconds(plan, plan.cells)
    assert set(seconds) == {c.id for c in plan.cells} and all(t > 0 for t in seconds.values())
    a_cells = [c for c in plan.cells if c.target == "A"]  # one estimate for all of them (same template)
    t = seconds[a_cells[0].id]
    for k in (1, 3, 4):
        bundles = pack_bundles(a_cells, seconds, k * t + t / 2)
        assert [len(b) for b in bundles] == [k] * (len(a_cells) // k) + ([len(a_cells) % k] if len(a_cells) % k else [])
        assert [c for b in bundles for c in b] == a_cells  # order kept, nothing lost
    assert [len(b) for b in pack_bundles(a_cells, seconds, t / 2)] == [1] * len(a_cells)  # longer than the target
    assert [len(b) for b in pack_bundles(a_cells, {}, 1e9)] == [1] * len(a_cells)  # no estimate: alone
    assert [len(b) for b in pack_bundles(a_cells, seconds, None)] == [1] * len(a_cells)
    assert parse_duration("30min") == 1800 and parse_duration("01:00:00") == 3600


def test_bundles_shrink_the_arrays_and_each_task_lists_its_cells(tmp_path: Path, fake_slurm: Path) -> None:  # noqa: F811
    plan = plan_sweep(load_sweep(_three_bases(tmp_path, seeds=list(range(10)))))
    write_plan(plan)
    seconds = cell_seconds(plan, plan.cells)
    t = max(seconds.values())
    k = 4
    target = f"{k * t + t / 2:.12f}s"  # tiny cells: a fraction of a second each by the table
    profiles = write_profiles(tmp_path, test={**_profile(), "task_length": target})
    executor = SlurmExecutor(profile="test", profiles_file=str(profiles), limits=ClusterLimits(max_array_tasks=5),
                             reports=False)
    executor.run(plan, plan.cells)
    book = JobBook.load(plan.output_dir).cells
    per_task: dict[str, list[str]] = {}
    for cid, entry in book.items():
        per_task.setdefault(entry["job_id"], []).append(cid)
    assert sorted(len(v) for v in per_task.values()) == sorted([k] * 7 + [2]), per_task  # 30 cells, K=4
    assert max(e["task"] for e in book.values()) <= 4  # MaxArraySize=5 now counts bundles
    assert executor.sbatch_calls == 2  # 8 bundles in arrays of at most 5 tasks
    for line in (plan.output_dir / "slurm").glob("*.cells"):
        rows = [r.split("\t") for r in line.read_text().splitlines()]
        assert all(len(r) == 4 and book[r[0]]["task"] == int(r[1]) for r in rows)
        assert all(r[2] == str(Path(plan.by_id()[r[0]].run_dir).absolute()) for r in rows)
    # the job cap counts tasks, not cells: a cap of 3 submits 3 bundles (12 cells)
    capped = tmp_path / "capped"
    capped.mkdir()
    plan = plan_sweep(load_sweep(_three_bases(capped, seeds=list(range(10)))))
    write_plan(plan)
    outcome = SlurmExecutor(profile="test", profiles_file=str(profiles), reports=False,
                            limits=ClusterLimits(max_submit_jobs=3)).run(plan, plan.cells)
    assert sum(s == "submitted" for s in outcome.states.values()) == 3 * k


def _profile() -> dict[str, object]:
    """The test profile of tests/test_slurm.py (write_profiles), to extend with task_length."""
    return {"partition": "debug", "time": "00:20:00", "cpus_per_task": 1, "mem": "1000M", "signal_grace_s": 30,
            "max_restarts": 2, "python": sys.executable, "env": {"MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}}


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster", "fashion_root")
@pytest.mark.timeout(600)
def test_a_bundle_of_three_cells_runs_in_one_task_and_one_failure_stops_nothing(tmp_path: Path) -> None:
    sweep = _three_bases(tmp_path)
    plan = plan_sweep(load_sweep(sweep))
    write_plan(plan)
    materialize_configs(plan, plan.cells)
    profiles = write_profiles(tmp_path, test={**_profile(), "task_length": "30min"})
    bad = next(c for c in plan.cells if c.target == "C")
    # the failing cell first: the two after it must still run
    plan.cells.sort(key=lambda c: c.id != bad.id)
    executor = SlurmExecutor(profile="test", profiles_file=str(profiles), reports=False)
    try:
        executor.run(plan, plan.cells)
        book = JobBook.load(plan.output_dir).cells
        assert executor.sbatch_calls == 1 and {e["job_id"] for e in book.values()} == {book[bad.id]["job_id"]}
        task = book[bad.id]["job_id"]
        wait_for(lambda: job_state(task) in ("COMPLETED", "FAILED", "GONE"), 500, f"bundle task {task}")
        # a bundle's task does not fail for one failed cell: FAILED would cancel (afterok) the dependants of
        # the other bases in it; the failure is in the cell's own folder and log (asserted below)
        assert job_state(task) == "COMPLETED"
    finally:
        cancel_sweep(plan)
    good = [c for c in plan.cells if c.id != bad.id]
    assert all(read_result(c.run_dir) for c in good), "a failed cell stopped its bundle"
    assert read_result(bad.run_dir) is None and read_attempts(bad.run_dir)["failures"] == 0  # bad input: not charged
    assert read_attempts(bad.run_dir)["history"][-1]["outcome"] == "bad_input"
    logs = {c.id: (plan.output_dir / "logs" / f"{c.id}.log").read_text() for c in plan.cells}
    assert "unknown split half 'C'" in logs[bad.id]
    for c in good:  # each log is its cell's own: its run dir, never another cell's
        assert "unknown split half" not in logs[c.id] and f"cell {c.id} finished" in logs[c.id]
        assert all(f"cell {o.id} " not in logs[c.id] for o in plan.cells if o.id != c.id)
        assert read_attempts(c.run_dir)["history"][-1]["outcome"] == "finished"
        assert read_attempts(c.run_dir)["history"][-1]["job"] == task


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster", "fashion_root")
@pytest.mark.timeout(600)
def test_a_preempted_bundle_keeps_its_finished_cell_and_resumes_the_current_one(tmp_path: Path) -> None:
    """Three cells in one array task, one process (the bundle worker). ``scontrol requeue`` while the 2nd trains
    (after its first checkpoint): the worker checkpoints it and stops (exit 3), Slurm requeues the task; the
    requeued task skips the 1st (its result.json and attempts untouched), resumes the 2nd from preempt.ckpt and
    then trains the 3rd, which never started before."""
    sweep = write_sweep(
        tmp_path, seeds=[0, 1, 2],
        data={"dataset": "fashion_mnist", "split": {"kind": "random_halves", "seed": 0}, "batch_size": 64,
              "max_train_samples": 2048, "max_val_samples": 128},
        train={"trainer": {"max_epochs": 2, "progress_bar": False, "checkpoint_every_n_steps": 10,
                           "log_every_n_steps": 5}})
    plan = plan_sweep(load_sweep(sweep))
    assert len(plan.cells) == 3
    write_plan(plan)
    materialize_configs(plan, plan.cells)
    profiles = write_profiles(tmp_path, test={**_profile(), "task_length": "30min", "preempt_check_steps": 1})
    executor = SlurmExecutor(profile="test", profiles_file=str(profiles), reports=False)
    try:
        executor.run(plan, plan.cells)
        book = JobBook.load(plan.output_dir).cells
        (task,) = {e["job_id"] for e in book.values()}
        (cells_file,) = (plan.output_dir / "slurm").glob("*.cells")
        by_id = plan.by_id()
        first, second, third = (by_id[row.split("\t")[0]] for row in cells_file.read_text().splitlines())

        def second_is_training() -> bool:
            assert job_state(task) not in ("FAILED", "CANCELLED", "TIMEOUT"), f"task {task} died"
            assert read_result(second.run_dir) is None, "the 2nd cell finished before it could be preempted"
            return (Path(second.run_dir) / "checkpoints" / "last.ckpt").exists()

        wait_for(second_is_training, 400, "the 2nd cell's first checkpoint")
        assert read_result(first.run_dir) is not None and not Path(third.run_dir, "attempts.json").exists()
        kept = Path(first.run_dir, "result.json").stat().st_mtime_ns, read_attempts(first.run_dir)
        subprocess.run(["scontrol", "requeue", task], check=True, capture_output=True)
        release_requeued(task)
        wait_for(lambda: job_state(task) in ("COMPLETED", "FAILED", "GONE"), 400, f"requeued task {task} to end")
        assert job_state(task) == "COMPLETED" and query_jobs([task])[task].restarts == 1
    finally:
        cancel_sweep(plan)
    assert (Path(first.run_dir, "result.json").stat().st_mtime_ns, read_attempts(first.run_dir)) == kept
    assert [h["outcome"] for h in kept[1]["history"]] == ["started", "finished"]
    resumed = read_result(second.run_dir)
    assert resumed is not None and resumed["resumed_from"] == "preempt.ckpt"
    attempts = read_attempts(second.run_dir)
    assert [h["outcome"] for h in attempts["history"]] == ["started", "preempted", "started", "finished"]
    assert attempts["failures"] == 0 and attempts["history"][1]["signal"] == "SIGTERM"
    later = read_attempts(third.run_dir)["history"]
    assert read_result(third.run_dir) and [h["outcome"] for h in later] == ["started", "finished"]
    assert later[0]["slurm_restart"] == 1  # it first started after the requeue
    # one process per attempt of the task: the worker's line for each cell it ran, in the task's output
    out = "".join(p.read_text() for p in (plan.output_dir / "slurm" / "logs").glob(f"{task.split('_')[0]}_*.out"))
    assert out.count("bundle of 3 cells (of 3) in one process") == 1, out
    assert out.count("bundle of 2 cells (of 3) in one process") == 1, out
    assert out.count(f"mkf worker: {Path(second.config_path).absolute()}: preempted") == 1, out
    for cell in (first, second, third):
        log = (plan.output_dir / "logs" / f"{cell.id}.log").read_text()
        assert f"cell {cell.id} finished" in log and all(o.id not in log for o in (first, second, third)
                                                         if o.id != cell.id)
