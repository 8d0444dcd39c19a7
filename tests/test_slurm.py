"""The cluster path on a real Slurm (slurm/testcluster: slurmctld + slurmd n1, n2 on 127.0.0.1).

Skipped without root or Debian's slurm-wlm/munge; in CI (MKF_REQUIRE_ALL_TESTS=1) a skip is a failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

from launch.cli import main
from launch.slurm_executor import JobBook, query_jobs
from launch.sweep import load_sweep, plan_sweep
from pipeline.train import read_result
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


def test_demo_sweep_runs_on_slurm_base_arrays_before_transfer_arrays(tmp_path: Path) -> None:
    """(a) The demo sweep (24 cells) as two job arrays; every transfer cell starts after its base finished."""
    demo = yaml.safe_load(DEMO.read_text())
    demo.update(output_dir=str(tmp_path / "out"), slurm={"profiles": {"base": "test", "transfer": "test"}},
                stages={})
    demo["data"].update(max_train_samples=1024, max_val_samples=512)
    demo["train"]["trainer"]["max_epochs"] = 1
    sweep = tmp_path / "demo.yaml"
    sweep.write_text(yaml.safe_dump(demo))
    submit(sweep, write_profiles(tmp_path))
    book = JobBook.load(tmp_path / "out")
    arrays = {(e["stage"], e["array"]) for e in book.cells.values()}
    assert len(arrays) == 2, f"one array per stage expected, got {arrays}"
    wait_for(all_finished(sweep), 900, "the demo sweep to finish on Slurm")
    plan = plan_sweep(load_sweep(sweep))
    assert len(plan.cells) == 24
    by_id = plan.by_id()
    for cell in plan.cells:
        if cell.stage == "transfer":
            base = read_result(by_id[cell.depends_on[0]].run_dir)
            mine = read_result(cell.run_dir)
            assert base and mine and mine["started_at"] >= base["finished_at"]
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
    from datamodules.fashion_mnist import fashion_batch_transform

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


def test_restart_limit_marks_the_cell_failed_instead_of_requeueing(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A cell preempted more often than max_restarts is failed (not requeued forever); a re-run resubmits it."""
    profiles = write_profiles(tmp_path, capped={**yaml.safe_load(write_profiles(tmp_path).read_text())["test"],
                                                "max_restarts": 0})
    sweep = _preemptible_sweep(tmp_path, profile="capped")
    submit(sweep, profiles)
    plan = plan_sweep(load_sweep(sweep))
    cell = plan.cells[0]
    job = cell_job(plan.output_dir, cell.id)
    wait_for(checkpoint_of(cell, job), 180, "the first checkpoint")
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    wait_for(lambda: job_state(job) == "FAILED", 120, "the capped cell to fail")
    assert query_jobs([job])[job].restarts == 0
    capsys.readouterr()
    assert main(["sweep", "status", str(plan.output_dir)]) == 0
    assert "failed: 1" in capsys.readouterr().out
    assert (Path(cell.run_dir) / "failed.json").is_file()
    # a re-run submits only the failed cell; the other base cell is finished or still queued
    submit(sweep, profiles)
    new_job = cell_job(plan.output_dir, cell.id)
    assert new_job != job
    wait_for(all_finished(sweep), 300, "the resubmitted cell")
    assert read_result(cell.run_dir)["resumed_from"] == "preempt.ckpt"  # type: ignore[index]


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
        if ("launch.cli" in cmd and env.get("SLURM_ARRAY_JOB_ID") == array and env.get("SLURM_ARRAY_TASK_ID") == task
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
    assert printed.count("sbatch --parsable") == 1 and "#!/bin/bash" in printed
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
    assert "2 already finished, 0 to run" in capsys.readouterr().out
    assert main(["sweep", "status", str(tmp_path / "out")]) == 0
    status = capsys.readouterr().out
    assert "COMPLETED" in status and "finished: 2" in status, status


def test_cancel_stops_every_array_of_the_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = _preemptible_sweep(tmp_path)
    submit(sweep, write_profiles(tmp_path))
    jobs = [e["job_id"] for e in JobBook.load(tmp_path / "out").cells.values()]
    assert main(["sweep", "cancel", str(sweep)]) == 0
    assert "cancelled arrays" in capsys.readouterr().out
    wait_for(lambda: all(job_state(j) == "CANCELLED" for j in jobs), 60, "the jobs to be cancelled")


def test_bench_sweep_plans_10000_cells_and_submits_one_array_per_stage(capsys: pytest.CaptureFixture[str],
                                                                      tmp_path: Path) -> None:
    from launch.bench_sweep import bench_sweep

    result = bench_sweep(profiles_file=str(write_profiles(tmp_path)), profile="test", seeds=55)
    assert result["cells"] == 10010
    assert result["sbatch_calls"] == 2
    out = capsys.readouterr().out
    assert "plan (cold" in out and "sbatch calls" in out
