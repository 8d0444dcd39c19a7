"""The Slurm executor: a sweep becomes job arrays, one per (stage, profile, base tasks waited for).

One backend, one folder (submitit's shape): the submission and its dependency grouping here, the Slurm client
commands, books and cluster limits in :mod:`.commands`, the batch scripts and bundles in :mod:`.script`.

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
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from datamodules.errors import UserError
from launch.core.plan import Cell, SweepPlan, materialize_configs
from launch.execution.base import Executor, ExecutorView, SweepOutcome
from launch.execution.slurm.commands import (
    ACTIVE_STATES,
    ClusterLimits,
    JobBook,
    SlurmJob,
    SlurmTimeout,
    StageBook,
    find_by_comment,
    query_jobs,
    query_plain_jobs,
    read_limits,
    run_slurm,
)
from launch.execution.slurm.script import (
    ArraySubmission,
    ScriptTemplate,
    cell_log_dir,
    cell_seconds,
    comment_safe,
    env_lines,
    pack_bundles,
    read_template,
    render_script,
)
from launch.planning.profiles import (
    check_stage_worlds,
    load_profiles,
    pick_profile,
    profile_for_cpu_stage,
    profile_for_stage,
)
from launch.planning.schema import STAGES

if TYPE_CHECKING:
    from launch.planning.prepare import PrepareJob


def _shown_state(job: SlurmJob) -> str:
    """Slurm's state, plus why when a base task is the cause: a dependant waiting for one (``Dependency``) or
    cancelled because one failed (``DependencyNeverSatisfied``), so status tells those apart from the rest."""
    return f"{job.state} ({job.reason})" if job.reason.startswith("Dependency") else job.state


def waits_for(cell: Cell) -> list[str]:
    """The cells whose success a cell's job needs: those it copies units from (``depends_on``) and, for a
    transfer cell, its reference base (without it the cell's relative top-1 has no 1.0)."""
    deps = list(cell.depends_on)
    if cell.stage == "transfer" and cell.reference and cell.reference not in deps:
        deps.append(cell.reference)
    return deps


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
        check_stage_worlds(self.profiles, self.sweep_slurm, profile)
        self.console = console or Console()
        self.sbatch_calls = 0
        self.hold = hold  # submit held (`--hold`): Slurm accepts and queues the arrays, runs nothing
        self.limits: ClusterLimits | None = limits  # None: read from the cluster when submitting
        self.prepare = list(prepare or [])  # the sweep's writes (launch.planning.prepare.prepare_jobs), checked already
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
        from launch.store.claims import claim_holder

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
                    tag = f"{stage}-{comment_safe(name)}-{stamp}-{len(subs)}"
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
        if not self.dry_run:  # never the config of a cell a live task may be reading (those are `active`)
            materialize_configs(plan, todo)
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
        from launch.planning.prepare import pending

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
        body = ScriptTemplate(read_template(template)).substitute(
            sweep=comment_safe(plan.name), profile=comment_safe(name), setup="\n".join(profile.setup),
            env=env_lines(profile), python=shlex.quote(profile.python or sys.executable), **values)
        # no --signal: these jobs have no handler for USR1 (its default action kills them); --requeue stays
        # (a preempted write resumes where it stopped, a report is simply redone)
        opts = [o for o in profile.sbatch_options() if not o.startswith("--signal")]
        cmd = ["sbatch", "--parsable", f"--job-name=mkf-{comment_safe(plan.name)}-{stage}",
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
                               roles=comment_safe(",".join(job.roles)),
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
                                   scope=comment_safe(what).replace("_", " "),
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
        try:
            sub.job_id = run_slurm(cmd).stdout.strip().split(";")[0]
        except SlurmTimeout:  # accepted or not? Slurm's queue says (by the submission's unique comment)
            found = find_by_comment(sub.tag)
            if found is None:
                raise UserError(f"sbatch of the {sub.stage} array ({len(sub.cells)} cells) timed out and Slurm shows no "
                                "such job: nothing was submitted for it; rerun `mkf sweep run` (what was submitted "
                                "before it is recorded)") from None
            sub.job_id = found
            self.console.print(f"sbatch timed out, but Slurm queued it as {found}: recorded", markup=False)
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
