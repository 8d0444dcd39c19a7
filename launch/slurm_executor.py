"""The Slurm executor: a sweep becomes job arrays, one per (stage, profile, base tasks waited for).

One executor, one file (submitit's shape): ~430 lines of submission, dependency grouping, cluster limits and
Slurm's view, read together when a sweep misbehaves on a cluster.

Array task i of an array trains the cell on line i+1 of the array's cell list, so one ``sbatch`` call covers
hundreds of cells. Which job runs which cell is recorded in ``OUTPUT/slurm/jobs.json``; together with Slurm's
own view (``scontrol show job``) it lets a re-run submit only the cells that are missing or failed.

**Dependencies are per base task.** A transfer cell waits (``afterok``) for exactly the base cells it needs: the
one it copies units from and the one that is its reference (the target's base, whose top-1 is its 1.0), named as
array tasks (``123_4``). Slurm gives every task of an array the same dependency, so the transfer cells of a
(stage, profile) are grouped by that set of base tasks, one array per set. A failed base then cancels only its
own dependants (``--kill-on-invalid-dep``: Slurm's ``DependencyNeverSatisfied``), and each transfer starts as
soon as its bases are done, not after the slowest base of the stage. A paper grid has a few such sets per seed
(AnB-like cells wait for the source and the target base, BnB-like ones for the target base only).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

from rich.console import Console

from datamodules.errors import UserError
from launch.executor_base import Executor, ExecutorView, SweepOutcome
from launch.slurm_profiles import SlurmProfile, load_profiles, pick_profile, profile_for_stage
from launch.sweep import STAGES, Cell, SweepPlan

ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                 "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING"}


class _ScriptTemplate(Template):
    delimiter = "@"  # bash owns $


def _comment_safe(value: str) -> str:
    """Values shown in script comments: no newline can end the comment and start a command."""
    return re.sub(r"[^\w.+-]", "_", value)


def slurm_env() -> dict[str, str]:
    """The environment for Slurm client commands (SLURM_CONF must reach every one of them)."""
    return dict(os.environ)


def run_slurm(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=slurm_env(), timeout=60)
    except FileNotFoundError:
        raise UserError(f"{cmd[0]} not found: run on a Slurm login node (or install slurm-client)") from None
    if check and proc.returncode != 0:
        raise UserError(f"{shlex.join(cmd)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


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
    proc = run_slurm(["scontrol", "show", "job", "--oneliner"], check=False)
    wanted = set(job_ids)
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


def _shown_state(job: SlurmJob) -> str:
    """Slurm's state, plus why when a base task is the cause: a dependant waiting for one (``Dependency``) or
    cancelled because one failed (``DependencyNeverSatisfied``), so status tells those apart from the rest."""
    return f"{job.state} ({job.reason})" if job.reason.startswith("Dependency") else job.state


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


def waits_for(cell: Cell) -> list[str]:
    """The cells whose success a cell's job needs: those it copies units from (``depends_on``) and, for a
    transfer cell, its reference base (without it the cell's relative top-1 has no 1.0)."""
    deps = list(cell.depends_on)
    if cell.stage == "transfer" and cell.reference and cell.reference not in deps:
        deps.append(cell.reference)
    return deps


@dataclass
class ArraySubmission:
    """One sbatch call: cells of one (stage, profile) that wait for the same base cells; script and command line."""

    stage: str
    profile_name: str
    profile: SlurmProfile
    cells: list[Cell]
    script: Path
    cells_file: Path
    waits_for: tuple[str, ...] = ()  # the unfinished cells (ids) every cell of this array waits for
    after: list[str] = field(default_factory=list)  # their array task ids (``123_4``), afterok
    extra: list[str] = field(default_factory=list)  # more sbatch options (e.g. --hold)
    job_id: str | None = None

    def command(self, sweep: str, log_dir: Path) -> list[str]:
        array = f"0-{len(self.cells) - 1}" + (f"%{self.profile.array_throttle}" if self.profile.array_throttle else "")
        cmd = ["sbatch", "--parsable", f"--job-name=mkf-{_comment_safe(sweep)}-{self.stage}", f"--array={array}",
               f"--output={log_dir.absolute() / '%A_%a.out'}", "--open-mode=append", f"--chdir={Path.cwd()}",
               *self.profile.sbatch_options()]
        if self.after:
            # a failed (or cancelled) base task cancels this array at once instead of leaving it pending forever
            cmd += [f"--dependency=afterok:{':'.join(self.after)}", "--kill-on-invalid-dep=yes"]
        return [*cmd, *self.extra, str(self.script)]


def render_script(plan: SweepPlan, sub: ArraySubmission) -> str:
    """The array's batch script; every value that came from a config is shell-quoted."""
    p = sub.profile
    env = {"WANDB_MODE": p.wandb_mode, **p.env}
    return _ScriptTemplate(read_template()).substitute(
        sweep=_comment_safe(plan.name), stage=sub.stage, profile=_comment_safe(sub.profile_name),
        cells_file=shlex.quote(str(sub.cells_file.absolute())),
        setup="\n".join(p.setup),
        env="\n".join(f"export {k}={shlex.quote(str(v))}" for k, v in env.items() if re.match(r"^[A-Z_][A-Z0-9_]*$", k)),
        max_restarts=int(p.max_restarts), python=shlex.quote(p.python or sys.executable), nodes=int(p.nodes),
        devices=int(p.devices), accelerator=shlex.quote(p.accelerator),
        checkpoint_every_s=int(p.checkpoint_every_min * 60), preempt_check_steps=int(p.preempt_check_steps),
    )


def read_template() -> str:
    """The batch script template, shipped as package data (works from a checkout and from `pip install .`)."""
    from importlib.resources import files

    return files("slurm").joinpath("templates", "cell_array.sbatch").read_text()


class SlurmExecutor(Executor):
    """Submit cells as job arrays; ``run`` returns once everything is submitted (Slurm runs it)."""

    name = "slurm"

    def __init__(self, profile: str | None = None, profiles_file: str | None = None, dry_run: bool = False,
                 sweep_slurm: dict[str, Any] | None = None, console: Console | None = None, hold: bool = False,
                 limits: ClusterLimits | None = None, **_: Any) -> None:
        self.profiles = load_profiles(profiles_file)
        self.default_profile = profile
        self.dry_run = dry_run
        self.sweep_slurm = sweep_slurm or {}
        self.console = console or Console()
        self.sbatch_calls = 0
        self.hold = hold  # submit held (`--hold`): Slurm accepts and queues the arrays, runs nothing
        self.limits: ClusterLimits | None = limits  # None: read from the cluster when submitting

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> SlurmExecutor:
        return cls(profile=options.get("profile"), profiles_file=options.get("profiles_file"),
                   dry_run=bool(options.get("dry_run")), sweep_slurm=options.get("sweep_slurm"),
                   hold=bool(options.get("hold")))

    @classmethod
    def used_by(cls, plan: SweepPlan) -> bool:
        return (plan.output_dir / "slurm" / "jobs.json").is_file()

    def status(self, plan: SweepPlan) -> ExecutorView:
        """Slurm's view of every cell it was given: job id, state, Slurm's restart count, elapsed time."""
        book = JobBook.load(plan.output_dir)
        jobs = query_jobs([e["job_id"] for e in book.cells.values()]) if book.cells else {}
        view = ExecutorView(["job", "slurm", "requeues", "elapsed"])
        for cid, entry in book.cells.items():
            job = jobs.get(entry.get("job_id", ""))
            view.rows[cid] = [entry.get("job_id", ""), _shown_state(job) if job else "gone",
                              str(job.restarts) if job else "", job.elapsed if job else ""]
            if job is not None and job.state == "RUNNING":
                view.running.add(cid)
        return view

    def cancel(self, plan: SweepPlan) -> list[str]:
        return cancel_sweep(plan)

    def cells_to_submit(self, plan: SweepPlan, cells: Sequence[Cell]) -> tuple[list[Cell], dict[str, str]]:
        """Unfinished cells minus those Slurm is already running or queueing; also their active job ids."""
        book = JobBook.load(plan.output_dir)
        known = {cid: entry["job_id"] for cid, entry in book.cells.items()}
        jobs = query_jobs([known[c.id] for c in cells if c.id in known])
        active = {c.id: known[c.id] for c in cells
                  if c.id in known and known[c.id] in jobs and jobs[known[c.id]].state in ACTIVE_STATES}
        return [c for c in cells if c.id not in active], active

    def plan_arrays(self, plan: SweepPlan, cells: Sequence[Cell], active: dict[str, str],
                    max_array_tasks: int = 1000) -> list[ArraySubmission]:
        """One array per (stage, profile, unfinished cells waited for), each split into arrays of at most
        ``max_array_tasks`` cells (MaxArraySize). A finished dependency needs no waiting; a queued one
        (``active``) or one of ``cells`` does. Base arrays come first, each group in plan order."""
        slurm_dir = plan.output_dir / "slurm"
        pending = {c.id for c in cells} | set(active)
        order = {c.id: i for i, c in enumerate(plan.cells)}  # a group lists its bases in plan order (stable output)
        groups: dict[tuple[str, str, tuple[str, ...]], list[Cell]] = {}
        names: dict[str, str] = {}
        for cell in cells:
            if cell.stage not in names:
                names[cell.stage] = profile_for_stage(self.sweep_slurm, cell.stage, self.default_profile)
            deps = tuple(sorted((d for d in waits_for(cell) if d in pending), key=lambda d: (order.get(d, -1), d)))
            groups.setdefault((cell.stage, names[cell.stage], deps), []).append(cell)
        subs: list[ArraySubmission] = []
        stamp = int(time.time() * 1000)
        for stage in STAGES:
            for (s, name, deps), group in groups.items():
                if s != stage:
                    continue
                profile = pick_profile(self.profiles, name, f"stage {stage}")
                for start in range(0, len(group), max_array_tasks):
                    tag = f"{stage}-{_comment_safe(name)}-{stamp}-{len(subs)}"
                    subs.append(ArraySubmission(stage, name, profile, group[start:start + max_array_tasks],
                                                slurm_dir / f"{tag}.sbatch", slurm_dir / f"{tag}.cells", deps))
        return subs

    def _limits(self, cells: Sequence[Cell]) -> ClusterLimits:
        if self.limits is None:
            name = profile_for_stage(self.sweep_slurm, cells[0].stage if cells else "base", self.default_profile)
            profile = pick_profile(self.profiles, name, "limits")
            self.limits = ClusterLimits(max_submit_jobs=profile.max_submit_jobs) if self.dry_run else read_limits(profile)
        return self.limits

    def run(self, plan: SweepPlan, cells: Sequence[Cell]) -> SweepOutcome:
        todo, active = self.cells_to_submit(plan, cells)
        outcome = SweepOutcome({cid: "submitted" for cid in active})
        by_id = plan.by_id()
        for cid in active:
            self.console.print(f"left alone: {by_id[cid].label} is already queued/running as {active[cid]}")
        limits = self._limits(todo)
        subs = self.plan_arrays(plan, todo, active, limits.max_array_tasks)
        budget = limits.budget
        book = JobBook.load(plan.output_dir)
        tasks: dict[str, str] = dict(active)  # cell id -> the array task (``123_4``) that trains it
        shown: set[tuple[str, str]] = set()  # (stage, profile) whose batch script the dry run printed
        try:
            for sub in subs:
                # a cell whose dependency is neither finished nor queued waits for a later `mkf sweep run`
                ready = sub.cells if all(d in tasks for d in sub.waits_for) else []
                if budget is not None:
                    ready = ready[:budget]
                    budget -= len(ready)
                for cell in sub.cells[len(ready):]:
                    outcome.states[cell.id] = "deferred"
                if not ready:
                    continue
                sub.cells = ready
                sub.after = [tasks[d] for d in sub.waits_for]
                self._submit(plan, sub, book, shown)
                for i, cell in enumerate(sub.cells):
                    tasks[cell.id] = f"{sub.job_id}_{i}"
                    outcome.states[cell.id] = "submitted"
        finally:  # jobs.json is written once (10,000 entries), and also when a later sbatch fails: the arrays
            # already queued must be known to the next run, or it would submit them twice
            if not self.dry_run and self.sbatch_calls:
                book.save()
        deferred = sum(s == "deferred" for s in outcome.states.values())
        if deferred:
            cap = f"job cap {limits.max_submit_jobs} ({limits.source}), {limits.queued} already queued"
            self.console.print(f"{deferred} cells not submitted yet ({cap}, or their base cell is not queued); "
                               "run the same `mkf sweep run` again later to top up")
        return outcome

    def _submit(self, plan: SweepPlan, sub: ArraySubmission, book: JobBook, shown: set[tuple[str, str]]) -> None:
        """sbatch one array (or, in a dry run, print it) and record its tasks; sets ``sub.job_id``."""
        log_dir = plan.output_dir / "slurm" / "logs"
        if self.hold:
            sub.extra.append("--hold")
        if not self.dry_run:
            sub.script.parent.mkdir(parents=True, exist_ok=True)
            log_dir.mkdir(parents=True, exist_ok=True)
            sub.cells_file.write_text("".join(f"{c.id} {Path(c.config_path).absolute()}\n" for c in sub.cells))
            sub.script.write_text(render_script(plan, sub))
        cmd = sub.command(plan.name, log_dir)
        if self.dry_run:
            by_id = plan.by_id() if sub.waits_for else {}
            waits = ", ".join(f"{task} ({by_id[d].label})" for d, task in zip(sub.waits_for, sub.after, strict=True))
            self.console.print(f"# {sub.stage} array, profile {sub.profile_name}: {len(sub.cells)} cells; "
                               + (f"waits for base tasks {waits}" if waits else "waits for nothing"),
                               markup=False, highlight=False, soft_wrap=True)
            if (sub.stage, sub.profile_name) in shown:  # arrays of one (stage, profile) differ by cells file only
                self.console.print(f"# batch script as above, cells file {sub.cells_file.name}", markup=False,
                                   highlight=False, soft_wrap=True)
            else:
                shown.add((sub.stage, sub.profile_name))
                self.console.print(render_script(plan, sub), markup=False, highlight=False, soft_wrap=True)
            self.console.print(shlex.join(cmd), markup=False, highlight=False, soft_wrap=True)
            sub.job_id = f"<{sub.script.stem}>"
            return
        sub.job_id = run_slurm(cmd).stdout.strip().split(";")[0]
        self.sbatch_calls += 1
        self.console.print(f"submitted {sub.stage} array {sub.job_id} ({sub.profile_name}): {len(sub.cells)} cells"
                           + (f", after base tasks {', '.join(sub.after)}" if sub.after else ""))
        now = time.time()
        for i, cell in enumerate(sub.cells):
            book.cells[cell.id] = {"job_id": f"{sub.job_id}_{i}", "array": sub.job_id, "task": i, "stage": sub.stage,
                                   "profile": sub.profile_name, "submitted": now}


def cancel_sweep(plan: SweepPlan) -> list[str]:
    """scancel every array of the sweep that Slurm still knows; returns the array ids cancelled."""
    book = JobBook.load(plan.output_dir)
    arrays = sorted({entry["array"] for entry in book.cells.values()})
    if arrays:
        run_slurm(["scancel", *arrays], check=False)
    return arrays
