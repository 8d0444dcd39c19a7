"""The rows of the fault table: one fault of issue 23 at one transition of a cell's lifecycle, injected on real
cells (convnext_demo on a few Fashion-MNIST images, seconds each), then the invariants (:mod:`tests.faults.harness`).

A row's own check (the fault's) comes where the fault shows (``Scenario.fail``: the row ends there, or with
MKF_FAULT_ALL=1 carries on); the shared invariants (i)-(v) follow on every cell the row ran (``check_cells``).
The first failure names the row's outcome in the table.

How each injection stands for the real fault:

- claim: 8 processes with one job's SLURM_* ids, started through a file barrier, are what `srun` starts: every rank
  of the step runs the same start of the cell at the same moment;
- checkpoint: ``os.fsync`` of a checkpoint temp file sleeps (both today's and a fixed writer fsync the temp before
  the rename), and the process is SIGKILLed while that temp file exists: a node lost mid-write;
- validation: 12 validation steps of 4 s (a real validation pass over many batches), then Slurm's own signals:
  ``scontrol requeue`` (TERM to the step, KILL after KillWait = 30 s) and ``scancel --signal=USR1 --full``;
- requeue: ``scontrol requeue`` answers as a controller that timed out (the PATH wrapper inside the job);
- sbatch: sbatch answers as a controller that timed out, or submits and never replies (the caller's timeout);
- planner: ``scancel`` of the planner job while it waits for its round;
- holder: two sweeps over one store, their tasks released together, the holder trains a minute per step (a long
  cell) and is ``scancel``ed; locally, two ``mkf train`` of one cell and ``kill -9`` of the holder;
- bundle: the 2nd cell of a bundle worker raises CUDA's "illegal memory access", and so does every later cell of
  that process (a CUDA context stays broken), once per scenario;
- config: the queued task's config YAML truncated to 0 bytes (a rewrite caught mid-way), then released.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from tests.faults.harness import (
    HARNESS,
    HERE,
    I_BOUNDED,
    I_FINISHED,
    PYTHON,
    Cell,
    Row,
    RowFailure,
    Scenario,
    pid_alive,
    run_key,
    temp_files,
)

# A preemption signal during validation must stop the cell within GRACE_S: under the test cluster's KillWait (30 s),
# which is what a real requeue allows, and far under the 48 s pass. The bound counts from before `scontrol`/`scancel`
# is called and includes one validation step, the checkpoint and the process's exit, all on 2 cores shared with the
# other rows (the CI run that had 15 s here measured 15.x s). Before the fix TERM took 30 s (KillWait's SIGKILL).
GRACE_S = 25.0
VAL_STEPS = 12
WAIT_BOUND_S = 45.0  # a task waiting for another holder may hold its allocation this long, no longer
VAL_STEP_S = 4.0  # each of the VAL_STEPS validation steps of the long validation pass
DEAD_WORDS = ("dead", "gone", "not running", "no longer", "cancelled", "canceled", "failed", "missing", "lost")
SPLIT = {"kind": "random_halves", "seed": 0}
DATA = {"dataset": "fashion_mnist", "split": SPLIT, "batch_size": 32, "max_train_samples": 128,
        "max_val_samples": 64}


# ---- sweeps, profiles and cell configs -------------------------------------------------------------------------
def profiles(s: Scenario) -> Path:
    base = {"partition": "debug", "time": "00:20:00", "cpus_per_task": 1, "mem": "1000M", "signal_grace_s": 30,
            "max_restarts": 2, "preempt_check_steps": 1, "python": PYTHON,
            "env": {"MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}}
    body = {"fault": base, "fault-bundle": {**base, "task_length": "30min"},
            # 2 nodes x 2 CPU ranks: 2 tasks per node, and --devices 2 (bin/python-ranks), as gpus_per_node: 2 would
            "fault-2x2": {**base, "nodes": 2, "python": str(s.bins / "python-ranks"),
                          "extra_sbatch": ["--ntasks-per-node=2"]}}
    path = s.dir / "profiles.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def sweep(s: Scenario, name: str, profile: str = "fault", **changes: Any) -> tuple[Path, Path]:
    """A sweep file of tiny cells in the scenario folder; returns (sweep file, output folder)."""
    out = s.dir / f"{name}-out"
    body = {"name": name, "output_dir": str(out), "seeds": [0], "data": dict(DATA),
            "archs": [{"arch": "convnext_demo", "unit_kind": "depthwise"}], "depths": [1], "variants": [],
            "train": {"trainer": {"max_epochs": 1, "progress_bar": False, "log_every_n_steps": 1}},
            "slurm": {"profiles": {"base": profile, "transfer": profile}}, **changes}
    path = s.dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path, out


def cell_config(s: Scenario, name: str, **trainer: Any) -> Path:
    """A cell config for `mkf train` here (no Slurm): 128 images, batch 32, 4 steps."""
    body = {"run_dir": str(s.dir / name), "seed": 0, "data": dict(DATA, half="B"),
            "model": {"arch": "convnext_demo"}, "optim": {"lr": 0.004, "warmup_steps": 2},
            "trainer": {"max_epochs": 1, "progress_bar": False, "accelerator": "cpu", "devices": 1,
                        "log_every_n_steps": 1, **trainer}}
    path = s.dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def one_cell(s: Scenario, out: Path) -> Cell:
    cells = s.cells(out)
    if len(cells) != 1:
        raise RowFailure(HARNESS, f"expected one cell config under {out}, found {len(cells)}")
    return cells[0]


def task_started(s: Scenario, cell: Cell, what: str, timeout: float = 240) -> tuple[str, dict[str, Any]]:
    """Wait until ``cell`` starts training (its fit, in the ledger); its array task and the ledger event."""
    event = s.wait_for(lambda: next(iter(s.events("fit_start", cell.run_dir)), None), what, timeout)
    task = s.task_of(cell)
    if task is None:
        raise RowFailure(HARNESS, f"{cell.label} started outside Slurm")
    return task, event


# ---- 1. one claimer per job --------------------------------------------------------------------------------------
RANKS, TRIALS = 8, 30


def claim_trials(s: Scenario) -> None:
    root = s.dir / "claim"
    root.mkdir()
    env = {k: v for k, v in s.env().items() if not k.startswith("MKF_FAULT_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in env["PYTHONPATH"].split(os.pathsep) if "faults" not in p)
    env["SLURM_CONF"] = str(root / "no-cluster.conf")  # squeue cannot answer: a holder's job is "cannot tell"
    procs = []
    for rank in range(RANKS):
        ids = {"SLURM_JOB_ID": "4242", "SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "2",
               "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank % 4), "SLURM_NODEID": str(rank // 4),
               "SLURM_STEP_ID": "0", "SLURM_RESTART_COUNT": "0", "SLURM_NTASKS": str(RANKS)}
        cmd = [PYTHON, str(HERE / "claim_adapter.py"), "--root", str(root), "--rank", str(rank), "--ranks",
               str(RANKS), "--trials", str(TRIALS), "--out", str(root / f"rank{rank}.jsonl")]
        procs.append(subprocess.Popen(cmd, cwd=root, env={**env, **ids}, stdout=subprocess.DEVNULL,
                                      stderr=open(root / f"rank{rank}.err", "w"), start_new_session=True))  # noqa: SIM115
    s.procs.extend(procs)
    s.wait_for(lambda: all(p.poll() is not None for p in procs), f"{RANKS} ranks x {TRIALS} claim trials", 180)
    entries = [json.loads(line) for r in range(RANKS) for line in (root / f"rank{r}.jsonl").read_text().splitlines()
               if line.strip()] if all((root / f"rank{r}.jsonl").is_file() for r in range(RANKS)) else []
    if any(e.get("trial") == -1 for e in entries) or len(entries) != RANKS * TRIALS:
        bad = next((e["error"] for e in entries if e.get("trial") == -1), "missing results")
        raise RowFailure(HARNESS, f"the claim adapter did not run every trial: {bad}")
    trials: dict[int, list[dict[str, Any]]] = {}
    for e in entries:
        trials.setdefault(e["trial"], []).append(e)
    crashed = [t for t, es in trials.items() if any(e["error"] for e in es)]
    deferred = [t for t, es in trials.items() if any(e["decision"] not in ("train", None) for e in es)]
    wrote = [t for t, es in trials.items() if any(e["rank"] and (e.get("start_writes") or e.get("end_writes"))
                                                  for e in es)]
    api = entries[0].get("api")
    if crashed or deferred or wrote:
        first = next((e["error"].split(":")[0] for t in crashed for e in trials[t] if e["error"]), "")
        what = sorted({w.split()[0] for t in wrote for e in trials[t] if e["rank"]
                       for w in e.get("start_writes", []) + e.get("end_writes", [])})
        s.fail("one claimer per job", (
            f"{RANKS} ranks of one job start a cell at once ({api}), {TRIALS} trials: a rank crashed in "
            f"{len(crashed)}{f' ({first})' if first else ''}, a rank was told another holds the cell in "
            f"{len(deferred)}, ranks 1.. wrote or released the claim in {len(wrote)} ({'/'.join(what)})"))


def row_claim(s: Scenario) -> None:
    claim_trials(s)
    path, out = sweep(s, "fclaim", profile="fault-2x2", data=dict(DATA, max_train_samples=256))
    s.sweep_run(path, profiles(s))
    cell = one_cell(s, out)
    s.refs.request(cell.config, ranks=4)
    s.wait_finished([cell], 300, "the 4-rank cell (2 nodes x 2 tasks) to finish")
    result = cell.result() or {}
    if result.get("world_size") != 4:
        raise RowFailure(HARNESS, f"the cell trained on {result.get('world_size')} ranks, not 4")
    s.check_cells([cell], ranks=4)


# ---- 2. SIGKILL mid checkpoint write -----------------------------------------------------------------------------
def row_checkpoint(s: Scenario) -> None:
    config = cell_config(s, "cell", checkpoint_every_n_steps=1)
    run_dir = s.dir / "cell"
    s.refs.request(config)
    proc = s.spawn("train", "--config", str(config), faults={"MKF_FAULT_FSYNC_SLEEP": 30, "MKF_FAULT_FSYNC_NTH": 2})
    marker = s.faults / "once-fsync"
    s.wait_for(lambda: marker.exists() or proc.poll() is not None, "the 2nd checkpoint write", 180, every=0.05)
    if not marker.exists():
        raise RowFailure(HARNESS, f"training ended (exit {proc.returncode}) before its 2nd checkpoint write")
    temp = Path(marker.read_text())
    if not temp.exists():
        raise RowFailure(HARNESS, f"the checkpoint temp file {temp} is gone before the kill")
    os.killpg(proc.pid, signal.SIGKILL)  # mid-write: the temp file exists, the rename has not happened
    proc.wait()
    s.notes.append(f"killed pid {proc.pid} while {temp.name} was being written")
    rerun = s.mkf("train", "--config", str(config), timeout=240)
    if rerun.rc != 0:
        raise RowFailure(I_FINISHED, f"the rerun exited {rerun.rc}: {rerun.last_line()}")
    starts = [e for e in s.events("fit_start", run_dir) if e["pid"] != proc.pid]
    if starts and starts[0].get("temps"):
        s.fail("temp files cleaned", f"the next start found {starts[0]['temps']} left by the killed write")
    left = temp_files(run_dir)
    if left:
        s.fail("temp files cleaned", f"temporary files left in the run dir: {left}")
    cells = s.cells(s.dir)
    s.check_cells([c for c in cells if c.run_dir == run_dir.absolute()])


# ---- 3. TERM (scontrol requeue) and USR1 during validation -------------------------------------------------------
def _validation_case(s: Scenario, prof: Path, kind: str) -> None:
    name = f"fval{kind.lower()}"
    path, out = sweep(s, name, data=dict(DATA, max_train_samples=64, max_val_samples=32 * VAL_STEPS),
                      train={"trainer": {"max_epochs": 2, "progress_bar": False, "log_every_n_steps": 1}})
    s.sweep_run(path, prof, faults={"MKF_FAULT_VAL_SLEEP": VAL_STEP_S})
    cell = one_cell(s, out)
    s.refs.request(cell.config)
    marker = s.faults / f"validating-{run_key(cell.run_dir)}"
    s.wait_for(lambda: marker.exists() or cell.result() is not None, f"{cell.label} to validate", 240)
    if not marker.exists():
        raise RowFailure(HARNESS, f"{cell.label} finished without the long validation")
    pid = json.loads(marker.read_text())["pid"]
    task = s.task_of(cell)
    if task is None:
        raise RowFailure(HARNESS, f"{cell.label} validates outside Slurm")
    assert s.cluster is not None
    sent = time.monotonic()
    if kind == "TERM":
        s.cluster.run("scontrol", "requeue", task, check=True)  # TERM to every process of the step, KILL after KillWait
    else:
        s.cluster.run("scancel", "--signal=USR1", "--full", task, check=True)  # the time limit's warning
    s.wait_for(lambda: not pid_alive(pid), f"the validating process of {task} to stop", 120, every=0.2)
    took = time.monotonic() - sent
    if took > GRACE_S:
        s.fail("signal honoured in validation", (
            f"SIG{kind} at the start of a {VAL_STEPS * VAL_STEP_S:.0f} s validation pass: the cell stopped {took:.1f} s "
            f"later, not within {GRACE_S:.0f} s (the signal waits for the next training step"
            f"{'; KillWait kills it first' if kind == 'TERM' else ''})"))
    s.wait_finished([cell], 300, f"{cell.label} to resume and finish")
    s.check_cells([cell], preemption_required=True)


def row_validation(s: Scenario) -> None:
    prof = profiles(s)
    s.parallel({"TERM": lambda: _validation_case(s, prof, "TERM"), "USR1": lambda: _validation_case(s, prof, "USR1")})


# ---- 4. a failing `scontrol requeue` -----------------------------------------------------------------------------
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
            "PREEMPTED", "GONE"}


def row_requeue(s: Scenario) -> None:
    prof = profiles(s)
    halves = {h: {"dataset": "fashion_mnist", "split": SPLIT, "half": h} for h in "AB"}
    path, out = sweep(s, "frequeue", datasets=halves, transfers=[{"source": "A", "target": "B"}], variants=["AnB"])
    s.sweep_run(path, prof, faults={"MKF_FAULT_SCONTROL_REQUEUE": "fail", "MKF_FAULT_STEP_SLEEP": 2})
    cells = s.cells(out)
    bases = {c.base for c in cells if c.base is not None}
    base = next((c for c in cells if c.run_dir in bases), None)
    if base is None or len(cells) != 3:
        raise RowFailure(HARNESS, f"expected base A, base B and AnB, found {[c.label for c in cells]}")
    task, _ = task_started(s, base, f"{base.label} to start training")
    time.sleep(3)  # a step or two in
    assert s.cluster is not None
    s.cluster.run("scancel", "--signal=USR1", "--full", task, check=True)  # the time limit's warning
    def ended() -> str | None:
        info = s.cluster.jobs(fresh=True).get(task, {})
        state = info.get("JobState", "GONE")
        requeued = state == "PENDING" and int(info.get("Restarts", "0") or 0) > 0
        return state if state in TERMINAL or requeued else None

    state = s.wait_for(ended, f"the signalled base task {task} to end", 180)
    if state == "COMPLETED" and base.result() is None:
        s.fail("failed requeue is no success", (
            f"`scontrol requeue` failed, yet base task {task} ended COMPLETED with {base.label} unfinished: "
            "afterok released its dependants"))
    rerun = s.sweep_run(path, prof, ok=False)
    s.notes.append(f"rerun exited {rerun.rc}")
    s.wait_finished(cells, 360, "the rerun to finish every cell")
    s.check_cells(cells)


# ---- 5. a failing or timing-out sbatch ---------------------------------------------------------------------------
def row_sbatch(s: Scenario) -> None:
    prof = profiles(s)
    path, out = sweep(s, "fsbatch")
    failed = s.sweep_run(path, prof, faults={"MKF_FAULT_SBATCH": "fail"}, ok=False)
    errors = [line for line in failed.text.splitlines() if line.startswith("mkf: error:")]
    if failed.rc == 0 or len(errors) != 1 or "Traceback" in failed.text:
        s.fail("one error line", f"failing sbatch: exit {failed.rc}, {len(errors)} 'mkf: error:' lines, "
                                           f"traceback: {'Traceback' in failed.text}")
    # the job the late reply hides waits in the queue (a busy cluster) until the next run has been
    late = s.mkf("sweep", "run", str(path), "--executor", "slurm", "--profiles", str(prof), "--no-progress",
                 faults={"MKF_FAULT_SBATCH": "late", "MKF_FAULT_SBATCH_BEGIN": "now+600"}, timeout=150,
                 what="mkf sweep run on an sbatch that never replies")
    s.notes.append(f"late sbatch: exit {late.rc} after {late.seconds:.0f} s")
    hidden = [sub["job"] for sub in s.submissions() if sub["mode"] == "late" and sub["job"]]
    if not hidden:
        raise RowFailure(HARNESS, "the late sbatch submitted nothing")
    again = s.sweep_run(path, prof, ok=False)
    s.notes.append(f"next run: exit {again.rc}")
    assert s.cluster is not None
    s.cluster.run("scontrol", "update", f"JobId={hidden[0]}", "StartTime=now")  # the queue moves on
    cell = one_cell(s, out)
    s.refs.request(cell.config)
    s.wait_finished([cell], 240)
    arrays = [sub["job"] for sub in s.submissions() if "--array=" in sub["args"] and sub["job"]]
    assert s.cluster is not None
    jobs = s.cluster.jobs(fresh=True)
    ran = [a for a in arrays if jobs.get(f"{a}_0", jobs.get(a, {})).get("JobState") != "CANCELLED"]
    if len(ran) != 1:
        s.fail("submitted once", f"the cell was submitted {len(ran)} times (arrays {', '.join(ran)}): the "
                                           "late reply's job was not found again")
    started = [h for h in cell.attempts()["history"] if h.get("outcome") == "started"]
    if len(started) > 1:
        s.fail("submitted once", f"{len(started)} started attempts of one cell")
    s.check_cells([cell])
    if "Traceback" in late.text:
        s.fail("one error line", "the sbatch that never replied ended mkf sweep run with a traceback")


# ---- 6. the planner job dies -------------------------------------------------------------------------------------
def row_planner(s: Scenario) -> None:
    prof = profiles(s)
    halves = {h: {"dataset": "fashion_mnist", "split": SPLIT, "half": h} for h in "AB"}
    path, out = sweep(s, "fplanner", datasets=halves, transfers=[{"source": "A", "target": "B"}], variants=["AnB"],
                      depths={"adaptive": {"start": [1, 5], "tolerance": 0.0, "max_rounds": 1}})
    s.sweep_run(path, prof)
    planners = [sub["job"] for sub in s.submissions() if "advance" in sub["args"] and sub["job"]]
    if not planners:
        raise RowFailure(HARNESS, "no planner job was submitted")
    planner = planners[-1]
    assert s.cluster is not None
    s.cluster.run("scancel", planner, check=True)
    s.wait_for(lambda: s.cluster.state(planner) in TERMINAL, f"planner job {planner} to die", 60)
    status = s.mkf("sweep", "status", str(out))
    lines = [line.strip() for line in status.text.splitlines()
             if "planner" in line.lower() and re.search(rf"\b{planner}\b", line)]
    dead = [line for line in lines if any(w in line.lower() for w in DEAD_WORDS)]
    if not dead or any("advances after this round" in line for line in lines):
        said = f"'{lines[0][:160]}'" if lines else "nothing about it"
        s.fail("planner watched", f"planner job {planner} was cancelled; status says {said}")
    rerun = s.sweep_run(path, prof, ok=False)
    s.notes.append(f"rerun exited {rerun.rc}")

    def rounds_done() -> bool:
        state = json.loads((out / "adaptive.json").read_text()) if (out / "adaptive.json").is_file() else {}
        groups = (state.get("groups") or {}).values()
        cells = s.cells(out)
        return bool(groups) and all(g.get("status") != "training" for g in groups) and all(
            c.result() for c in cells) and not s.active_jobs()

    s.wait_for(rounds_done, "the adaptive rounds to complete after the rerun", 420, every=2.0)
    s.check_cells(s.cells(out))


# ---- 7. the holder killed while another waits ----------------------------------------------------------------------
def _holder_slurm(s: Scenario, prof: Path) -> None:
    store = s.dir / "store"
    sweeps = [sweep(s, name, store=str(store)) for name in ("fholder1", "fholder2")]
    # the holder trains until it is killed (a minute per step); held: both sweeps' tasks queue before either claims
    faults = {"MKF_FAULT_SBATCH": "hold", "MKF_FAULT_STEP_SLEEP": 60}
    for path, _ in sweeps:
        s.sweep_run(path, prof, faults=faults)
    assert s.cluster is not None
    held = [sub["job"] for sub in s.submissions() if sub["mode"] == "hold" and sub["job"]]
    s.cluster.run("scontrol", "release", *held, check=True)
    cells = {c.run_dir: c for _, out in sweeps for c in s.cells(out)}
    if len(cells) != 1:
        raise RowFailure(HARNESS, f"the two sweeps should share one cell, found {len(cells)}")
    cell = next(iter(cells.values()))
    s.refs.request(cell.config)
    holder, _ = task_started(s, cell, f"{cell.label} to start training")
    waiter = next((f"{j}_0" for j in held if f"{j}_0" != holder), None)
    if waiter is None:
        raise RowFailure(HARNESS, f"no second task besides the holder {holder}")
    running: list[float] = []  # since when the waiter holds an allocation without training
    parked: list[float] = []  # since when it waits outside an allocation (a dependency, a requeue, held)

    def watch() -> bool:
        info = s.cluster.jobs(fresh=True).get(waiter, {})
        state, reason = info.get("JobState", "GONE"), info.get("Reason", "")
        training = any(f"{e.get('array')}_{e.get('task')}" == waiter for e in s.events("fit_start", cell.run_dir))
        now = time.monotonic()
        if state == "RUNNING" and not training:
            running.append(running[0] if running else now)
            parked.clear()
            if now - running[0] > WAIT_BOUND_S:
                s.fail(I_BOUNDED, f"task {waiter} held its allocation over {WAIT_BOUND_S:.0f} s waiting for "
                                  f"{holder}, which holds the cell (no dependency on it, no requeue)")
                return True
            return False
        running.clear()
        if state == "PENDING" and not reason.startswith(("Resources", "Priority", "None")):
            parked.append(parked[0] if parked else now)
            return now - parked[0] > 30  # it waits for the holder outside an allocation: as it should
        parked.clear()
        return state not in ("PENDING", "RUNNING", "CONFIGURING") or training

    s.wait_for(watch, f"the waiting task {waiter} to wait", WAIT_BOUND_S + 150, every=1.0)
    s.cluster.run("scancel", holder, check=True)  # the holder dies (TERM, KILL after KillWait)
    s.wait_finished([cell], 300, f"{cell.label} to be finished by the waiting sweep")
    s.check_cells([cell], count_failures=False)


def _holder_local(s: Scenario) -> None:
    config = cell_config(s, "local-cell")
    run_dir = s.dir / "local-cell"
    slow = {"MKF_FAULT_STEP_SLEEP": 10}
    holder = s.spawn("train", "--config", str(config), faults=slow)
    s.wait_for(lambda: any(e["pid"] == holder.pid for e in s.events("fit_start", run_dir)) or holder.poll() is not None,
               "the holder to start training", 180)
    waiter = s.spawn("train", "--config", str(config), faults=slow)
    time.sleep(15)  # the waiter imports, finds the claim and waits
    if holder.poll() is not None:
        raise RowFailure(HARNESS, f"the holder ended (exit {holder.returncode}) before it could be killed")
    if any(e["pid"] == waiter.pid for e in s.events("fit_start", run_dir)):
        raise RowFailure("one claimer", "a second `mkf train` of the same cell trained while the first held it")
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    s.wait_for(lambda: waiter.poll() is not None, "the waiter to take over and finish", 180)
    if waiter.returncode != 0:
        raise RowFailure(I_FINISHED, f"the waiter exited {waiter.returncode} after the holder was killed")
    s.check_cells([c for c in s.cells(s.dir) if c.run_dir == run_dir.absolute()])


def row_holder(s: Scenario) -> None:
    prof = profiles(s)
    s.parallel({"Slurm": lambda: _holder_slurm(s, prof), "local": lambda: _holder_local(s)})


# ---- 8. a device error inside a bundle -----------------------------------------------------------------------------
def row_bundle(s: Scenario) -> None:
    prof = profiles(s)
    path, out = sweep(s, "fbundle", profile="fault-bundle", seeds=[0, 1, 2], variants=["BnB"])
    s.sweep_run(path, prof, faults={"MKF_FAULT_DEVICE_ERROR_NTH": 2})
    cells = s.cells(out)
    bases = [c for c in cells if c.base is None]
    if len(cells) != 6 or len(bases) != 3:
        raise RowFailure(HARNESS, f"expected 3 bases and 3 BnB cells, found {[c.label for c in cells]}")
    for c in bases:
        s.refs.request(c.config)
    fired = s.wait_for(lambda: [e for e in s.events("device_error") if not e.get("sticky")],
                       "the device error to fire in the bundle", 240)
    struck = Path(fired[0]["run_dir"])
    stall: RowFailure | None = None
    try:
        s.wait_finished(cells, 360, "every cell to finish after the device error")
    except RowFailure as exc:
        stall = exc
    innocent = [(c, c.attempts()["failures"]) for c in cells if c.run_dir != struck and c.attempts()["failures"]]
    if innocent:
        c, n = innocent[0]
        sticky = [e for e in s.events("device_error", c.run_dir) if e.get("sticky")]
        s.fail("only the struck cell charged", (
            f"{c.label} was charged {n} failure(s)" + (" by the sticky device error of the cell before it in the same "
                                                       "worker" if sticky else "")))
    if stall is not None:
        cancelled = [jid for jid, f in s.jobs(fresh=True).items() if "Dependency" in f.get("Reason", "")
                     and f.get("JobState") == "CANCELLED" and "_" in jid]
        if cancelled:
            raise RowFailure("dependants survive", f"{len(cancelled)} dependant task(s) cancelled "
                                                   f"(DependencyNeverSatisfied): {stall.reason}")
        raise stall
    s.check_cells(cells, failures_allowed={struck})


# ---- 9. a truncated config ------------------------------------------------------------------------------------------
def row_config(s: Scenario) -> None:
    prof = profiles(s)
    path, out = sweep(s, "fconfig")
    s.sweep_run(path, prof, faults={"MKF_FAULT_SBATCH": "hold", "MKF_FAULT_STEP_SLEEP": 4})
    cell = one_cell(s, out)
    s.refs.request(cell.config)
    for config in cell.configs:
        config.write_bytes(b"")  # truncated before the task starts (a rewrite caught mid-way)
    held = [sub["job"] for sub in s.submissions() if sub["mode"] == "hold" and sub["job"]]
    assert s.cluster is not None
    s.cluster.run("scontrol", "release", *held, check=True)
    task = f"{held[0]}_0"
    s.wait_for(lambda: s.cluster.state(task) in TERMINAL or (s.dir / "runs").exists(), f"task {task} to end", 180)
    if (s.dir / "runs").exists() or any(not e["run_dir"].startswith(str(out)) for e in s.events("fit_start")):
        s.fail("no default cell", "the task trained the default cell into ./runs/cell")
    logs = [p for p in out.rglob("*") if p.is_file() and p.suffix in (".log", ".out")]
    text = "\n".join(p.read_text(errors="replace") for p in logs)
    named = [line for line in text.splitlines() if any(c.name in line for c in cell.configs)
             and ("error" in line.lower() or "empty" in line.lower())]
    if not named or "Traceback" in text:
        s.fail("one error line", f"the task's logs {'hold a traceback' if 'Traceback' in text else ''}"
                                           f"{' and ' if not named and 'Traceback' in text else ''}"
                                           f"{'name no truncated config' if not named else ''}")
    att = cell.attempts()
    if att["failures"] or any(h.get("outcome") == "started" for h in att["history"]):
        s.fail("not a training attempt", f"the unreadable config was charged: {att['history']}")
    s.sweep_run(path, prof, faults={"MKF_FAULT_STEP_SLEEP": 4}, ok=False)
    cells = s.cells(out)
    task_started(s, cells[0], f"{cell.label} to start again", 240)
    before = {c: (c.read_bytes(), c.stat().st_mtime_ns) for c in cells[0].configs}
    s.sweep_run(path, prof, ok=False)  # a second `mkf sweep run` while the task trains
    changed = [c.name for c, (data, mtime) in before.items()
               if not c.exists() or c.read_bytes() != data or c.stat().st_mtime_ns != mtime]
    if changed:
        s.fail("configs never rewritten under a task",
                         f"a second mkf sweep run rewrote the running task's config {', '.join(changed)}")
    s.wait_finished(cells, 240)
    s.check_cells(cells)


ROWS = [
    Row("claim", "multi-rank claim: 8 ranks of one job start a cell at once (30 trials); a 4-rank gloo cell",
        "claim", 420, row_claim),
    Row("checkpoint", "SIGKILL while a checkpoint's temp file is written", "checkpoint", 420, row_checkpoint,
        cluster=False),
    Row("validation", "TERM (scontrol requeue) and USR1 during a long validation", "checkpoint / preemption", 480,
        row_validation),
    Row("requeue", "`scontrol requeue` fails after USR1 (time-limit warning)", "preemption / requeue", 480,
        row_requeue),
    Row("sbatch", "sbatch fails; sbatch accepted but its reply never comes", "submission", 480, row_sbatch),
    Row("planner", "the adaptive planner job is cancelled", "adaptive rounds", 540, row_planner),
    Row("holder", "the claim's holder killed while another task (and a local `mkf train`) waits", "claim", 480,
        row_holder),
    Row("bundle", "sticky CUDA error in cell 2 of a 3-cell bundle", "bundle", 480, row_bundle),
    Row("config", "a queued cell's config truncated; a second sweep run during a task", "submission", 480,
        row_config),
]
