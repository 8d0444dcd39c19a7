"""The Slurm client commands and the books kept beside them: ``sbatch``/``squeue``/``scontrol``/``sacctmgr`` calls,
Slurm's view of jobs and array tasks, the cluster's limits, and ``OUTPUT/slurm/jobs.json`` and ``stages.json``
(which job runs which cell, which prepare and report jobs were submitted).

Which job runs which cell, together with Slurm's own view (``scontrol show job``), lets a re-run submit only the
cells that are missing or failed (:mod:`.executor`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datamodules.errors import UserError
from launch.planning.profiles import SlurmProfile

ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                 "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING"}


def slurm_env() -> dict[str, str]:
    """The environment for Slurm client commands (SLURM_CONF must reach every one of them)."""
    return dict(os.environ)


SLURM_TIMEOUT_S = 60.0  # a controller busy with hundreds of tasks ending at once can be slower than this


class SlurmTimeout(UserError):
    """A Slurm client command got no answer in time: it may or may not have been carried out."""


def run_slurm(cmd: list[str], check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run a Slurm client command; every way it can fail is one UserError line (never a traceback): not installed,
    no answer in time (SlurmTimeout: the caller decides whether it happened), or an error status."""
    limit = float(os.environ.get("MKF_SLURM_TIMEOUT_S") or (timeout or SLURM_TIMEOUT_S))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=slurm_env(), timeout=limit)
    except FileNotFoundError:
        raise UserError(f"{cmd[0]} not found: run on a Slurm login node (or install slurm-client)") from None
    except subprocess.TimeoutExpired:
        raise SlurmTimeout(f"{cmd[0]} did not answer within {limit:.0f} s (the Slurm controller is busy or down); "
                           "rerun the same command later: what was submitted is recognised") from None
    if check and proc.returncode != 0:
        first = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()[0]
        raise UserError(f"{cmd[0]} failed: {first}; check the cluster and rerun (nothing else was submitted)")
    return proc


def find_by_comment(tag: str) -> str | None:
    """The job id of this user's job whose comment is ``tag`` (an sbatch that was accepted but whose reply timed
    out), or None."""
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or ""
    try:
        proc = run_slurm(["squeue", "-h", "-o", "%F|%k", *(["-u", user] if user else [])], check=False)
    except UserError:
        return None
    for line in proc.stdout.splitlines():
        job, _, comment = line.strip().partition("|")
        if comment.strip() == tag:
            return job.strip()
    return None


@dataclass
class SlurmJob:
    """One array task as Slurm reports it."""

    job_id: str  # ARRAYID_TASK
    state: str
    restarts: int = 0
    elapsed: str = ""
    node: str = ""
    reason: str = ""  # why it waits or ended (``Dependency``, ``DependencyNeverSatisfied``, ...)


def query_jobs(job_ids: Sequence[str]) -> dict[str, SlurmJob]:
    """Slurm's view of array tasks (``123_4``): state, restarts, elapsed. Unknown (purged) ids are absent."""
    if not job_ids:
        return {}
    wanted = set(job_ids)
    proc = _show_jobs(sorted({j.split("_")[0] for j in wanted}))
    jobs: dict[str, SlurmJob] = {}
    for line in proc.stdout.splitlines():
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        array, task = fields.get("ArrayJobId"), fields.get("ArrayTaskId")
        if not array or task is None or not task.isdigit():
            continue
        jid = f"{array}_{task}"
        if jid in wanted:
            jobs[jid] = SlurmJob(jid, fields.get("JobState", "UNKNOWN"), int(fields.get("Restarts", "0") or 0),
                                 fields.get("RunTime", ""), fields.get("NodeList", ""), fields.get("Reason", ""))
    # pending array tasks not yet split off are listed as ArrayTaskId=0-9 (or %throttle); expand them
    for line in proc.stdout.splitlines():
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        array, tasks = fields.get("ArrayJobId"), fields.get("ArrayTaskId", "")
        if array and tasks and not tasks.isdigit():
            for task in _expand_tasks(tasks):
                jid = f"{array}_{task}"
                if jid in wanted and jid not in jobs:
                    jobs[jid] = SlurmJob(jid, fields.get("JobState", "PENDING"), reason=fields.get("Reason", ""))
    return jobs


def _show_jobs(ids: list[str]) -> subprocess.CompletedProcess[str]:
    """``scontrol show job`` of these jobs (arrays) only, never the whole cluster's queue (thousands of other
    users' jobs, every run, status and round); ids Slurm purged are simply absent."""
    out, err, code = [], [], 0
    for job in ids:
        proc = run_slurm(["scontrol", "show", "job", "--oneliner", job], check=False)
        out.append(proc.stdout)
        code = code or proc.returncode
    return subprocess.CompletedProcess(["scontrol"], code, "".join(out), "".join(err))


def _expand_tasks(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split("%")[0].split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        elif part.isdigit():
            out.append(int(part))
    return out


@dataclass
class ClusterLimits:
    """What one user may submit: tasks per array (``MaxArraySize - 1``) and jobs in the queue (``MaxSubmitJobs``)."""

    max_array_tasks: int = 1000  # Slurm's default MaxArraySize=1001 allows indices 0..1000
    max_submit_jobs: int | None = None  # None: no cap known
    queued: int = 0  # this user's jobs (array tasks count one each) already in the queue
    source: str = "defaults"

    @property
    def budget(self) -> int | None:
        return None if self.max_submit_jobs is None else max(0, self.max_submit_jobs - self.queued)


def _max_array_size() -> int | None:
    proc = run_slurm(["scontrol", "show", "config"], check=False)
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", proc.stdout, re.M)
    return int(match.group(1)) if match else None


def _sacctmgr_max_submit(user: str, qos: str | None) -> int | None:
    """The smallest MaxSubmitJobs of the user's associations and QOS (MaxSubmitJobsPerUser); None if unknown."""
    caps: list[int] = []
    queries = [["sacctmgr", "-nP", "show", "assoc", f"user={user}", "format=MaxSubmitJobs"],
               ["sacctmgr", "-nP", "show", "qos", *([f"name={qos}"] if qos else ["normal"]),
                "format=MaxSubmitJobsPerUser"]]
    for cmd in queries:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=slurm_env(), timeout=30)
        except (FileNotFoundError, subprocess.TimeoutExpired):
            return None
        if proc.returncode != 0:  # no slurmdbd (accounting_storage/none): no limits to read
            continue
        caps += [int(v) for v in proc.stdout.split() if v.strip().isdigit()]
    return min(caps) if caps else None


def read_limits(profile: SlurmProfile) -> ClusterLimits:
    """The cluster's array size limit and the user's job cap (sacctmgr, else the profile's max_submit_jobs)."""
    limits = ClusterLimits()
    size = _max_array_size()
    if size is not None:
        limits.max_array_tasks, limits.source = max(1, size - 1), "scontrol show config"
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or ""
    cap = _sacctmgr_max_submit(user, profile.qos) if user else None
    if cap is not None:
        limits.max_submit_jobs, limits.source = cap, limits.source + " + sacctmgr"
    elif profile.max_submit_jobs is not None:
        limits.max_submit_jobs, limits.source = profile.max_submit_jobs, limits.source + " + profile max_submit_jobs"
    if limits.max_submit_jobs is not None:
        queued = run_slurm(["squeue", "-h", "-r", "-o", "%i", *(["-u", user] if user else [])], check=False)
        limits.queued = len(queued.stdout.split())
    return limits


@dataclass
class JobBook:
    """``OUTPUT/slurm/jobs.json``: the array task that runs (or ran) each cell."""

    path: Path
    cells: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, output_dir: Path) -> JobBook:
        path = output_dir / "slurm" / "jobs.json"
        try:
            cells = json.loads(path.read_text())
        except (OSError, ValueError):
            cells = {}
        return cls(path, cells)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name("jobs.json.tmp")
        tmp.write_text(json.dumps(self.cells, indent=1) + "\n")
        tmp.replace(self.path)


@dataclass
class StageBook:
    """``OUTPUT/slurm/stages.json``: the prepare jobs (by output folder) and the report jobs submitted."""

    path: Path
    prepare: dict[str, dict[str, Any]] = field(default_factory=dict)
    reports: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, output_dir: Path) -> StageBook:
        path = output_dir / "slurm" / "stages.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        return cls(path, dict(data.get("prepare") or {}), list(data.get("reports") or []))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name("stages.json.tmp")
        tmp.write_text(json.dumps({"prepare": self.prepare, "reports": self.reports}, indent=1) + "\n")
        tmp.replace(self.path)

    def job_ids(self) -> list[str]:
        return [e["job_id"] for e in self.prepare.values()] + [e["job_id"] for e in self.reports]


def query_plain_jobs(job_ids: Sequence[str]) -> dict[str, str]:
    """Slurm's state of plain (non-array) jobs by id; purged ones are absent."""
    if not job_ids:
        return {}
    proc = _show_jobs(sorted(set(job_ids)))
    wanted, out = set(job_ids), {}
    for line in proc.stdout.splitlines():
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if fields.get("JobId") in wanted and "ArrayJobId" not in fields:
            out[fields["JobId"]] = fields.get("JobState", "UNKNOWN")
    return out
