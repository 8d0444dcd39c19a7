"""The cluster path on a real Slurm (slurm/testcluster: slurmctld + slurmd n1, n2 on 127.0.0.1).

Long (~490 lines) because every scenario shares one real cluster and the helpers that drive it; the newer
cluster tests (dependencies, preemption with workers) live in their own files and import these helpers.

Skipped without root or Debian's slurm-wlm/munge; in CI (MKF_REQUIRE_ALL_TESTS=1) a skip is a failure.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

from launch.cli import main
from launch.core.plan import write_plan
from launch.execution.slurm.commands import JobBook, query_jobs
from launch.execution.slurm.executor import cancel_sweep
from launch.planning.planner import plan_sweep
from launch.planning.schema import load_sweep
from pipeline.results.run_folder import read_attempts, read_result
from tests.conftest import REPO

pytestmark = [pytest.mark.usefixtures("slurm_cluster", "fashion_root"), pytest.mark.slow]
DEMO = REPO / "configs" / "demo.yaml"
SECRET = "0123456789abcdef0123456789abcdef01234567"


def write_profiles(tmp_path: Path, **overrides: Any) -> Path:
    base = {"partition": "debug", "time": "00:20:00", "cpus_per_task": 1, "mem": "1000M", "signal_grace_s": 30,
            "max_restarts": 2, "python": sys.executable, "env": {"MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}}
    profiles = {"test": base, "test-2node": {**base, "nodes": 2}, **overrides}
    path = tmp_path / "profiles.yaml"
    path.write_text(yaml.safe_dump(profiles))
    return path


def write_sweep(tmp_path: Path, name: str = "s", profile: str = "test", **changes: Any) -> Path:
    sweep = {
        "name": name, "output_dir": str(tmp_path / "out"), "seeds": [0],
        "data": {"dataset": "fashion_mnist", "split": {"kind": "random_halves", "seed": 0}, "batch_size": 64,
                 "max_train_samples": 512, "max_val_samples": 256},
        "archs": [{"arch": "convnext_demo", "unit_kind": "depthwise"}], "depths": [1], "variants": [],
        "train": {"trainer": {"max_epochs": 1, "progress_bar": False, "log_every_n_steps": 5}},
        "slurm": {"profiles": {"base": profile, "transfer": profile}}, **changes,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def submit(sweep: Path, profiles: Path) -> None:
    assert main(["sweep", "run", str(sweep), "--executor", "slurm", "--profiles", str(profiles)]) == 0


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def checkpoint_of(cell: Any, job: str) -> Callable[[], bool]:
    """The cell's first periodic checkpoint exists (and its job has not died meanwhile)."""
    def check() -> bool:
        assert job_state(job) not in ("FAILED", "CANCELLED", "TIMEOUT"), f"job {job} died before its first checkpoint"
        return (Path(cell.run_dir) / "checkpoints" / "last.ckpt").exists()

    return check


def cell_job(out: Path, cell_id: str) -> str:
    return JobBook.load(out).cells[cell_id]["job_id"]


def job_state(job_id: str) -> str:
    job = query_jobs([job_id]).get(job_id)
    return job.state if job else "GONE"


def release_requeued(job: str) -> None:
    """Wait until ``job`` requeued itself, then start it now (Slurm otherwise holds a requeued job ~2 minutes)."""
    def requeued_and_pending() -> bool:
        info = query_jobs([job]).get(job)
        return info is not None and info.restarts >= 1 and info.state == "PENDING"

    wait_for(requeued_and_pending, 120, f"job {job} to requeue itself")
    # the old attempt must be gone (wandb's teardown can take seconds) before we override Slurm's requeue
    # delay, which exists for exactly that: a relaunch onto a node still cleaning up the old step fails
    wait_for(lambda: _rank_pid(job, 0) is None, 60, f"the preempted attempt of {job} to exit")
    time.sleep(2)

    def started() -> bool:
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
        return job_state(job) in ("RUNNING", "COMPLETING", "COMPLETED")

    try:
        wait_for(started, 120, f"requeued job {job} to start again")
    except AssertionError as exc:
        show = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        queue = subprocess.run(["squeue", "-a", "-r"], capture_output=True, text=True).stdout
        raise AssertionError(f"{exc}\n{show}\n{queue}") from None


def all_finished(sweep: Path) -> Callable[[], bool]:
    plan = plan_sweep(load_sweep(sweep))

    def check() -> bool:
        book = JobBook.load(plan.output_dir)
        failed = [c.id for c in plan.cells if c.id in book.cells
                  and job_state(book.cells[c.id]["job_id"]) in ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY")]
        assert not failed, f"cells failed on Slurm: {failed}; logs in {plan.output_dir / 'slurm' / 'logs'}"
        return all(read_result(c.run_dir) for c in plan.cells)

    return check


@pytest.mark.timeout(1500)  # more than the 900 s the sweep itself may take, so its own message is what fails
def test_demo_sweep_runs_on_slurm_base_arrays_before_transfer_arrays(tmp_path: Path) -> None:
    """(a) The demo sweep (22 cells): one base array, one transfer array per (arch, base tasks waited for); every
    transfer cell starts after the base it copies from and its reference base finished."""
    demo = yaml.safe_load(DEMO.read_text())
    demo.update(output_dir=str(tmp_path / "out"), slurm={"profiles": {"base": "test", "transfer": "test"}},
                stages={}, seeds=[0])
    demo["data"].update(max_train_samples=1024, max_val_samples=512)
    demo["train"]["trainer"]["max_epochs"] = 1
    sweep = tmp_path / "demo.yaml"
    sweep.write_text(yaml.safe_dump(demo))
    submit(sweep, write_profiles(tmp_path))
    book = JobBook.load(tmp_path / "out")
    arrays = {(e["stage"], e["array"]) for e in book.cells.values()}
    # per arch: AnB waits for bases A and B; BnB and random-frozen (compared with base B) for B alone
    assert sorted(Counter(stage for stage, _ in arrays).items()) == [("base", 1), ("transfer", 4)], arrays
    wait_for(all_finished(sweep), 900, "the demo sweep to finish on Slurm")
    plan = plan_sweep(load_sweep(sweep))
    assert len(plan.cells) == 2 * (2 + 3 * 3)  # the demo's formula with one seed
    by_id = plan.by_id()
    assert any(c.stage == "transfer" and c.depends_on for c in plan.cells)
    for cell in plan.cells:
        mine = read_result(cell.run_dir)
        assert mine, f"{cell.label} did not finish"
        for dep in [*cell.depends_on, *([cell.reference] if cell.reference else [])]:
            base = read_result(by_id[dep].run_dir)
            assert base and mine["started_at"] >= base["finished_at"]
    assert main(["report", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "figure.png").is_file()


def test_two_node_ddp_cell_spans_n1_and_n2_with_exact_validation(tmp_path: Path) -> None:
    """(b) A cell on 2 nodes x 1 task: ranks land on n1 and n2; its top-1 is the exact top-1 of all val images."""
    sweep = write_sweep(tmp_path, profile="test-2node")
    submit(sweep, write_profiles(tmp_path))
    wait_for(all_finished(sweep), 300, "the 2-node cells")
    plan = plan_sweep(load_sweep(sweep))
    cell = plan.cells[0]
    result = read_result(cell.run_dir)
    assert result is not None and result["world_size"] == 2 and sorted(result["nodes"]) == ["n1", "n2"]
    from datamodules import build_datamodule

    dm = build_datamodule("fashion_mnist", split={"kind": "random_halves", "seed": 0}, half=result["half"],
                          max_train_samples=512, max_val_samples=256)
    dm.setup()
    from datamodules.loaders.memory import fashion_batch_transform

    model = timm.create_model("convnext_demo", num_classes=5)
    model.load_state_dict(load_file(str(Path(cell.run_dir) / "weights.safetensors")))
    model.eval()
    images, labels = dm.val_set.tensors  # type: ignore[union-attr]
    with torch.no_grad():
        correct = (model(fashion_batch_transform(images, 32, train=False)).argmax(1) == labels).sum().item()
    assert result["val_samples"] == 256
    assert result["top1"] == pytest.approx(correct / 256, abs=1e-6)


def _preemptible_sweep(tmp_path: Path, profile: str = "test") -> Path:
    return write_sweep(
        tmp_path, profile=profile,
        data={"dataset": "fashion_mnist", "split": {"kind": "random_halves", "seed": 0}, "batch_size": 64,
              "max_train_samples": 4096, "max_val_samples": 256},
        train={"trainer": {"max_epochs": 4, "progress_bar": False, "checkpoint_every_n_steps": 10,
                           "log_every_n_steps": 5}},
        wandb={"enabled": True, "project": "mkf-test"},
    )


def test_preempted_cell_requeues_resumes_and_matches_an_uninterrupted_run(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """(c) USR1 mid-training: checkpoint, requeue, resume; final weights equal an uninterrupted run's; one W&B
    offline run directory for the cell; the API key appears nowhere."""
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    sweep = _preemptible_sweep(tmp_path)
    submit(sweep, write_profiles(tmp_path))
    plan = plan_sweep(load_sweep(sweep))
    cell = plan.cells[0]
    job = cell_job(plan.output_dir, cell.id)
    wait_for(checkpoint_of(cell, job), 180, "the first checkpoint")
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    release_requeued(job)
    wait_for(all_finished(sweep), 300, "the requeued cell to finish")
    result = read_result(cell.run_dir)
    assert result is not None and result["resumed_from"] == "preempt.ckpt"
    assert query_jobs([job])[job].restarts == 1
    # an uninterrupted run of the same cell config, same thread count
    reference = tmp_path / "reference"
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline")
    subprocess.run([sys.executable, "-m", "launch.cli", "train", "--config", cell.config_path, "--run-dir",
                    str(reference)], cwd=REPO, env=env, check=True, capture_output=True)
    ref_w, w = load_file(str(reference / "weights.safetensors")), load_file(str(Path(cell.run_dir) / "weights.safetensors"))
    assert all(torch.equal(ref_w[k], w[k]) for k in ref_w), "resumed weights differ from the uninterrupted run"
    assert result["top1"] == read_result(reference)["top1"]  # type: ignore[index]
    offline = list((Path(cell.run_dir) / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and offline[0].name.endswith(cell.id), offline
    for path in plan.output_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"API key leaked into {path}"


def test_real_preemption_sigterm_requeues_resumes_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    """A job of partition `high` preempts the cell (PreemptMode=REQUEUE: SIGTERM, then KILL after KillWait): the
    cell checkpoints at a batch boundary, Slurm requeues it, it resumes and ends with the uninterrupted weights.
    Its profile allows no failure (max_restarts 0): a preemption is not one."""
    base = yaml.safe_load(write_profiles(tmp_path).read_text())["test"]
    profiles = write_profiles(tmp_path, low={**base, "partition": "low", "max_restarts": 0})
    sweep = _preemptible_sweep(tmp_path, profile="low")
    submit(sweep, profiles)
    plan = plan_sweep(load_sweep(sweep))
    cell = plan.cells[0]
    job = cell_job(plan.output_dir, cell.id)
    wait_for(checkpoint_of(cell, job), 180, "the first checkpoint")
    # every CPU of both nodes: Slurm must preempt the low-priority cells to start it
    high = subprocess.run(["sbatch", "--parsable", "-p", "high", "-N2", "--ntasks-per-node=1", "--cpus-per-task=1",
                           "--wrap", "sleep 3", "-o", str(tmp_path / "high.out")], check=True, capture_output=True,
                          text=True).stdout.strip()
    wait_for(lambda: job_state(high) in ("RUNNING", "COMPLETING", "COMPLETED", "GONE"), 120, "the high job to start")
    release_requeued(job)
    wait_for(all_finished(sweep), 300, "the preempted cell to finish")
    result = read_result(cell.run_dir)
    assert result is not None and result["resumed_from"] == "preempt.ckpt"
    attempts = read_attempts(cell.run_dir)
    assert attempts["preemptions"] >= 1 and attempts["failures"] == 0, attempts
    assert any(h.get("signal") == "SIGTERM" for h in attempts["history"]), attempts
    reference = tmp_path / "reference"
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline")
    subprocess.run([sys.executable, "-m", "launch.cli", "train", "--config", cell.config_path, "--run-dir",
                    str(reference)], cwd=REPO, env=env, check=True, capture_output=True)
    ref_w, w = load_file(str(reference / "weights.safetensors")), load_file(str(Path(cell.run_dir) / "weights.safetensors"))
    assert all(torch.equal(ref_w[k], w[k]) for k in ref_w), "resumed weights differ from the uninterrupted run"


def test_crash_limit_marks_the_cell_failed_and_status_counts_it(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A cell killed outright (no outcome recorded) counts one failure; with max_restarts 0 the next attempt
    refuses to train and marks the cell failed; status shows the failure apart from preemptions."""
    base = yaml.safe_load(write_profiles(tmp_path).read_text())["test"]
    profiles = write_profiles(tmp_path, capped={**base, "max_restarts": 0})
    sweep = _preemptible_sweep(tmp_path, profile="capped")
    submit(sweep, profiles)
    plan = plan_sweep(load_sweep(sweep))
    cell = plan.cells[0]
    job = cell_job(plan.output_dir, cell.id)
    wait_for(checkpoint_of(cell, job), 180, "the first checkpoint")
    os.kill(wait_for(lambda: _rank_pid(job, 0), 30, "rank 0's process"), signal.SIGKILL)
    wait_for(lambda: job_state(job) in ("FAILED", "CANCELLED"), 90, "the killed job to fail")
    submit(sweep, profiles)  # a re-run submits the cell again; its attempt finds the open one and refuses
    new_job = cell_job(plan.output_dir, cell.id)
    assert new_job != job
    wait_for(lambda: (Path(cell.run_dir) / "failed.json").is_file(), 120, "the cell to be marked failed")
    wait_for(lambda: job_state(new_job) in ("FAILED", "COMPLETED", "GONE"), 60, "the refused job to end")
    attempts = read_attempts(cell.run_dir)
    assert attempts["failures"] == 1 and attempts["preemptions"] == 0, attempts
    assert read_result(cell.run_dir) is None
    capsys.readouterr()
    assert main(["sweep", "status", str(plan.output_dir), "--only", "failed"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if cell.id in line)
    assert [c.strip() for c in row.split("│")][1:-1][6:9] == ["failed", "0", "1"], row


def _rank_pid(job: str, rank: int) -> int | None:
    array, task = job.split("_")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = dict(kv.split("=", 1) for kv in (proc / "environ").read_bytes().decode().split("\0") if "=" in kv)
            cmd = (proc / "cmdline").read_bytes().decode()
        except (OSError, UnicodeDecodeError):
            continue
        if (("launch.cli" in cmd or "launch.worker.bundle" in cmd) and env.get("SLURM_ARRAY_JOB_ID") == array and env.get("SLURM_ARRAY_TASK_ID") == task
                and env.get("SLURM_PROCID") == str(rank) and "SLURM_STEP_ID" in env):
            return int(proc.name)
    return None


def test_killed_rank_fails_the_job_quickly_and_a_rerun_resumes(tmp_path: Path) -> None:
    """(d) SIGKILL one rank of a 2-node cell: the job fails within a bounded time (no hang); re-running resumes."""
    sweep = _preemptible_sweep(tmp_path, profile="test-2node")
    profiles = write_profiles(tmp_path)
    submit(sweep, profiles)
    plan = plan_sweep(load_sweep(sweep))
    cell = plan.cells[0]
    job = cell_job(plan.output_dir, cell.id)
    wait_for(checkpoint_of(cell, job), 180, "the first checkpoint")
    pid = wait_for(lambda: _rank_pid(job, 1), 30, "rank 1's process")
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: job_state(job) in ("FAILED", "CANCELLED"), 90, "the job to fail after losing a rank")
    assert time.time() - killed_at < 90
    submit(sweep, profiles)
    assert cell_job(plan.output_dir, cell.id) != job
    wait_for(all_finished(sweep), 300, "the re-run cell")
    result = read_result(cell.run_dir)
    assert result is not None and result["resumed"] and result["world_size"] == 2
    assert read_attempts(cell.run_dir)["failures"] == 1  # the killed attempt, counted by the next one


def test_hostile_names_are_quoted_and_dry_run_submits_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A sweep named like a shell injection trains normally and runs nothing else; --dry-run submits nothing."""
    canary = tmp_path / "pwned"
    name = f"x'; touch {canary};\n touch {canary}1 '"
    out = tmp_path / f"o'$(touch {canary}2) `touch {canary}3` \"; touch {canary}4"
    sweep = write_sweep(tmp_path, name=name, output_dir=str(out))
    profiles = write_profiles(tmp_path)
    capsys.readouterr()
    assert main(["sweep", "run", str(sweep), "--executor", "slurm", "--profiles", str(profiles), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    # one base array, and its report job (afterany)
    assert printed.count("--array=0-") == 1 and printed.count("sbatch --parsable") == 2 and "#!/bin/bash" in printed
    assert not Path(load_sweep(sweep).output_dir).exists(), "a dry run writes nothing"
    submit(sweep, profiles)
    wait_for(all_finished(sweep), 300, "the hostile-named cells")
    assert not list(tmp_path.glob("pwned*")) and not list(REPO.glob("pwned*")), "a config value ran as a command"


def test_rerun_leaves_queued_and_finished_cells_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Idempotent sweeps: a second `sweep run` while the first is queued submits nothing; status joins Slurm."""
    sweep = write_sweep(tmp_path)
    profiles = write_profiles(tmp_path)
    submit(sweep, profiles)
    first = dict(JobBook.load(tmp_path / "out").cells)
    capsys.readouterr()
    submit(sweep, profiles)
    assert "left alone" in capsys.readouterr().out
    assert JobBook.load(tmp_path / "out").cells == first
    wait_for(all_finished(sweep), 300, "the cells")
    wait_for(lambda: all(job_state(e["job_id"]) == "COMPLETED" for e in first.values()), 60, "the jobs to exit")
    submit(sweep, profiles)
    cells = len(first)
    assert cells >= 1 and f"{cells} already finished, 0 to run" in capsys.readouterr().out
    assert main(["sweep", "status", str(tmp_path / "out")]) == 0
    status = capsys.readouterr().out
    assert "COMPLETED" in status and f"finished: {cells}" in status, status


def test_cancel_stops_every_array_of_the_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Base and transfer arrays (the transfer array waits on the base one): cancel stops both."""
    sweep = _preemptible_sweep(tmp_path)
    raw = yaml.safe_load(sweep.read_text())
    sweep.write_text(yaml.safe_dump({**raw, "variants": ["AnB"]}))
    submit(sweep, write_profiles(tmp_path))
    book = JobBook.load(tmp_path / "out").cells
    arrays = {e["array"] for e in book.values()}
    assert len(arrays) == 2, arrays
    assert main(["sweep", "cancel", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert all(a in out for a in arrays), out
    wait_for(lambda: all(job_state(e["job_id"]) in ("CANCELLED", "GONE") for e in book.values()), 60,
             "every job of both arrays to be cancelled")


def _big_stage(tmp_path: Path, **profile: Any) -> tuple[Path, Path]:
    """A sweep of 1,215 cells held in 91 arrays: 90 base cells, and per seed the transfer cells that wait for
    bases A and B (AnB, AnB+, reverse) and those that wait for B alone (BnB, BnB+)."""
    sweep = write_sweep(tmp_path, depths="all", variants=["AnB", "BnB", "AnB+", "BnB+", "reverse"],
                        seeds=list(range(45)))
    base = yaml.safe_load(write_profiles(tmp_path).read_text())["test"]
    return sweep, write_profiles(tmp_path, big={**base, **profile})


def _waited_for(show: str) -> set[str]:
    """The task ids in `scontrol show job`'s Dependency=afterok:1_0(unfulfilled),afterok:1_1(unfulfilled)."""
    dep = next(f for f in show.split() if f.startswith("Dependency="))
    assert "?" not in dep, dep  # all of them (","), not any
    return set(re.findall(r"afterok:(\d+_\d+)", dep))


def test_held_arrays_wait_for_their_base_tasks_and_a_stage_over_max_array_size_splits(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Submitted held (nothing trains), checked in squeue and scontrol, then cancelled: every transfer array
    waits for exactly the base tasks of its cells; a stage of > 1000 cells (MaxArraySize=1001, Slurm's
    default) becomes several arrays Slurm accepts."""
    from launch.execution.slurm.commands import read_limits
    from launch.execution.slurm.executor import SlurmExecutor

    sweep, profiles = _big_stage(tmp_path)
    plan = plan_sweep(load_sweep(sweep))
    needs = {c.id: set(c.depends_on) | {c.reference} for c in plan.cells if c.stage == "transfer"}
    groups = {frozenset(n) for n in needs.values()}
    limits = read_limits(SlurmExecutor(profiles_file=str(profiles)).profiles["big"])
    assert limits.max_array_tasks == 1000 and limits.source.startswith("scontrol")
    capsys.readouterr()
    assert main(["sweep", "run", str(sweep), "--executor", "slurm", "--profiles", str(profiles), "--profile", "big",
                 "--dry-run"]) == 0
    assert capsys.readouterr().out.count("--array=0-") == 1 + len(groups) == 91
    write_plan(plan)
    executor = SlurmExecutor(profile="big", profiles_file=str(profiles), hold=True, reports=False)
    try:
        outcome = executor.run(plan, plan.cells)
        assert executor.sbatch_calls == 1 + len(groups)
        assert set(outcome.states.values()) == {"submitted"}
        book = JobBook.load(plan.output_dir).cells
        arrays = sorted({e["array"] for e in book.values()}, key=int)
        queued = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T %r", "-j", ",".join(arrays)], capture_output=True,
                                text=True, check=True).stdout.split("\n")
        queued = [line for line in queued if line.strip()]
        assert len(queued) == len(plan.cells), (len(queued), len(plan.cells))
        assert all(" PENDING " in line for line in queued)
        for array in {e["array"] for e in book.values() if e["stage"] == "transfer"}:
            cells = [cid for cid, e in book.items() if e["array"] == array]
            show = subprocess.run(["scontrol", "show", "job", "--oneliner", f"{array}_0"], capture_output=True,
                                  text=True).stdout
            for cid in cells:
                assert _waited_for(show) == {book[d]["job_id"] for d in needs[cid]}, show
    finally:
        cancel_sweep(plan)
    wide = tmp_path / "wide"
    wide.mkdir()
    sweep = write_sweep(wide, seeds=list(range(1001)))  # 1,001 base cells (no variants: base B only)
    plan = plan_sweep(load_sweep(sweep))
    write_plan(plan)
    executor = SlurmExecutor(profile="big", profiles_file=str(profiles), hold=True, reports=False)
    try:
        executor.run(plan, plan.cells)
        book = JobBook.load(plan.output_dir).cells
        assert executor.sbatch_calls == 2 and max(e["task"] for e in book.values()) == 999
        arrays = sorted({e["array"] for e in book.values()}, key=int)
        queued = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(arrays)], capture_output=True,
                                text=True, check=True).stdout.split()
        assert queued.count("PENDING") == 1001
    finally:
        cancel_sweep(plan)


def test_job_cap_submits_what_fits_and_a_rerun_tops_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A user capped at N queued jobs (profile max_submit_jobs when sacctmgr has no accounting): the first run
    submits N cells held, the rest are deferred; a re-run with room left submits the rest."""
    from launch.execution.slurm.executor import SlurmExecutor

    sweep, profiles = _big_stage(tmp_path, max_submit_jobs=700)
    plan = plan_sweep(load_sweep(sweep))
    write_plan(plan)
    try:
        first = SlurmExecutor(profile="big", profiles_file=str(profiles), hold=True, reports=False)
        outcome = first.run(plan, plan.cells)
        assert sum(s == "submitted" for s in outcome.states.values()) == 700
        assert sum(s == "deferred" for s in outcome.states.values()) == len(plan.cells) - 700
        assert len(JobBook.load(plan.output_dir).cells) == 700
        (tmp_path / "roomy").mkdir()
        roomy = write_profiles(tmp_path / "roomy",
                               big={**yaml.safe_load(profiles.read_text())["big"], "max_submit_jobs": 50000})
        second = SlurmExecutor(profile="big", profiles_file=str(roomy), hold=True, reports=False)
        outcome = second.run(plan, plan.cells)
        assert set(outcome.states.values()) == {"submitted"}
        assert len(JobBook.load(plan.output_dir).cells) == len(plan.cells)
    finally:
        cancel_sweep(plan)


def test_bench_sweep_plans_10000_cells_and_submits_arrays_within_max_array_size(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from launch.bench.sweep_submit import bench_sweep

    result = bench_sweep(profiles_file=str(write_profiles(tmp_path)), profile="test", seeds=55)
    assert result["cells"] == 10010
    # 110 base cells in one array; 9,900 transfer cells in 110 arrays: per seed, AnB, AnB+ and reverse wait for
    # bases A and B, BnB and BnB+ for base B alone; and the sweep's two report jobs (after the bases, after all)
    assert result["sbatch_calls"] == 1 + 110 + 2
    out = capsys.readouterr().out
    assert "plan (unit counts" in out and "sbatch calls" in out


def test_a_cell_another_sweeps_task_is_training_is_waited_for_not_submitted_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two sweeps over one store, both submitted held to the test cluster. The first sweep's task for base A
    holds the cell's claim (as it would once it started): the second sweep submits no base A, and its AnB array
    waits (afterok) for the first sweep's task, as Slurm itself reports in scontrol."""
    from launch.execution.slurm.executor import SlurmExecutor
    from launch.store.claims import claim_path

    profiles = write_profiles(tmp_path)
    store = str(tmp_path / "store")
    plans = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        sweep = write_sweep(tmp_path / name, name=name, store=store, variants=["AnB"],
                            datasets={h: {"dataset": "fashion_mnist", "half": h} for h in ("A", "B")},
                            transfers=[{"source": "A", "target": "B"}])
        plan = plan_sweep(load_sweep(sweep))
        write_plan(plan)
        plans.append(plan)
    first, second = plans
    assert {c.id for c in first.cells} == {c.id for c in second.cells}  # the same cells, in one store
    base_a = next(c for c in second.cells if c.variant == "base-A")
    anb = next(c for c in second.cells if c.variant == "AnB")
    try:
        SlurmExecutor(profile="test", profiles_file=str(profiles), hold=True, reports=False).run(
            first, [c for c in first.cells if c.stage == "base"])
        held = JobBook.load(first.output_dir).cells[base_a.id]
        claim_path(base_a).parent.mkdir(parents=True, exist_ok=True)
        claim_path(base_a).write_text(json.dumps({"host": "n1", "pid": 1, "job": str(held["array"]),
                                                  "task": str(held["task"]), "time": time.time(),
                                                  "token": "first"}) + "\n")
        capsys.readouterr()
        executor = SlurmExecutor(profile="test", profiles_file=str(profiles), hold=True, reports=False)
        outcome = executor.run(second, second.cells)
        assert f"is being trained by {held['job_id']}" in capsys.readouterr().out
        book = JobBook.load(second.output_dir).cells
        assert base_a.id not in book and outcome.states[base_a.id] == "submitted"
        show = subprocess.run(["scontrol", "show", "job", "--oneliner", book[anb.id]["job_id"]],
                              capture_output=True, text=True, check=True).stdout
        assert held["job_id"] in _waited_for(show), show
    finally:
        cancel_sweep(first)
        cancel_sweep(second)
