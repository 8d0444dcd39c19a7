"""Cell claims of the shared store (launch/store/claims.py) with real processes: a live claim blocks, a dead one is taken
over, a Slurm job Slurm no longer knows is stale (and "cannot tell" keeps the claim), racing takers -> one winner."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from launch.core.exits import EX_TEMPFAIL
from launch.store import claims
from launch.worker.lifecycle import run_once


def holder_of(proc: subprocess.Popen[bytes] | None = None, **extra: object) -> dict[str, object]:
    """A claim record for another process of this host (a real one: ``proc``)."""
    pid = proc.pid if proc is not None else 0
    return {"host": socket.gethostname(), "pid": pid, "start": claims._proc_start(pid) if proc else None,
            "job": None, "task": None, "time": time.time(), "token": f"tok-{pid}", **extra}


def write_claim(run_dir: Path, holder: dict[str, object]) -> None:
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    claims.claim_path(run_dir).write_text(json.dumps(holder))


@pytest.fixture
def sleeper() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_claim_is_exclusive_and_released_only_by_its_holder(tmp_path: Path,
                                                            sleeper: subprocess.Popen[bytes]) -> None:
    run_dir = tmp_path / "store" / "abc123"
    mine = claims.claim(run_dir)
    assert mine is not None and claims.claim_holder(run_dir)["pid"] == os.getpid()
    assert claims.claim(run_dir) is not None  # this very process again: re-entrant, same token
    assert claims.claim_holder(run_dir)["token"] == mine.holder["token"]
    claims.release(mine)
    assert claims.claim_holder(run_dir) is None

    write_claim(run_dir, holder_of(sleeper))  # a live process of this host holds it
    assert claims.claim(run_dir) is None
    claims.release(mine)  # not ours any more: left alone
    assert claims.claim_holder(run_dir)["pid"] == sleeper.pid


def test_a_claim_whose_process_is_gone_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = tmp_path / "store" / "abc123"
    write_claim(run_dir, holder_of(dead))
    assert claims.holder_alive(claims.claim_holder(run_dir)) is False
    got = claims.claim(run_dir)
    assert got is not None and claims.claim_holder(run_dir)["token"] == got.holder["token"]
    assert not list(run_dir.parent.glob("*.takeover-*")), "the takeover marker is removed"


def test_a_reused_pid_is_not_the_claimer(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    run_dir = tmp_path / "store" / "abc123"
    write_claim(run_dir, holder_of(sleeper, start="1"))  # same pid, another start time: the claimer is gone
    assert claims.claim(run_dir) is not None


def fake_squeue(folder: Path, known_jobs: list[str]) -> Path:
    """An squeue answering like Slurm's: lists known jobs, 'Invalid job id specified' (exit 1) for others."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "squeue"
    script.write_text("#!/bin/sh\n"
                      "while [ $# -gt 0 ]; do [ \"$1\" = -j ] && job=$2; shift; done\n"
                      f"for k in {' '.join(known_jobs)}; do [ \"$k\" = \"$job\" ] && echo \"$job RUNNING\" && exit 0; done\n"
                      "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1\n")
    script.chmod(0o755)
    return folder


def test_slurm_claims_stale_when_squeue_no_longer_knows_the_job(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "store" / "abc123"
    other = {"host": "gpu-node-17", "pid": 4242, "start": None, "time": time.time()}
    # no squeue on this machine (or one that cannot reach a controller): cannot tell -> the claim is kept
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    write_claim(run_dir, {**other, "job": "999999", "task": "3", "token": "t1"})
    assert claims.holder_alive(claims.claim_holder(run_dir)) is None
    assert claims.claim(run_dir) is None
    # Slurm still runs array task 777_3: kept; job 999999 is gone: taken over
    monkeypatch.setenv("PATH", f"{fake_squeue(tmp_path / 'bin', ['777_3'])}:/usr/bin:/bin")
    write_claim(run_dir, {**other, "job": "777", "task": "3", "token": "t2"})
    assert claims.claim(run_dir) is None
    write_claim(run_dir, {**other, "job": "999999", "task": "3", "token": "t3"})
    got = claims.claim(run_dir)
    assert got is not None and claims.claim_holder(run_dir)["token"] == got.holder["token"]


def test_the_same_slurm_job_requeued_reclaims_its_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "store" / "abc123"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "555")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    write_claim(run_dir, {"host": "gpu-node-1", "pid": 1, "job": "555", "task": "7", "time": 0, "token": "old"})
    got = claims.claim(run_dir)  # the requeued job (new host, new pid) is the same claimer
    assert got is not None and claims.claim_holder(run_dir)["host"] == socket.gethostname()


def _race(run_dir: str, barrier: multiprocessing.synchronize.Barrier, wins: multiprocessing.Queue) -> None:
    barrier.wait()
    got = claims.claim(run_dir)
    wins.put((os.getpid(), got.holder["token"] if got else None))


def test_racing_takers_of_one_stale_claim_have_one_winner(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    for round_ in range(3):
        run_dir = tmp_path / "store" / f"cell{round_}"
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        write_claim(run_dir, holder_of(dead))
        barrier, wins = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(str(run_dir), barrier, wins)) for _ in range(6)]
        for p in procs:
            p.start()
        results = [wins.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
        winners = [tok for _, tok in results if tok]
        assert len(winners) == 1, results
        assert claims.claim_holder(run_dir)["token"] == winners[0]


def finish(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "result.json").write_text(json.dumps({"status": "finished", "top1": 0.5}))


def test_run_once_skips_finished_waits_for_a_live_holder_and_trains_otherwise(
        tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    config = tmp_path / "cell.yaml"
    run_dir = tmp_path / "store" / "abc123"
    config.write_text(f"run_dir: {run_dir}\n")
    trained: list[str] = []
    said: list[str] = []

    def train() -> int:
        assert claims.claim_holder(run_dir)["pid"] == os.getpid(), "trains with the claim held"
        finish(run_dir)
        trained.append("x")
        return 0

    # another live process trains it: wait (no training here), return 0 once its result appears
    write_claim(run_dir, holder_of(sleeper))
    threading.Timer(1.0, finish, [run_dir]).start()
    assert run_once(config, train, poll_s=0.1, say=said.append) == 0
    assert trained == [] and "being trained by pid" in said[0] and "finished by another sweep" in said[-1]
    # finished: nothing to do, nothing claimed
    assert run_once(config, train, say=said.append) == 0 and trained == []
    # the holder gives up without finishing: a timeout says so; once its claim is gone, we train
    (run_dir / "result.json").unlink()
    assert run_once(config, train, poll_s=0.1, wait_s=0.3, say=said.append) == EX_TEMPFAIL
    assert "gave up after" in said[-1] and trained == []
    claims.claim_path(run_dir).unlink()
    assert run_once(config, train, poll_s=0.1, say=said.append) == 0
    assert trained == ["x"] and claims.claim_holder(run_dir) is None, "released after training"


CHILD_RANK = """
import sys
from launch.worker.lifecycle import run_once
sys.exit(run_once(sys.argv[1], lambda: 7, poll_s=0.1, wait_s=2.0))
"""


def test_a_rank_started_by_the_claims_holder_trains_under_it_and_a_stranger_waits(tmp_path: Path) -> None:
    """A local 2-device `mkf train`: rank 0 claims the cell, then Lightning starts rank 1 as its child, running
    the same `mkf train`. Rank 1 must train at once (waiting for its own rank 0 deadlocks the process group);
    a process the holder did not start still waits for it."""
    config = tmp_path / "cell.yaml"
    run_dir = tmp_path / "store" / "abc123"
    config.write_text(f"run_dir: {run_dir}\n")
    held = claims.claim(run_dir)  # this process is rank 0
    assert held is not None
    try:
        child = subprocess.run([sys.executable, "-c", CHILD_RANK, str(config)], cwd=Path(__file__).parents[1],
                               timeout=60)
        assert child.returncode == 7, "the holder's own child waited for the claim instead of training"
        # a stranger: started by another process (here: a shell that this process did not start as the rank)
        stranger = subprocess.run(["sh", "-c", f'"{sys.executable}" -c \'{CHILD_RANK}\' "{config}"; exit $?'],
                                  cwd=Path(__file__).parents[1], timeout=60)
        assert stranger.returncode == EX_TEMPFAIL, "a process the holder did not start trained a claimed cell"
        assert claims.claim_holder(run_dir)["pid"] == os.getpid(), "the child's run left rank 0's claim alone"
    finally:
        claims.release(held)
