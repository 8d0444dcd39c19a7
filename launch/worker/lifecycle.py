"""The cell lifecycle, written once: claim -> attempt -> checkpoint -> result -> release.

Every process that trains a cell goes through here: ``mkf train`` run locally or by the local executor, a bundle
worker, every rank of a Slurm array task. Each fault a cluster throws has one place here (or in the training's
:class:`pipeline.training.resume.PreemptionHandler`, which calls back into it) to be handled::

    decide ── finished   the cell has a result: nothing to do
           ── blocked    a base it copies from is not finished (failed, cancelled): not trained, not charged
           ── deferred   another live holder trains it: waited a bounded time, then left to it (a Slurm task
                         requeues itself instead of holding its allocation)
           ── train ──> attempt started ──> [checkpoints] ──> finished ──> release
                                        ├─> preempting -> preempted  (recorded BEFORE the checkpoint is written)
                                        ├─> failed                   (a crash: charged against max_restarts)
                                        └─> bad_input                (a UserError: one line in the log, not
                                                                      charged; the cell is marked failed)
           (refused: more failures than max_restarts, decided when the attempt would start)

**One claimer per job.** Rank 0 claims (:mod:`launch.store.claims`) and writes its decision next to the claim
(``<run_dir>.claim.decision-<job>_<task>-<restart>``); ranks 1.. of the same job read that decision and never
write or release the claim (they used to rewrite it through one temp name -- a rank crashed in 2 of 30 starts at
4 ranks, 18 of 30 at 8 -- and release it while rank 0 was still writing the result). Ranks of a local multi-device
cell are children of rank 0's process and train under its claim (:func:`claimed_by_parent`).

**No unbounded waits.** A holder on this host that died is taken over at once; otherwise a Slurm task waits at most
``MKF_CLAIM_WAIT_S`` (default 30 s) and then requeues itself (the executor already makes a sweep's tasks depend on
a holder's job where it can see it), a local process at most ``MKF_CLAIM_TIMEOUT`` (default 6 h; exit 75); the
holder's liveness is polled with a backoff from 5 s to 60 s (one ``squeue -j`` of the holder's job per poll, rank 0
only).

**Attempts** (``attempts.json``, :mod:`pipeline.results.run_folder`): preemptions and failures counted apart, the
failure count reset by a re-run that asks for it (``mkf sweep run`` clears a failure); a preemption is recorded when
the trainer decides to stop, before its checkpoint is written, so a checkpoint that outlasts Slurm's KillWait is
still a preemption, never a failure. Temporary files a killed checkpoint write left are deleted when the next
attempt starts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launch.core.exits import EX_TEMPFAIL
from launch.store.claims import (
    claim,
    claim_holder,
    claim_path,
    claimed_by_parent,
    describe,
    holder_alive,
    release,
)
from pipeline.results import run_folder

DECISIONS = ("train", "finished", "blocked", "deferred")
SLURM_WAIT_S = 30.0  # a Slurm task waits this long for another holder, then requeues (its allocation is a GPU's)
LOCAL_WAIT_S = 6 * 3600.0
RANK_WAIT_S = 900.0  # ranks 1.. wait this long for rank 0's decision (rank 0 itself waits at most SLURM_WAIT_S)


@dataclass(frozen=True)
class Where:
    """Which process of which job this is (from Slurm's environment; a local process is rank 0 of no job)."""

    rank: int = 0
    job: str | None = None
    task: str | None = None
    restart: int = 0

    @property
    def slurm(self) -> bool:
        return self.job is not None

    @classmethod
    def from_env(cls) -> Where:
        env = os.environ
        job = env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID")
        task = env.get("SLURM_ARRAY_TASK_ID") if env.get("SLURM_ARRAY_JOB_ID") else None
        in_step = job is not None and "SLURM_PROCID" in env
        rank = int(env.get("SLURM_PROCID", "0") or 0) if in_step else 0
        return cls(rank=rank, job=job if in_step else None, task=task if in_step else None,
                   restart=int(env.get("SLURM_RESTART_COUNT") or 0))


def decision_path(run_dir: str | Path, where: Where) -> Path:
    path = claim_path(run_dir)
    return path.with_name(f"{path.name}.decision-{where.job}_{where.task}-{where.restart}")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(json.dumps(data) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def unfinished_base(config: dict[str, Any] | None) -> str | None:
    """The base run folder a transfer cell copies from, when it exists but has no result (failed, cancelled, or
    still training elsewhere); None when the cell copies nothing or its base is finished. A folder that holds
    final weights but no result.json is a base made outside a sweep (its weights are what the transfer reads),
    not an unfinished cell. A base path that does not exist at all is the transfer's own one-line error (a
    mistyped path), not a block."""
    transfer = (config or {}).get("transfer") or {}
    base = transfer.get("base") if transfer.get("init") != "random" else None
    if not base or str(base).startswith("timm:"):
        return None
    base = Path(str(base))
    if base.is_dir() and run_folder.read_result(base) is None and not (base / run_folder.WEIGHTS_FILE).is_file():
        return str(base)
    return None


class CellLifecycle:
    """The lifecycle of one cell in one process (see the module doc)."""

    def __init__(self, run_dir: str | Path, config: dict[str, Any] | None = None, where: Where | None = None,
                 say: Callable[[str], None] | None = None, wait_s: float | None = None,
                 poll_s: float | None = None) -> None:
        self.run_dir = Path(run_dir)
        # the first liveness poll (then x1.5 up to 60 s); MKF_CLAIM_POLL sets it for tests and impatient users
        self.poll_s = poll_s if poll_s is not None else float(os.environ.get("MKF_CLAIM_POLL") or 5.0)
        self.config = config
        self.where = where or Where.from_env()
        self.say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
        env_wait = os.environ.get("MKF_CLAIM_WAIT_S" if self.where.slurm else "MKF_CLAIM_TIMEOUT")
        self.wait_s = wait_s if wait_s is not None else (
            float(env_wait) if env_wait else SLURM_WAIT_S if self.where.slurm else LOCAL_WAIT_S)
        self.held = None  # the claim, while rank 0 holds it
        self.holder: dict[str, Any] = {}  # who else holds it, when deferred

    # ---- decide: claim, or finished / blocked / deferred ------------------------------------------------------
    def decide(self) -> str:
        if self.where.rank > 0:
            return self._follow_rank0()
        decision = self._decide()
        if self.where.slurm:  # ranks 1.. of this job act on it, whatever it is
            _write_json(decision_path(self.run_dir, self.where), {"decision": decision, "time": time.time()})
        return decision

    def _decide(self) -> str:
        if run_folder.run_state(self.run_dir) == "finished":
            self.say(f"mkf: {self.run_dir}: already finished (shared store); nothing to train")
            return "finished"
        base = unfinished_base(self.config)
        if base is not None:
            self.say(f"mkf: {self.run_dir}: its base {base} has not finished (failed or cancelled); not trained, "
                     "not charged: rerun the sweep once the base is trained")
            return "blocked"
        if claimed_by_parent(self.run_dir):  # a rank its holder started locally: trains under that claim
            return "train"
        started, poll, told = time.monotonic(), self.poll_s, -1.0
        while True:
            self.held = claim(self.run_dir)
            if self.held is not None:
                if run_folder.run_state(self.run_dir) == "finished":  # finished by the holder we waited for
                    release(self.held)
                    self.held = None
                    self.say(f"mkf: {self.run_dir}: finished by another sweep; nothing to train")
                    return "finished"
                return "train"
            if run_folder.run_state(self.run_dir) == "finished":
                self.say(f"mkf: {self.run_dir}: finished by another sweep; nothing to train")
                return "finished"
            self.holder = claim_holder(self.run_dir) or {}
            waited = time.monotonic() - started
            if waited >= self.wait_s:
                return "deferred"
            if told < 0 or waited - told >= 600:
                self.say(f"mkf: {self.run_dir}: being trained by {describe(self.holder)}; waiting for it (at most "
                         f"{self.wait_s:.0f} s)")
                told = waited
            time.sleep(min(poll, max(0.1, self.wait_s - waited)))
            poll = min(60.0, max(poll, poll * 1.5))

    def _follow_rank0(self) -> str:
        path = decision_path(self.run_dir, self.where)
        deadline, poll = time.monotonic() + float(os.environ.get("MKF_RANK_WAIT_S") or RANK_WAIT_S), 0.05
        while time.monotonic() < deadline:
            try:
                decision = json.loads(path.read_text()).get("decision")
            except (OSError, ValueError):
                decision = None
            if decision in DECISIONS:
                return str(decision)
            time.sleep(poll)
            poll = min(1.0, poll * 1.5)
        self.say(f"mkf: {self.run_dir}: rank {self.where.rank} got no decision from rank 0 of job {self.where.job}; "
                 "stopping (rank 0 failed before deciding: see its log)")
        return "deferred"

    # ---- end: release what rank 0 holds ----------------------------------------------------------------------
    def end(self) -> None:
        if self.where.rank > 0:
            return  # never the claim's owner
        release(self.held)
        self.held = None
        if self.where.slurm:
            decision_path(self.run_dir, self.where).unlink(missing_ok=True)

    def defer(self) -> int:
        """Leave the cell to its live holder: a Slurm task requeues itself (its allocation goes back; the task
        starts again after Slurm's requeue delay and finds the cell finished, or its holder gone); a local
        process gives up with exit status 75."""
        if self.where.slurm and self.where.rank == 0:
            alive = holder_alive(self.holder) if self.holder else None
            self.say(f"mkf: {self.run_dir}: held by {describe(self.holder)} (alive: {alive}); requeuing this task "
                     "rather than holding its allocation")
            if requeue_self():
                return 0
            self.say(f"mkf: {self.run_dir}: scontrol requeue failed; this task fails so that a rerun of the sweep "
                     "resubmits the cell")
            return EX_TEMPFAIL
        if self.where.slurm:
            return 0
        self.say(f"mkf: {self.run_dir}: gave up after {self.wait_s:.0f} s waiting for {describe(self.holder)} to "
                 f"train it; rerun later, or delete {claim_path(self.run_dir)} if that holder is gone")
        return EX_TEMPFAIL


# ---- attempts: the states of one training attempt -------------------------------------------------------------
def details(where: Where | None = None) -> dict[str, Any]:
    where = where or Where.from_env()
    out: dict[str, Any] = {"host": os.environ.get("SLURMD_NODENAME") or socket.gethostname(), "pid": os.getpid()}
    if where.slurm:
        out.update(job=f"{where.job}_{where.task}" if where.task is not None else where.job,
                   slurm_restart=where.restart)
    return out


def clean_partial_writes(run_dir: Path) -> int:
    """Delete what a killed write left: checkpoint temp files (``.last.ckpt.tmp-<pid>``), temp result/weights."""
    removed = 0
    for folder in (run_dir, run_dir / run_folder.CHECKPOINT_DIR):
        if folder.is_dir():
            for path in folder.iterdir():
                if path.is_file() and (".tmp" in path.name and (path.name.startswith(".") or path.suffix == ".tmp")):
                    path.unlink(missing_ok=True)
                    removed += 1
    return removed


def begin_attempt(run_dir: str | Path, max_restarts: int | None = None, **extra: Any) -> str | None:
    """Start an attempt (rank 0): an attempt still open ended without a word (killed) and counts as a failure;
    more failures than ``max_restarts`` refuse the cell (returned: why); temp files of killed writes go."""
    run_dir = Path(run_dir)
    if run_folder.last_open_attempt(run_dir) is not None:
        run_folder.record_attempt(run_dir, "failed", reason="ended without recording an outcome (killed or crashed)",
                                  **details(), **extra)
    failures = run_folder.read_attempts(run_dir)["failures"]
    if max_restarts is not None and failures > max_restarts:
        return f"failed {failures} times, limit max_restarts={max_restarts} (preemptions are not counted)"
    clean_partial_writes(run_dir)
    run_folder.record_attempt(run_dir, "started", **details(), **extra)
    return None


def preempting(run_dir: str | Path, signame: str, **extra: Any) -> None:
    """The trainer decided to stop on a preemption signal: recorded before the checkpoint is written."""
    run_folder.record_attempt(run_dir, "preempted", signal=signame, **details(), **extra)


def finished(run_dir: str | Path, **extra: Any) -> None:
    run_folder.record_attempt(run_dir, "finished", **details(), **extra)


def failed(run_dir: str | Path, reason: str, bad_input: bool = False, **extra: Any) -> None:
    """A crash counts against the cell (``failures`` in attempts.json). Bad input (a UserError) is not the
    cell's fault: its attempt ends as ``bad_input``, not charged, and the cell is marked failed at once (it would
    fail the same way every time; fixing the input and rerunning the sweep clears the mark)."""
    outcome = "bad_input" if bad_input else "failed"
    run_folder.record_attempt(run_dir, outcome, reason=reason[:500], **details(), **extra)
    if bad_input:
        run_folder.mark_failed(run_dir, reason, bad_input=True, **details())


def requeue_self() -> bool:
    """``scontrol requeue`` this job (array task): True only when Slurm accepted it."""
    where = Where.from_env()
    if not where.slurm:
        return False
    ident = f"{where.job}_{where.task}" if where.task is not None else str(where.job)
    try:
        proc = subprocess.run(["scontrol", "requeue", ident], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


# ---- the whole lifecycle around a training callable ------------------------------------------------------------
def run_once(config_path: str | Path, train: Callable[[], int | None], run_dir: str | Path | None = None,
             say: Callable[[str], None] | None = None, wait_s: float | None = None,
             poll_s: float | None = None) -> int:
    """Train the cell of ``config_path`` unless it is finished, blocked, or someone else trains it.

    ``train`` is called with the claim held (rank 0) or under rank 0's decision (ranks 1..); its status is
    returned. ``run_dir`` overrides the config's.
    """
    from pipeline.config import load_yaml

    config = load_yaml(config_path) if Path(config_path).is_file() else None
    config = config if isinstance(config, dict) else None
    run_dir = Path(run_dir or (config or {}).get("run_dir") or "runs/cell")
    life = CellLifecycle(run_dir, config, say=say, wait_s=wait_s, poll_s=poll_s)
    decision = life.decide()
    try:
        if decision == "train":
            if life.where.rank == 0:  # what a killed write left (a checkpoint's temp file) goes before training
                clean_partial_writes(run_dir)
            return int(train() or 0)
        if decision == "deferred":
            return life.defer()
        return 0
    finally:
        life.end()


def start_rank(run_dir: str | Path) -> str:
    """This process's decision for the cell (the fault harness's view of one rank): train, finished, blocked or
    deferred. Pair with :func:`end_rank`."""
    life = CellLifecycle(run_dir)
    decision = life.decide()
    _open[str(run_dir)] = life
    return decision


def end_rank(run_dir: str | Path, outcome: str = "") -> None:
    life = _open.pop(str(run_dir), None)
    if life is not None:
        life.end()


_open: dict[str, CellLifecycle] = {}
