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
from typing import TYPE_CHECKING, Any

from rich.console import Console

from datamodules.errors import UserError
from launch.executor_base import Executor, ExecutorView, SweepOutcome
from launch.slurm_profiles import (
    SlurmProfile,
    load_profiles,
    pick_profile,
    profile_for_cpu_stage,
    profile_for_stage,
)
from launch.sweep import STAGES, Cell, SweepPlan

if TYPE_CHECKING:
    from launch.prepare import PrepareJob

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
    bundles: list[list[Cell]] = field(default_factory=list)  # array task i trains bundles[i] (default: a cell each)

    def __post_init__(self) -> None:
        if not self.bundles:
            self.bundles = [[c] for c in self.cells]

    def command(self, sweep: str, log_dir: Path) -> list[str]:
        array = f"0-{len(self.bundles) - 1}" + (f"%{self.profile.array_throttle}" if self.profile.array_throttle else "")
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
    return _ScriptTemplate(read_template()).substitute(
        sweep=_comment_safe(plan.name), stage=sub.stage, profile=_comment_safe(sub.profile_name),
        cells_file=shlex.quote(str(sub.cells_file.absolute())),
        cell_logs=_dquote(str(cell_log_dir(plan).absolute())),
        setup="\n".join(p.setup), env=_env_lines(p),
        max_restarts=int(p.max_restarts), python=shlex.quote(p.python or sys.executable), nodes=int(p.nodes),
        devices=int(p.devices), accelerator=shlex.quote(p.accelerator),
        checkpoint_every_s=int(p.checkpoint_every_min * 60), preempt_check_steps=int(p.preempt_check_steps),
        one_rank=int(p.nodes * p.devices == 1), hide_gpus="" if p.gpus_per_node else "CUDA_VISIBLE_DEVICES= ",
    )


def _env_lines(p: SlurmProfile) -> str:
    env = {"WANDB_MODE": p.wandb_mode, **p.env}
    return "\n".join(f"export {k}={shlex.quote(str(v))}" for k, v in env.items() if re.match(r"^[A-Z_][A-Z0-9_]*$", k))


def _dquote(text: str) -> str:
    """A path for inside a bash double-quoted string (the cell id is appended there)."""
    return re.sub(r'([\\"$`])', r"\\\1", text)


def cell_log_dir(plan: SweepPlan) -> Path:
    """Where each cell's own log lives on Slurm: beside the local executor's (``OUTPUT/logs/<cell id>.log``)."""
    return plan.output_dir / "logs"


def read_template(name: str = "cell_array.sbatch") -> str:
    """A batch script template, shipped as package data (works from a checkout and from `pip install .`)."""
    from importlib.resources import files

    return files("slurm").joinpath("templates", name).read_text()


# ---- bundles: several short cells per array task ---------------------------------------------------------------
def cell_seconds(plan: SweepPlan, cells: Sequence[Cell]) -> dict[str, float]:
    """Each cell's estimated training time (launch.cost, the table's GPU); cells the table cannot price are absent."""
    from launch.cost import cell_gpu_hours, load_costs

    table = load_costs()
    gpu = str(table.get("gpu", "a100"))
    per_template: dict[str, float | None] = {}
    out: dict[str, float] = {}
    for cell in cells:
        key = cell.template if cell.template is not None and cell.template in plan.templates else None
        if key is not None and key in per_template:
            hours = per_template[key]
        else:
            config = plan.templates[key] if key is not None else plan.configs[cell.id]
            hours, _ = cell_gpu_hours(config, table, gpu)
            if key is not None:
                per_template[key] = hours
        if hours is not None:
            out[cell.id] = hours * 3600
    return out


def pack_bundles(cells: Sequence[Cell], seconds: dict[str, float], target_s: float | None) -> list[list[Cell]]:
    """Cells in order, packed greedily into bundles whose estimated time stays within ``target_s``: K equal cells
    of estimate t make bundles of K = floor(target / t). A cell the table cannot price, or one at least as long
    as the target, runs alone; so does every cell without a target."""
    if not target_s:
        return [[c] for c in cells]
    bundles: list[list[Cell]] = []
    current: list[Cell] = []
    used = 0.0
    for cell in cells:
        t = seconds.get(cell.id)
        if t is None or t >= target_s:
            bundles.append([cell])
            continue
        if current and used + t > target_s * (1 + 1e-9):
            bundles.append(current)
            current, used = [], 0.0
        current.append(cell)
        used += t
    if current:
        bundles.append(current)
    return bundles


# ---- the CPU stages: data preparation before the bases, reports after the cells ---------------------------------
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
    proc = run_slurm(["scontrol", "show", "job", "--oneliner"], check=False)
    wanted, out = set(job_ids), {}
    for line in proc.stdout.splitlines():
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if fields.get("JobId") in wanted and "ArrayJobId" not in fields:
            out[fields["JobId"]] = fields.get("JobState", "UNKNOWN")
    return out


def prepare_pseudo_id(job: PrepareJob) -> str:
    """How a write appears among the ids a cell array waits for (beside base cell ids)."""
    return f"prepare:{job.key}"


class SlurmExecutor(Executor):
    """Submit cells as job arrays; ``run`` returns once everything is submitted (Slurm runs it)."""

    name = "slurm"

    def __init__(self, profile: str | None = None, profiles_file: str | None = None, dry_run: bool = False,
                 sweep_slurm: dict[str, Any] | None = None, console: Console | None = None, hold: bool = False,
                 limits: ClusterLimits | None = None, prepare: Sequence[PrepareJob] | None = None,
                 reports: bool = True, **_: Any) -> None:
        self.profiles = load_profiles(profiles_file)
        self.default_profile = profile
        self.dry_run = dry_run
        self.sweep_slurm = sweep_slurm or {}
        self.console = console or Console()
        self.sbatch_calls = 0
        self.hold = hold  # submit held (`--hold`): Slurm accepts and queues the arrays, runs nothing
        self.limits: ClusterLimits | None = limits  # None: read from the cluster when submitting
        self.prepare = list(prepare or [])  # the sweep's writes (launch.prepare.prepare_jobs), checked already
        self.reports = reports  # submit the report jobs (afterany) after the cells
        self.claimed: dict[str, str] = {}  # cell id -> the live job of another sweep whose claim holds it

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> SlurmExecutor:
        return cls(profile=options.get("profile"), profiles_file=options.get("profiles_file"),
                   dry_run=bool(options.get("dry_run")), sweep_slurm=options.get("sweep_slurm"),
                   hold=bool(options.get("hold")), prepare=options.get("prepare"),
                   reports=options.get("reports", True) is not False)

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
        """Unfinished cells minus those Slurm is already running or queueing; also their active job ids.

        Two sources: this sweep's own job book, and the shared store's claims. A cell that another sweep's job
        (or another user's) is training right now holds a claim naming that Slurm job; submitting it again would
        only hold an allocation while ``run_once`` waits for the holder, so it is left to that job, and the cells
        that depend on it wait for that job instead (``afterok``). All of it in one ``scontrol`` call."""
        from launch.store import claim_holder

        book = JobBook.load(plan.output_dir)
        ours = {c.id: book.cells[c.id]["job_id"] for c in cells if c.id in book.cells}
        claimed: dict[str, str] = {}
        for cell in cells:
            holder = claim_holder(cell)
            if holder and holder.get("job") and str(holder.get("task") or "").isdigit():
                claimed[cell.id] = f"{holder['job']}_{holder['task']}"  # what Slurm calls that array task
        jobs = query_jobs(sorted({*ours.values(), *claimed.values()}))
        live = {j for j, job in jobs.items() if job.state in ACTIVE_STATES}
        active = {cid: job for cid, job in ours.items() if job in live}
        self.claimed = {cid: job for cid, job in claimed.items() if job in live and cid not in active}
        active.update(self.claimed)
        return [c for c in cells if c.id not in active], active

    def plan_arrays(self, plan: SweepPlan, cells: Sequence[Cell], active: dict[str, str],
                    max_array_tasks: int = 1000, prepared: dict[str, str] | None = None) -> list[ArraySubmission]:
        """One array per (stage, profile, unfinished cells waited for), each split into arrays of at most
        ``max_array_tasks`` tasks (MaxArraySize). A finished dependency needs no waiting; a queued one
        (``active``) or one of ``cells`` does. Base arrays come first, each group in plan order.

        ``prepared``: dataset role -> the pseudo id of its pending write (:func:`prepare_pseudo_id`); a cell
        training on that role waits for it too. Within a group, cells shorter than the profile's
        ``task_length`` are packed into bundles (one array task each), so the limits count bundles."""
        slurm_dir = plan.output_dir / "slurm"
        prepared = prepared or {}
        pending = {c.id for c in cells} | set(active) | set(prepared.values())
        order = {c.id: i for i, c in enumerate(plan.cells)}  # a group lists its bases in plan order (stable output)
        groups: dict[tuple[str, str, tuple[str, ...]], list[Cell]] = {}
        names: dict[str, str] = {}
        for cell in cells:
            if cell.stage not in names:
                names[cell.stage] = profile_for_stage(self.sweep_slurm, cell.stage, self.default_profile)
            needs = waits_for(cell) + ([prepared[cell.target]] if cell.target in prepared else [])
            deps = tuple(sorted((d for d in needs if d in pending), key=lambda d: (order.get(d, -1), d)))
            groups.setdefault((cell.stage, names[cell.stage], deps), []).append(cell)
        subs: list[ArraySubmission] = []
        stamp = int(time.time() * 1000)
        for stage in STAGES:
            for (s, name, deps), group in groups.items():
                if s != stage:
                    continue
                profile = pick_profile(self.profiles, name, f"stage {stage}")
                target = profile.task_length_s
                bundles = pack_bundles(group, cell_seconds(plan, group) if target else {}, target)
                for start in range(0, len(bundles), max_array_tasks):
                    tag = f"{stage}-{_comment_safe(name)}-{stamp}-{len(subs)}"
                    part = bundles[start:start + max_array_tasks]
                    subs.append(ArraySubmission(stage, name, profile, [c for b in part for c in b],
                                                slurm_dir / f"{tag}.sbatch", slurm_dir / f"{tag}.cells", deps,
                                                bundles=part))
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
            how = "is being trained by" if cid in self.claimed else "is already queued/running as"
            self.console.print(f"left alone: {by_id[cid].label} {how} {active[cid]}"
                               + (" (its claim in the shared store)" if cid in self.claimed else ""))
        limits = self._limits(todo)
        stages = StageBook.load(plan.output_dir)
        tasks: dict[str, str] = dict(active)  # cell id (or a write's pseudo id) -> the job that makes it
        try:
            before = self.sbatch_calls
            prepared = self._submit_prepare(plan, todo, stages, tasks)
            subs = self.plan_arrays(plan, todo, active, limits.max_array_tasks, prepared)
            budget = limits.budget
            reserve = 2 if self.reports and subs else 0  # the report jobs count against the job cap too
            if budget is not None:
                budget = max(0, budget - (self.sbatch_calls - before) - reserve)
            book = JobBook.load(plan.output_dir)
            shown: set[tuple[str, str]] = set()  # (stage, profile) whose batch script the dry run printed
            arrays: dict[str, list[str]] = {}  # stage -> the array ids submitted now (for the report jobs)
            try:
                for sub in subs:
                    # a cell whose dependency is neither finished nor queued waits for a later `mkf sweep run`
                    ready = sub.bundles if all(d in tasks for d in sub.waits_for) else []
                    if budget is not None:
                        ready = ready[:budget]
                        budget -= len(ready)
                    for bundle in sub.bundles[len(ready):]:
                        for cell in bundle:
                            outcome.states[cell.id] = "deferred"
                    if not ready:
                        continue
                    sub.bundles = ready
                    sub.cells = [c for b in ready for c in b]
                    sub.after = [tasks[d] for d in sub.waits_for]
                    self._submit(plan, sub, book, shown)
                    arrays.setdefault(sub.stage, []).append(str(sub.job_id))
                    for i, bundle in enumerate(sub.bundles):
                        for cell in bundle:
                            tasks[cell.id] = f"{sub.job_id}_{i}"
                            outcome.states[cell.id] = "submitted"
            finally:  # jobs.json is written once (10,000 entries), and also when a later sbatch fails: the
                # arrays already queued must be known to the next run, or it would submit them twice
                if not self.dry_run and self.sbatch_calls:
                    book.save()
            if self.reports:
                self._submit_reports(plan, arrays, active, stages)
        finally:
            if not self.dry_run and (stages.prepare or stages.reports):
                stages.save()
        deferred = sum(s == "deferred" for s in outcome.states.values())
        if deferred:
            cap = f"job cap {limits.max_submit_jobs} ({limits.source}), {limits.queued} already queued"
            self.console.print(f"{deferred} cells not submitted yet ({cap}, or their base cell is not queued); "
                               "run the same `mkf sweep run` again later to top up")
        return outcome

    def _submit_prepare(self, plan: SweepPlan, cells: Sequence[Cell], stages: StageBook,
                        tasks: dict[str, str]) -> dict[str, str]:
        """One CPU job per pending write whose roles some of ``cells`` train on; a write still queued or running
        from an earlier submission is waited for, not submitted again. Returns role -> the write's pseudo id
        (``tasks`` maps that to its job id)."""
        from launch.prepare import pending

        roles_needed = {c.target for c in cells}
        known = stages.prepare
        states = query_plain_jobs([e["job_id"] for e in known.values()]) if known and not self.dry_run else {}
        prepared: dict[str, str] = {}
        for job in pending(self.prepare):
            if not roles_needed & set(job.roles):
                continue
            pseudo = prepare_pseudo_id(job)
            entry = known.get(job.key)
            if entry and entry.get("fingerprint") == job.fingerprint and states.get(entry["job_id"]) in ACTIVE_STATES:
                self.console.print(f"left alone: the write of {job.out} is already queued/running as {entry['job_id']}")
                tasks[pseudo] = entry["job_id"]
            else:
                tasks[pseudo] = self._submit_prepare_job(plan, job, stages)
            prepared.update({role: pseudo for role in job.roles})
        for job in self.prepare:
            if job.complete() and roles_needed & set(job.roles):
                self.console.print(f"data for {', '.join(job.roles)}: {job.out} prepared already; no prepare job")
        return prepared

    def _cpu_job(self, plan: SweepPlan, stage: str, tag: str, template: str, after: list[str], kind: str,
                 **values: str) -> str:
        """sbatch one CPU job of a stage (prepare, report), or print it in a dry run; returns its job id."""
        name, profile = profile_for_cpu_stage(self.profiles, self.sweep_slurm, stage, self.default_profile)
        slurm_dir = plan.output_dir / "slurm"
        script = slurm_dir / f"{tag}.sbatch"
        body = _ScriptTemplate(read_template(template)).substitute(
            sweep=_comment_safe(plan.name), profile=_comment_safe(name), setup="\n".join(profile.setup),
            env=_env_lines(profile), python=shlex.quote(profile.python or sys.executable), **values)
        # no --signal: these jobs have no handler for USR1 (its default action kills them); --requeue stays
        # (a preempted write resumes where it stopped, a report is simply redone)
        opts = [o for o in profile.sbatch_options() if not o.startswith("--signal")]
        cmd = ["sbatch", "--parsable", f"--job-name=mkf-{_comment_safe(plan.name)}-{stage}",
               f"--output={(slurm_dir / 'logs').absolute() / f'{tag}-%j.out'}", "--open-mode=append",
               f"--chdir={Path.cwd()}", *opts]
        if after:
            cmd.append(f"--dependency={kind}:{':'.join(after)}")
            if kind == "afterok":
                cmd.append("--kill-on-invalid-dep=yes")
        if self.hold:
            cmd.append("--hold")
        cmd.append(str(script))
        if self.dry_run:
            self.console.print(f"# {stage} job, profile {name}", markup=False, highlight=False, soft_wrap=True)
            self.console.print(body, markup=False, highlight=False, soft_wrap=True)
            self.console.print(shlex.join(cmd), markup=False, highlight=False, soft_wrap=True)
            return f"<{tag}>"
        (slurm_dir / "logs").mkdir(parents=True, exist_ok=True)
        script.write_text(body)
        job_id = run_slurm(cmd).stdout.strip().split(";")[0]
        self.sbatch_calls += 1
        return job_id

    def _submit_prepare_job(self, plan: SweepPlan, job: PrepareJob, stages: StageBook) -> str:
        slurm_dir = plan.output_dir / "slurm"
        job_file = slurm_dir / f"prepare-{job.key}.json"
        if not self.dry_run:
            slurm_dir.mkdir(parents=True, exist_ok=True)
            job_file.write_text(json.dumps(job.to_json(), indent=1) + "\n")
        job_id = self._cpu_job(plan, "prepare", f"prepare-{job.key}", "prepare.sbatch", [], "afterok",
                               roles=_comment_safe(",".join(job.roles)),
                               job_file=shlex.quote(str(job_file.absolute())))
        if not self.dry_run:
            self.console.print(f"submitted prepare job {job_id}: {job.spec.source} -> {job.out} "
                               f"(roles {', '.join(job.roles)})")
            stages.prepare[job.key] = {"job_id": job_id, "out": str(job.out), "roles": job.roles,
                                       "fingerprint": job.fingerprint, "submitted": time.time()}
        return job_id

    def _submit_reports(self, plan: SweepPlan, arrays: dict[str, list[str]], active: dict[str, str],
                        stages: StageBook) -> None:
        """The sweep's report jobs: one after the base arrays (partial) when transfer arrays follow, and one after
        everything submitted or still queued (afterany: a failed cell leaves a gap, never a missing report)."""
        if not arrays:
            return
        queued = sorted({task.split("_")[0] for task in active.values()})
        everything = [*queued, *[a for stage in STAGES for a in arrays.get(stage, [])]]
        scopes: list[tuple[str, list[str]]] = []
        if arrays.get("base") and arrays.get("transfer"):
            scopes.append(("base", [*arrays["base"]]))
        scopes.append(("all", everything))
        stamp = int(time.time() * 1000)
        for scope, after in scopes:
            what = "the base arrays" if scope == "base" else "every array of the sweep"
            job_id = self._cpu_job(plan, "report", f"report-{scope}-{stamp}", "report.sbatch", after, "afterany",
                                   scope=_comment_safe(what).replace("_", " "),
                                   sweep_dir=shlex.quote(str(plan.output_dir.absolute())))
            if not self.dry_run:
                self.console.print(f"submitted report job {job_id} after {what} ({len(after)} arrays)")
                stages.reports.append({"job_id": job_id, "scope": scope, "after": after, "submitted": time.time()})

    def _submit(self, plan: SweepPlan, sub: ArraySubmission, book: JobBook, shown: set[tuple[str, str]]) -> None:
        """sbatch one array (or, in a dry run, print it) and record its tasks; sets ``sub.job_id``."""
        log_dir = plan.output_dir / "slurm" / "logs"
        if self.hold:
            sub.extra.append("--hold")
        if not self.dry_run:
            sub.script.parent.mkdir(parents=True, exist_ok=True)
            log_dir.mkdir(parents=True, exist_ok=True)
            cell_log_dir(plan).mkdir(parents=True, exist_ok=True)
            sub.cells_file.write_text("".join(
                f"{c.id}\t{i}\t{Path(c.run_dir).absolute()}\t{Path(c.config_path).absolute()}\n"
                for i, bundle in enumerate(sub.bundles) for c in bundle))
            sub.script.write_text(render_script(plan, sub))
        cmd = sub.command(plan.name, log_dir)
        if self.dry_run:
            by_id = plan.by_id() if sub.waits_for else {}
            waits = ", ".join(f"{task} ({by_id[d].label if d in by_id else d})"
                              for d, task in zip(sub.waits_for, sub.after, strict=True))
            bundled = f" in {len(sub.bundles)} tasks" if len(sub.bundles) != len(sub.cells) else ""
            self.console.print(f"# {sub.stage} array, profile {sub.profile_name}: {len(sub.cells)} cells{bundled}; "
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
        bundled = f" in {len(sub.bundles)} tasks (bundles)" if len(sub.bundles) != len(sub.cells) else ""
        self.console.print(f"submitted {sub.stage} array {sub.job_id} ({sub.profile_name}): {len(sub.cells)} cells"
                           + bundled + (f", after {', '.join(sub.after)}" if sub.after else ""))
        now = time.time()
        for i, bundle in enumerate(sub.bundles):
            for cell in bundle:
                book.cells[cell.id] = {"job_id": f"{sub.job_id}_{i}", "array": sub.job_id, "task": i,
                                       "stage": sub.stage, "profile": sub.profile_name, "submitted": now,
                                       **({"bundle": len(bundle)} if len(bundle) > 1 else {})}


def cancel_sweep(plan: SweepPlan) -> list[str]:
    """scancel every array of the sweep that Slurm still knows; returns the array ids cancelled."""
    book = JobBook.load(plan.output_dir)
    arrays = sorted({entry["array"] for entry in book.cells.values()})
    others = StageBook.load(plan.output_dir).job_ids()  # prepare and report jobs
    if arrays or others:
        run_slurm(["scancel", *arrays, *others], check=False)
    return arrays + others
