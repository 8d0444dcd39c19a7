"""The cell lifecycle (launch/worker/lifecycle.py) and the checkpoint policy it relies on, without a cluster:
one claimer per job, a preemption recorded before its checkpoint, a signal honoured during validation, no second
copy of a checkpoint in memory and no temp file outliving a killed write, configs never rewritten under a task,
a failed cell that a rerun can train again. The same faults on a real Slurm are tests/test_faults.py."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from launch.store import claims
from launch.worker import lifecycle
from pipeline.results import run_folder
from pipeline.training.resume import AtomicCheckpointIO, Preempted, PreemptionHandler
from pipeline.training.train import train_cell
from tests.conftest import cell_config


def _rank(run_dir: str, rank: int, barrier: Any, out: Any) -> None:
    os.environ.update(SLURM_JOB_ID="4242", SLURM_ARRAY_JOB_ID="4242", SLURM_ARRAY_TASK_ID="3", SLURM_PROCID=str(rank),
                      SLURM_RESTART_COUNT="0", MKF_RANK_WAIT_S="60")
    barrier.wait()
    try:
        decision = lifecycle.start_rank(run_dir)
        out.put((rank, decision, claims.claim_holder(run_dir)))
        barrier.wait()  # every rank decided before rank 0 lets go
        lifecycle.end_rank(run_dir)
    except BaseException as exc:  # noqa: BLE001
        out.put((rank, f"crashed: {type(exc).__name__}: {exc}", None))


def test_eight_ranks_of_one_job_have_one_claimer() -> None:
    """Every rank of a Slurm job starts the cell at once. Before, each rank rewrote the claim through one temp
    name: a rank crashed (FileNotFoundError) in 18 of 30 starts at 8 ranks, or was told someone else held it."""
    import tempfile

    ctx = multiprocessing.get_context("fork")
    for trial in range(10):
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = str(Path(tmp) / "store" / f"cell{trial}")
            barrier, out = ctx.Barrier(8), ctx.Queue()
            procs = [ctx.Process(target=_rank, args=(run_dir, r, barrier, out)) for r in range(8)]
            for p in procs:
                p.start()
            results = sorted(out.get(timeout=120) for _ in procs)
            for p in procs:
                p.join(60)
            assert [d for _, d, _ in results] == ["train"] * 8, results
            holders = {json.dumps(h, sort_keys=True) for _, _, h in results}
            assert len(holders) == 1 and json.loads(holders.pop())["job"] == "4242", "one claim, written once"
            assert claims.claim_holder(run_dir) is None, "rank 0 released it at the end"
            assert not list(Path(run_dir).parent.glob("*.decision-*")), "rank 0 removed its decision"


def test_a_slurm_task_does_not_wait_unbounded_for_another_holder(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Another job holds the cell: the task waits a bounded time, then requeues itself rather than holding its
    allocation; when Slurm refuses the requeue it fails (exit 75), it never hangs."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run_dir = tmp_path / "cell"
        claims.claim(run_dir, {**claims.me(), "pid": sleeper.pid, "start": None, "job": None, "task": None})
        monkeypatch.setenv("SLURM_JOB_ID", "77")
        monkeypatch.setenv("SLURM_PROCID", "0")
        monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.environ["PATH"])
        (tmp_path / "bin").mkdir()
        fake = tmp_path / "bin" / "scontrol"
        fake.write_text("#!/bin/sh\necho \"scontrol: error: $*\" >&2\nexit 1\n")
        fake.chmod(0o755)
        said: list[str] = []
        config = tmp_path / "c.yaml"
        config.write_text(f"run_dir: {run_dir}\n")
        code = lifecycle.run_once(config, lambda: 0, say=said.append, wait_s=0.5, poll_s=0.1)
        assert code == lifecycle.EX_TEMPFAIL and any("requeuing this task" in s for s in said)
        assert claims.claim_holder(run_dir)["pid"] == sleeper.pid, "the holder's claim is left alone"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_transfer_cell_whose_base_failed_is_blocked_not_charged(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    run_folder.mark_failed(base, "crashed")
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"run_dir": str(tmp_path / "cell"),
                                  "transfer": {"base": str(base), "init": "copy", "depth": 1}}))
    trained: list[int] = []
    assert lifecycle.run_once(config, lambda: trained.append(1) or 0, say=lambda m: None) == 0
    assert trained == [] and run_folder.read_attempts(tmp_path / "cell")["failures"] == 0


@pytest.mark.usefixtures("fashion_root")
def test_a_preemption_is_recorded_before_its_checkpoint_is_written(tmp_path: Path) -> None:
    """A checkpoint that outlasts KillWait must still leave a preemption on record, not a failure."""
    order: list[str] = []
    cfg = cell_config(tmp_path / "cell")

    class Stop(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            if trainer.global_step == 2:
                handler.signum = signal.SIGTERM

    handler = PreemptionHandler(tmp_path / "cell" / "checkpoints" / "preempt.ckpt", signals=(signal.SIGTERM,),
                                requeue_on=(), on_preempt=lambda s: order.append(
                                    "recorded" + ("" if (tmp_path / "cell/checkpoints/preempt.ckpt").exists()
                                                  else " before the checkpoint")))
    with pytest.raises(Preempted):
        train_cell(cfg, callbacks=[handler, Stop()])
    assert order == ["recorded before the checkpoint"]
    assert (tmp_path / "cell" / "checkpoints" / "preempt.ckpt").is_file()


@pytest.mark.usefixtures("fashion_root")
def test_a_signal_during_validation_stops_the_pass_and_the_cell_resumes_exactly(tmp_path: Path) -> None:
    """Before, signals were read at training batch ends only: a TERM during a long validation pass waited for its
    end (KillWait then killed the job: a failure, no checkpoint)."""
    def cfg(name: str) -> Any:
        return cell_config(tmp_path / name, data={"max_val_samples": 512, "batch_size": 32},
                           trainer={"max_epochs": 2})

    train_cell(cfg("reference"))

    class SignalInValidation(L.Callback):
        seen = 0

        def on_validation_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            if trainer.sanity_checking:
                return
            self.seen += 1
            if trainer.current_epoch == 0 and self.seen == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    counter = SignalInValidation()
    handler = PreemptionHandler(tmp_path / "cell" / "checkpoints" / "preempt.ckpt", signals=(signal.SIGTERM,),
                                requeue_on=())
    with pytest.raises(Preempted):
        train_cell(cfg("cell"), callbacks=[handler, counter])
    assert counter.seen < 512 // 32, "stopped inside the validation pass, not after it"
    result = train_cell(cfg("cell"))
    assert result["resumed_from"] == "preempt.ckpt" and result["steps"] == 2 * (512 // 32)
    want, got = load_file(tmp_path / "reference" / "weights.safetensors"), load_file(
        tmp_path / "cell" / "weights.safetensors")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_a_checkpoint_is_streamed_to_a_temp_file_beside_it_and_a_killed_write_is_cleaned(tmp_path: Path,
                                                                                      monkeypatch: pytest.MonkeyPatch
                                                                                      ) -> None:
    import io

    largest: list[int] = [0]
    real = io.BytesIO

    class Measured(real):  # type: ignore[misc,valid-type]
        def write(self, data: Any) -> int:  # the pickle of the dict's structure is small; tensors stream by
            written = super().write(data)
            largest[0] = max(largest[0], self.tell())
            return written

    monkeypatch.setattr(io, "BytesIO", Measured)
    seen: list[Path] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (seen.extend(Path(tmp_path / "ck").glob(".*.tmp-*")),
                                                 real_fsync(fd))[1])
    weights = torch.ones(4_000_000)  # 16 MB
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": weights}, "loops": {}}, tmp_path / "ck" / "x.ckpt")
    assert largest[0] < 1_000_000, f"a {largest[0]:,}-byte copy in memory: the checkpoint must stream to disk"
    assert seen and seen[0].parent == tmp_path / "ck", "the temp file lives beside the checkpoint"
    assert (tmp_path / "ck" / "x.ckpt").is_file() and not list((tmp_path / "ck").glob(".*.tmp-*"))
    # a write killed midway leaves its temp file: the next attempt deletes it
    run_dir = tmp_path / "cell"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / ".last.ckpt.tmp-123").write_bytes(b"half")
    (run_dir / "result.json.tmp").write_text("{")
    assert lifecycle.begin_attempt(run_dir) is None
    assert not list(run_dir.rglob("*.tmp*"))


def test_a_failed_cell_can_be_trained_again_by_a_rerun(tmp_path: Path) -> None:
    """After max_restarts failures (slow checkpoints, a flaky node) the cell is failed; a rerun of the sweep used to
    clear failed.json but not the count, so the cell was refused for good."""
    run_dir = tmp_path / "cell"
    for _ in range(4):
        lifecycle.begin_attempt(run_dir)
        lifecycle.failed(run_dir, "RuntimeError: node lost")
    assert lifecycle.begin_attempt(run_dir, max_restarts=3) is not None
    run_folder.mark_failed(run_dir, "limit")
    from launch.core.plan import Cell, SweepPlan
    from launch.store.state import clear_failure

    cell = Cell("c", "base", "convnext_demo", "base-A", None, 0, "", [], str(run_dir), str(tmp_path / "c.yaml"))
    clear_failure(SweepPlan("s", tmp_path, [cell]), cell)
    assert lifecycle.begin_attempt(run_dir, max_restarts=3) is None
    history = run_folder.read_attempts(run_dir)["history"]
    assert any(h["outcome"] == "reset" and h["failures_before"] == 4 for h in history), "the history keeps it"


def test_configs_are_written_atomically_and_never_rewritten_unchanged(tmp_path: Path) -> None:
    import yaml

    from launch.core.plan import materialize_configs
    from launch.planning.planner import plan_sweep
    from launch.planning.schema import parse_sweep

    plan = plan_sweep(parse_sweep({"name": "c", "output_dir": str(tmp_path / "out"), "archs": [{"arch": "convnext_demo"}],
                                   "data": {"split": {"kind": "random_halves", "seed": 0}}, "depths": [1],
                                   "variants": ["AnB"]}))
    assert materialize_configs(plan, plan.cells) == len(plan.cells)
    stamps = {c.id: os.stat(c.config_path).st_mtime_ns for c in plan.cells}
    assert materialize_configs(plan, plan.cells) == 0, "a second run rewrites nothing a task may be reading"
    assert stamps == {c.id: os.stat(c.config_path).st_mtime_ns for c in plan.cells}
    assert all(yaml.safe_load(Path(c.config_path).read_text())["run_dir"] == c.run_dir for c in plan.cells)
    assert not list((tmp_path / "out" / "configs").glob(".*tmp*"))
