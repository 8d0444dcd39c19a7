"""The fault harness's machinery: a test cluster, scenarios that drive the project from outside, and the invariants.

Black-box: nothing here imports ``launch`` (its modules are being moved). A scenario runs the project's own command
line (``python -m launch.cli ...``) in its own folder, with the code under test first on PYTHONPATH (whatever the
harness process was given) and ``tests/faults/inject`` after it (the injections, :mod:`mkf_fault_hooks`), and
``tests/faults/bin`` first on PATH (``sbatch``, ``scontrol``: Slurm's commands as a faulty cluster answers them).
Slurm jobs inherit that environment (sbatch's default ``--export=ALL``), so the injections reach inside them.
It reads what the project leaves behind: the run folders (``result.json``, ``attempts.json``, weights), the logs,
Slurm's own view (``scontrol show job``), and the scenario's ledger (who trained what, when).

The invariants every row checks after its fault (:meth:`Scenario.check_cells`):

(i)   every cell ends finished, trained to completion exactly once (the ledger's completed fits, rank 0; and at
      most one ``finished`` in ``attempts.json``);
(ii)  its weights are bit-identical (``torch.equal``, every tensor) to an uninterrupted run of the same config;
(iii) no preemption is counted as a failure (``attempts.json`` ``failures``);
(iv)  no dependant starts before its base finished (its first ``started`` attempt or fit vs the base's
      ``result.json`` ``finished_at``);
(v)   nothing waits without bound: every wait of a scenario has a limit, and hitting it fails the row.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parents[1]  # the harness's own checkout: slurm/testcluster lives here
INJECT = HERE / "inject"
BIN = HERE / "bin"
PYTHON = sys.executable

I_FINISHED = "(i) finished once"
I_IDENTICAL = "(ii) bit-identical"
I_PREEMPTION = "(iii) preemption is no failure"
I_ORDER = "(iv) dependants after bases"
I_BOUNDED = "(v) bounded waits"
HARNESS = "harness"

ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
          "SUSPENDED", "SIGNALING", "STAGE_OUT"}
TEMP_MARKS = (".tmp", "tmp-", "tmp.", ".part", ".partial", "~")


class RowFailure(Exception):
    """The first invariant a row found broken, and why (one line)."""

    def __init__(self, invariant: str, reason: str) -> None:
        super().__init__(f"{invariant}: {reason}")
        self.invariant = invariant
        self.reason = reason


def is_temp(name: str) -> bool:
    low = name.lower()
    return any(m in low for m in TEMP_MARKS) or low.startswith("tmp")


def temp_files(run_dir: Path) -> list[str]:
    if not run_dir.is_dir():
        return []
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and is_temp(p.name))


def run_key(run_dir: str | Path) -> str:
    """The injections' key of a run dir (mkf_fault_hooks.key)."""
    return hashlib.sha1(str(Path(str(run_dir)).absolute()).encode()).hexdigest()[:12]


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def pids_by_env(var: str, values: set[str]) -> dict[str, list[int]]:
    """Live processes whose environment has ``var`` set to one of ``values``."""
    found: dict[str, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        prefix = f"{var}=".encode()
        for item in env:
            if item.startswith(prefix):
                value = item[len(prefix):].decode(errors="replace")
                if value in values and pid_alive(int(proc.name)):
                    found.setdefault(value, []).append(int(proc.name))
                break
    return found


def _free_port_base() -> int:
    rng = random.Random(os.getpid() ^ int(time.time()))
    for _ in range(200):
        base = rng.randrange(20000, 29000, 20)
        ok = True
        for port in (base + 1, base + 2, base + 817):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port range for the test cluster")


# ---- the cluster ---------------------------------------------------------------------------------------------
class Cluster:
    """A throwaway Slurm (slurm/testcluster/up.sh) with its own ports, 2 nodes x ``cpus`` CPUs, shared by the rows.

    A background thread starts requeued jobs as soon as their previous attempt has exited (Slurm otherwise holds
    a requeued job back for minutes: a delay, not a behaviour under test)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "c" / "slurm.conf"
        self.scontrol = shutil.which("scontrol") or "/usr/bin/scontrol"
        self.scancel = shutil.which("scancel") or "/usr/bin/scancel"
        self._cache: tuple[float, dict[str, dict[str, str]]] = (0.0, {})
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._released: dict[str, float] = {}
        self.releases: list[str] = []
        self._thread = threading.Thread(target=self._release_loop, name="requeue-releaser", daemon=True)

    @classmethod
    def start(cls, cpus: int = 6, mem_mb: int = 8000) -> Cluster:
        root = Path(tempfile.mkdtemp(prefix="mkf-faults-slurm-"))
        root.chmod(0o711)  # munged runs as the munge user
        env = {**os.environ, "MKF_SLURM_PORT_BASE": str(_free_port_base()), "MKF_SLURM_NODE_CPUS": str(cpus),
               "MKF_SLURM_NODE_MEM_MB": str(mem_mb)}
        env.pop("SLURM_CONF", None)
        up = subprocess.run(["bash", str(CHECKOUT / "slurm" / "testcluster" / "up.sh"), str(root / "c")], env=env,
                            capture_output=True, text=True, timeout=180)
        if up.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError(f"test cluster did not start: {up.stdout}{up.stderr}")
        cluster = cls(root)
        cluster._thread.start()
        return cluster

    def stop(self) -> None:
        """down.sh (scancel everything, stop the daemons), then whatever of this cluster outlived its slurmd: job
        steps still inside KillWait, their slurmstepd (processes whose SLURM_CONF is this cluster's), by pid."""
        self._stop.set()
        subprocess.run(["bash", str(CHECKOUT / "slurm" / "testcluster" / "down.sh"), str(self.root / "c")],
                       capture_output=True, env={**os.environ, "SLURM_CONF": str(self.conf)}, timeout=120)
        for pids in pids_by_env("SLURM_CONF", {str(self.conf)}).values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        tool = {"scontrol": self.scontrol, "scancel": self.scancel}.get(cmd[0], cmd[0])
        env = {**os.environ, **self.env()}
        proc = subprocess.run([tool, *cmd[1:]], capture_output=True, text=True, env=env, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
        return proc

    def jobs(self, fresh: bool = False) -> dict[str, dict[str, str]]:
        """Every job Slurm knows, by id (``123`` for a plain job, ``120_3`` for an array task; also by raw JobId)."""
        with self._lock:
            stamp, jobs = self._cache
            if not fresh and time.monotonic() - stamp < 1.0:
                return jobs
            out = self.run("scontrol", "show", "job", "--oneliner").stdout
            jobs = {}
            for line in out.splitlines():
                fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
                if "JobId" not in fields:
                    continue
                array, task = fields.get("ArrayJobId"), fields.get("ArrayTaskId", "")
                if array and task.isdigit():
                    jobs[f"{array}_{task}"] = fields
                elif array and task:  # pending tasks not split off yet: 120_[0-2]
                    for t in _expand(task):
                        jobs.setdefault(f"{array}_{t}", {**fields, "ArrayTaskId": str(t)})
                jobs.setdefault(fields["JobId"], fields)
            self._cache = (time.monotonic(), jobs)
            return jobs

    def state(self, job: str, fresh: bool = True) -> str:
        info = self.jobs(fresh).get(job)
        return info.get("JobState", "UNKNOWN") if info else "GONE"

    def _release_loop(self) -> None:
        while not self._stop.wait(2.0):
            try:
                self._release_once()
            except Exception:  # never let the helper thread die on a transient scontrol error
                pass

    def _release_once(self) -> None:
        jobs = self.jobs(fresh=True)
        waiting = {f["JobId"]: f for f in jobs.values()
                   if f.get("JobState") == "PENDING" and int(f.get("Restarts", "0") or 0) >= 1
                   and f.get("Reason") == "BeginTime"}
        if not waiting:
            return
        alive = pids_by_env("SLURM_JOB_ID", set(waiting))
        now = time.monotonic()
        for raw in waiting:
            if raw in alive or now - self._released.get(raw, -1e9) < 10:
                continue
            self._released[raw] = now
            self.run("scontrol", "update", f"JobId={raw}", "StartTime=now")
            self.releases.append(raw)


def _expand(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split("%")[0].strip("[]").split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            if lo.isdigit() and hi.isdigit():
                out.extend(range(int(lo), int(hi) + 1))
        elif part.isdigit():
            out.append(int(part))
    return out


# ---- uninterrupted reference runs ------------------------------------------------------------------------------
IRRELEVANT = {"run_dir", "labels", "wandb"}  # keys of a cell config that do not change its weights
IRRELEVANT_TRAINER = {"progress_bar", "log_every_n_steps", "checkpoint_every_n_steps", "keep_checkpoints",
                      "accelerator", "devices", "num_nodes", "strategy"}


def clean_env() -> dict[str, str]:
    """The harness's environment without Slurm's and the injections' variables: an uninterrupted run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MKF_FAULT_", "SBATCH_", "SRUN_"))}
    env["OMP_NUM_THREADS"] = "1"
    env["WANDB_MODE"] = "offline"
    return env


class References:
    """Each distinct cell config trained once, uninterrupted (``mkf train``, no injection), two at a time."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pool = ThreadPoolExecutor(2, thread_name_prefix="reference")
        self.futures: dict[str, Future[Path]] = {}
        self.lock = threading.Lock()

    def request(self, config: Path, ranks: int = 1) -> Future[Path]:
        raw = yaml.safe_load(config.read_text())
        norm = {k: v for k, v in raw.items() if k not in IRRELEVANT}
        norm["trainer"] = {k: v for k, v in (raw.get("trainer") or {}).items() if k not in IRRELEVANT_TRAINER}
        digest = hashlib.sha1(json.dumps([norm, ranks], sort_keys=True, default=str).encode()).hexdigest()[:12]
        with self.lock:
            if digest not in self.futures:
                self.futures[digest] = self.pool.submit(self._train, raw, ranks, digest)
            return self.futures[digest]

    def _train(self, raw: dict[str, Any], ranks: int, digest: str) -> Path:
        folder = self.root / digest
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "config.yaml"
        config.write_text(yaml.safe_dump({**raw, "run_dir": str(folder / "run")}))
        cmd = [PYTHON, "-m", "launch.cli", "train", "--config", str(config), "--accelerator", "cpu",
               "--devices", str(ranks), "--num-nodes", "1"]
        with open(folder / "train.log", "w") as log:
            proc = subprocess.run(cmd, cwd=folder, env=clean_env(), stdout=log, stderr=subprocess.STDOUT,
                                  timeout=900)
        weights = folder / "run" / "weights.safetensors"
        if proc.returncode != 0 or not weights.is_file():
            raise RuntimeError(f"the reference run failed (exit {proc.returncode}); see {folder / 'train.log'}")
        return weights

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def weights_differ(a: Path, b: Path) -> str | None:
    """None when every tensor of the two safetensors files is equal (torch.equal), else what differs."""
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(str(a)), load_file(str(b))
    if set(wa) != set(wb):
        return f"different tensor names ({len(set(wa) ^ set(wb))} differ)"
    diff = [k for k in wa if not torch.equal(wa[k], wb[k])]
    return f"{len(diff)} of {len(wa)} tensors differ (first: {diff[0]})" if diff else None


# ---- cells as files show them ------------------------------------------------------------------------------------
@dataclass
class Cell:
    run_dir: Path
    configs: list[Path]
    raw: dict[str, Any]

    @property
    def label(self) -> str:
        labels = self.raw.get("labels") or {}
        bits = [str(labels[k]) for k in ("variant", "depth", "seed") if labels.get(k) is not None]
        return f"{self.run_dir.name} ({' '.join(bits)})" if bits else self.run_dir.name

    @property
    def base(self) -> Path | None:
        transfer = self.raw.get("transfer") or {}
        base = transfer.get("base") if isinstance(transfer, dict) else None
        return Path(base).absolute() if base and transfer.get("init") != "random" else None

    @property
    def config(self) -> Path:
        return self.configs[0]

    def result(self) -> dict[str, Any] | None:
        data = read_json(self.run_dir / "result.json")
        return data if isinstance(data, dict) and data.get("status") == "finished" else None

    def attempts(self) -> dict[str, Any]:
        data = read_json(self.run_dir / "attempts.json")
        data = data if isinstance(data, dict) else {}
        return {"preemptions": int(data.get("preemptions", 0)), "failures": int(data.get("failures", 0)),
                "history": list(data.get("history", []))}


def find_cells(folder: Path) -> dict[Path, Cell]:
    """The cells whose configs lie under ``folder``: every YAML naming a ``run_dir`` outside its own folder (a run
    folder's own ``config.yaml`` names itself), by run dir."""
    cells: dict[Path, Cell] = {}
    if not folder.is_dir():
        return cells
    for path in sorted(folder.rglob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(raw, dict) or not isinstance(raw.get("run_dir"), str):
            continue
        run_dir = Path(raw["run_dir"])
        run_dir = (run_dir if run_dir.is_absolute() else folder / run_dir).absolute()
        if run_dir == path.parent.absolute():
            continue
        if run_dir in cells:
            cells[run_dir].configs.append(path)
        else:
            cells[run_dir] = Cell(run_dir, [path], raw)
    return cells


# ---- a scenario -------------------------------------------------------------------------------------------------
@dataclass
class Run:
    rc: int
    out: str
    err: str
    seconds: float

    @property
    def text(self) -> str:
        return self.out + self.err

    def last_line(self) -> str:
        lines = [line for line in self.text.splitlines() if line.strip()]
        return lines[-1][:200] if lines else "(no output)"


@dataclass
class Scenario:
    """One row's world: its folder, fault folder, environment, processes and jobs, and a deadline."""

    name: str
    dir: Path
    bins: Path
    refs: References
    cluster: Cluster | None
    deadline: float
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[RowFailure] = field(default_factory=list)
    _n: int = 0

    def __post_init__(self) -> None:
        self.faults = self.dir / "faults"
        self.faults.mkdir(parents=True, exist_ok=True)

    def fail(self, invariant: str, reason: str) -> None:
        """The row's own check failed: the row fails here, or (MKF_FAULT_ALL=1) notes it and carries on to the
        next checks, which then run on what the fault left (the table still names the first failure)."""
        failure = RowFailure(invariant, reason)
        if os.environ.get("MKF_FAULT_ALL") != "1":
            raise failure
        self.failures.append(failure)

    # ---- environment and commands ----
    def env(self, **faults: Any) -> dict[str, str]:
        env = clean_env()
        code = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([*code, str(INJECT)])  # the code under test first, then the hooks
        env["PATH"] = f"{self.bins}{os.pathsep}{env.get('PATH', '')}"
        env["MKF_FAULT_DIR"] = str(self.faults)
        env["MKF_FAULT_PYTHON"] = PYTHON
        env["MKF_FAULT_SBATCH_PARK"] = "-report"  # the sweeps' report jobs wait held: no part of a lifecycle
        if self.cluster is not None:
            env.update(self.cluster.env())
        env.update({k: str(v) for k, v in faults.items() if v is not None})
        return env

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def mkf(self, *args: str, faults: dict[str, Any] | None = None, timeout: float = 120,
            what: str | None = None) -> Run:
        """``python -m launch.cli ARGS`` in the scenario folder; past ``timeout`` it is killed and the row fails (v)."""
        self._n += 1
        log = self.dir / f"mkf-{self._n:02d}-{args[0]}{'-' + args[1] if len(args) > 1 else ''}.log"
        start = time.monotonic()
        proc = subprocess.Popen([PYTHON, "-m", "launch.cli", *args], cwd=self.dir, env=self.env(**(faults or {})),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        limit = max(1.0, min(timeout, self.left()))
        try:
            out, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            log.write_text(f"$ mkf {' '.join(args)}\n(killed after {limit:.0f} s)\n{out}\n--- stderr\n{err}")
            what = what or f"mkf {' '.join(args[:2])}"
            raise RowFailure(I_BOUNDED, f"{what} still running after {limit:.0f} s") from None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever it left behind (a late sbatch's sleep)
        run = Run(proc.returncode, out, err, time.monotonic() - start)
        log.write_text(f"$ mkf {' '.join(args)}\n(exit {run.rc}, {run.seconds:.1f} s)\n{out}\n--- stderr\n{err}")
        return run

    def spawn(self, *args: str, faults: dict[str, Any] | None = None) -> subprocess.Popen[Any]:
        """``python -m launch.cli ARGS`` in the background (its own session), output to a log in the folder."""
        self._n += 1
        log = open(self.dir / f"mkf-{self._n:02d}-{args[0]}-bg.log", "w")  # noqa: SIM115
        proc = subprocess.Popen([PYTHON, "-m", "launch.cli", *args], cwd=self.dir, env=self.env(**(faults or {})),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def sweep_run(self, sweep: Path, profiles: Path, faults: dict[str, Any] | None = None, timeout: float = 120,
                  ok: bool = True) -> Run:
        run = self.mkf("sweep", "run", str(sweep), "--executor", "slurm", "--profiles", str(profiles),
                       "--no-progress", faults=faults, timeout=timeout)
        if ok and run.rc != 0:
            raise RowFailure(HARNESS, f"mkf sweep run exited {run.rc}: {run.last_line()}")
        return run

    def wait_for(self, condition: Callable[[], Any], what: str, timeout: float, every: float = 0.5) -> Any:
        """Poll ``condition`` until it is true; past ``timeout`` (or the row's deadline) the row fails (v)."""
        limit = min(timeout, self.left())
        end = time.monotonic() + limit
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > end:
                raise RowFailure(I_BOUNDED, f"waited {limit:.0f} s for {what}")
            time.sleep(every)

    # ---- what the processes left ----
    def ledger(self) -> list[dict[str, Any]]:
        path = self.faults / "ledger.jsonl"
        if not path.is_file():
            return []
        events = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events

    def events(self, ev: str, run_dir: Path | None = None) -> list[dict[str, Any]]:
        want = str(run_dir.absolute()) if run_dir is not None else None
        return [e for e in self.ledger() if e.get("ev") == ev and (want is None or e.get("run_dir") == want)]

    def submissions(self) -> list[dict[str, Any]]:
        """Every sbatch call of the scenario (its jobs' too), from the sbatch wrapper's log."""
        path = self.faults / "sbatch.log"
        subs = []
        if path.is_file():
            for line in path.read_text().splitlines():
                parts = line.split("\t")
                if len(parts) < 5:
                    continue
                job = parts[3].strip().split(";")[0]
                subs.append({"t": float(parts[0]), "mode": parts[1], "rc": parts[2], "job": job if job.isdigit()
                             else None, "args": parts[4]})
        return subs

    def jobs(self, fresh: bool = False) -> dict[str, dict[str, str]]:
        """The scenario's Slurm jobs (run in its folder: sbatch --chdir), by id as :meth:`Cluster.jobs`."""
        assert self.cluster is not None
        mine = {s["job"] for s in self.submissions() if s["job"]}
        root = str(self.dir)
        return {jid: f for jid, f in self.cluster.jobs(fresh).items()
                if f.get("WorkDir", "").startswith(root) or f.get("ArrayJobId", f["JobId"]) in mine
                or f["JobId"] in mine}

    def active_jobs(self) -> dict[str, str]:
        """The scenario's jobs queued or running, not held (a parked report job or a held submission)."""
        out = {}
        for jid, f in self.jobs(fresh=True).items():
            if "_" not in jid and f.get("ArrayJobId"):
                continue  # an array task is listed under ARRAY_TASK already
            held = f.get("Reason", "").startswith("JobHeld")
            if f.get("JobState") in ACTIVE and not held:
                out[jid] = f"{f.get('JobState')} ({f.get('Reason')})"
        return out

    def cells(self, folder: Path) -> list[Cell]:
        return list(find_cells(folder).values())

    def task_of(self, cell: Cell) -> str | None:
        """The Slurm array task that trained (or trains) ``cell``, from the ledger."""
        for e in self.events("fit_start", cell.run_dir):
            if e.get("array") and e.get("task") is not None:
                return f"{e['array']}_{e['task']}"
            if e.get("job"):
                return str(e["job"])
        return None

    def completions(self, cell: Cell) -> int:
        return sum(1 for e in self.events("fit_end", cell.run_dir) if e.get("completed") and e.get("global_rank") in (0, None))

    def wait_finished(self, cells: list[Cell], timeout: float, what: str = "every cell to finish") -> None:
        """Until every cell has its result; fails (i) as soon as none is left to run them for 15 s (a stall)."""
        stalled_since: list[float] = []

        def done() -> bool:
            left = [c for c in cells if c.result() is None]
            if not left:
                return True
            if self.cluster is not None and not self.active_jobs() and not self._local_alive():
                stalled_since.append(time.monotonic())
                if stalled_since[-1] - stalled_since[0] > 15:
                    states = {jid: f.get("JobState") + (f" ({f.get('Reason')})" if f.get("Reason", "None") != "None"
                                                        else "")
                              for jid, f in self.jobs(fresh=True).items() if "_" in jid or not f.get("ArrayJobId")}
                    raise RowFailure(I_FINISHED, f"{len(left)} of {len(cells)} cells unfinished "
                                                 f"({', '.join(c.label for c in left[:3])}) and no job left to run "
                                                 f"them; jobs: {_short(states)}")
            else:
                stalled_since.clear()
            return False

        self.wait_for(done, what, timeout, every=1.0)

    def _local_alive(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    # ---- invariants ----
    def check_cells(self, cells: list[Cell], *, ranks: int = 1, failures_allowed: set[Path] | None = None,
                    preemption_required: bool = False, identical: bool = True, count_failures: bool = True) -> None:
        """(i) finished once, (iii) no preemption counted as a failure, (iv) dependants after bases, (ii) weights
        equal an uninterrupted run's (base cells: a transfer cell's reference would need its base's too)."""
        allowed = failures_allowed or set()
        for cell in cells:
            if cell.result() is None:
                raise RowFailure(I_FINISHED, f"{cell.label} has no finished result.json")
            n = self.completions(cell)
            if n != 1:
                raise RowFailure(I_FINISHED, f"{cell.label} trained to completion {n} times (ledger)")
            finished = sum(h.get("outcome") == "finished" for h in cell.attempts()["history"])
            if finished > 1:
                raise RowFailure(I_FINISHED, f"{cell.label}: {finished} finished attempts in attempts.json")
        for cell in cells:
            att = cell.attempts()
            if count_failures and att["failures"] and cell.run_dir not in allowed:
                why = [str(h.get("reason", ""))[:80] for h in att["history"] if h.get("outcome") == "failed"]
                raise RowFailure(I_PREEMPTION, f"{cell.label}: {att['failures']} failure(s) counted "
                                               f"({'; '.join(why)}) after {att['preemptions']} preemption(s)")
            if preemption_required and not att["preemptions"]:
                raise RowFailure(I_PREEMPTION, f"{cell.label}: the signal was not recorded as a preemption "
                                               f"(attempts: {[h.get('outcome') for h in att['history']]})")
        by_dir = {c.run_dir: c for c in cells}
        for cell in cells:
            if cell.base is None:
                continue
            base = read_json(cell.base / "result.json")
            starts = [float(h["time"]) for h in cell.attempts()["history"] if h.get("outcome") == "started"
                      and "time" in h] + [float(e["t"]) for e in self.events("fit_start", cell.run_dir)]
            if not starts:
                continue
            first = min(starts)
            base_label = by_dir[cell.base].label if cell.base in by_dir else cell.base.name
            if not isinstance(base, dict) or base.get("status") != "finished":
                raise RowFailure(I_ORDER, f"{cell.label} started while its base {base_label} never finished")
            if first < float(base["finished_at"]):
                raise RowFailure(I_ORDER, f"{cell.label} started {float(base['finished_at']) - first:.1f} s before "
                                          f"its base {base_label} finished")
        if not identical:
            return
        for cell in cells:
            if cell.base is not None or (cell.raw.get("transfer") or None) is not None:
                continue
            future = self.refs.request(cell.config, ranks)
            try:
                ref = future.result(timeout=max(1.0, self.left()))
            except TimeoutError:
                raise RowFailure(I_BOUNDED, f"the reference run of {cell.label} did not end in time") from None
            except RuntimeError as exc:
                raise RowFailure(HARNESS, f"{cell.label}: {exc}") from None
            weights = cell.run_dir / "weights.safetensors"
            if not weights.is_file():
                raise RowFailure(I_IDENTICAL, f"{cell.label} has no weights.safetensors")
            diff = weights_differ(ref, weights)
            if diff:
                raise RowFailure(I_IDENTICAL, f"{cell.label}: {diff} vs an uninterrupted run")

    # ---- signals and cleanup ----
    def cancel_jobs(self) -> None:
        if self.cluster is None:
            return
        ids = {s["job"] for s in self.submissions() if s["job"]}
        ids |= {f.get("ArrayJobId") or f["JobId"] for f in self.jobs(fresh=True).values()}
        ids.discard(None)  # type: ignore[arg-type]
        if ids:
            self.cluster.run("scancel", *sorted(i for i in ids if i))

    def cleanup(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                proc.wait(timeout=10)
        with contextlib.suppress(Exception):
            self.cancel_jobs()

    def parallel(self, cases: dict[str, Callable[[], None]]) -> None:
        """Run ``cases`` at once (threads); the first case's failure in the given order is the row's."""
        failures: dict[str, BaseException] = {}

        def run(name: str, fn: Callable[[], None]) -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001  (reported below)
                failures[name] = exc

        threads = [threading.Thread(target=run, args=(n, f), name=f"{self.name}-{n}") for n, f in cases.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for name in cases:
            exc = failures.get(name)
            if isinstance(exc, RowFailure):
                raise RowFailure(exc.invariant, f"{name}: {exc.reason}")
            if exc is not None:
                raise exc


def _short(mapping: dict[str, Any], n: int = 6) -> str:
    items = [f"{k} {v}" for k, v in list(mapping.items())[:n]]
    return ", ".join(items) + (f", ... {len(mapping) - n} more" if len(mapping) > n else "") if items else "none"


# ---- rows and the table ----------------------------------------------------------------------------------------
@dataclass
class Row:
    key: str
    fault: str
    transition: str
    timeout: float
    fn: Callable[[Scenario], None]
    cluster: bool = True


@dataclass
class Outcome:
    key: str
    fault: str
    transition: str
    result: str
    invariant: str
    reason: str
    seconds: float
    folder: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_row(row: Row, root: Path, bins: Path, refs: References, cluster: Cluster | None) -> Outcome:
    start = time.monotonic()
    scenario = Scenario(row.key, root / row.key, bins, refs, cluster if row.cluster else None,
                        deadline=start + row.timeout)
    failures = scenario.failures
    try:
        row.fn(scenario)
    except RowFailure as failure:
        failures.append(failure)
    except Exception as exc:  # a harness error is a failure of the row too, said as such
        (scenario.dir / "harness-error.txt").write_text(traceback.format_exc())
        failures.append(RowFailure(HARNESS, f"{type(exc).__name__}: {exc}"[:300]))
    finally:
        scenario.cleanup()
    result, invariant, reason = ("FAIL", failures[0].invariant, failures[0].reason) if failures else ("PASS", "", "")
    if len(failures) > 1:
        reason += " [then: " + "; ".join(f"{f.invariant}: {f.reason[:120]}" for f in failures[1:]) + "]"
    return Outcome(row.key, row.fault, row.transition, result, invariant, reason.replace("\n", " "),
                   round(time.monotonic() - start, 1), str(scenario.dir))


def install_bins(folder: Path) -> Path:
    """The wrappers, copied executable into ``folder`` (git need not keep their mode)."""
    folder.mkdir(parents=True, exist_ok=True)
    for src in BIN.iterdir():
        if src.is_file():
            dst = folder / src.name
            shutil.copyfile(src, dst)
            dst.chmod(0o755)
    return folder


def run_rows(rows: list[Row], root: Path, cluster: Cluster | None) -> list[Outcome]:
    """Every row at once (threads: the rows mostly wait on Slurm and on training processes)."""
    bins = install_bins(root / "bin")
    refs = References(root / "references")
    try:
        with ThreadPoolExecutor(max(1, len(rows)), thread_name_prefix="row") as pool:
            futures = [pool.submit(run_row, row, root, bins, refs, cluster) for row in rows]
            return [f.result() for f in futures]
    finally:
        refs.close()


def markdown_table(outcomes: list[Outcome], total_s: float | None = None) -> str:
    lines = ["| fault | transition | result | first failed invariant | reason | s |",
             "|---|---|---|---|---|---:|"]
    for o in outcomes:
        reason = o.reason.replace("|", "/")
        lines.append(f"| {o.fault} | {o.transition} | {o.result} | {o.invariant or '-'} | {reason or '-'} | "
                     f"{o.seconds:.0f} |")
    if total_s is not None:
        lines.append(f"\n{sum(o.result == 'PASS' for o in outcomes)} of {len(outcomes)} rows pass; the harness took "
                     f"{total_s:.0f} s")
    return "\n".join(lines)
