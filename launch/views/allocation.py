"""What Slurm says a sweep's allocations cost: elapsed time x GPUs (or CPUs) of every job its cells ran in, from sacct.

A cell's own ``result.json`` ``cost`` counts what its process measured (training and validation time, GPU-hours
of its devices). The allocation costs more: start-up, data set-up, a checkpoint written before a preemption, a
requeue's restart, an idle GPU of a bundle task between cells. ``sacct`` knows it: ``ElapsedRaw`` seconds of each
job allocation times its ``AllocTRES`` GPUs (``gres/gpu=N``; CPUs when it holds none). The job ids are those the
cells recorded (``cost.slurm_job_ids``, one per attempt), so a requeued job counts each run once.

sacct needs Slurm's accounting storage (slurmdbd). Without it (``AccountingStorageType=accounting_storage/none``,
as the test cluster of this repository) the line says so instead of guessing.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SACCT_FIELDS = "JobID,ElapsedRaw,AllocTRES,State"


@dataclass
class Allocation:
    jobs: int = 0  # job allocations sacct reported
    gpu_hours: float = 0.0  # elapsed x GPUs
    cpu_hours: float = 0.0  # elapsed x CPUs of allocations that hold no GPU
    missing: list[str] = field(default_factory=list)  # job ids sacct did not know
    error: str | None = None  # why sacct could not be asked

    def line(self) -> str:
        if self.error:
            return f"allocations (sacct): not available: {self.error}"
        parts = []
        if self.gpu_hours:
            parts.append(f"{self.gpu_hours:,.2f} GPU-hours")
        if self.cpu_hours:
            parts.append(f"{self.cpu_hours:,.4f} CPU core-hours")
        text = " + ".join(parts) or "0 hours"
        missing = f"; {len(self.missing)} job ids unknown to sacct" if self.missing else ""
        return f"allocations (sacct, elapsed x GPUs): {text} over {self.jobs} jobs{missing}"


def _tres(text: str) -> dict[str, float]:
    """``billing=4,cpu=4,gres/gpu=2,mem=16G,node=1`` -> {"cpu": 4, "gres/gpu": 2, ...} (numbers only)."""
    out = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            continue
    return out


def parse_sacct(text: str, asked: Iterable[str]) -> Allocation:
    """sacct ``-n -P -X -o JobID,ElapsedRaw,AllocTRES,State`` output -> the sums (one line per allocation)."""
    out = Allocation()
    seen = set()
    for line in text.splitlines():
        cols = line.split("|")
        if len(cols) < 3 or not cols[0]:
            continue
        job, elapsed, tres = cols[0], cols[1], cols[2]
        try:
            seconds = float(elapsed)
        except ValueError:
            continue
        seen.add(job)
        out.jobs += 1
        alloc = _tres(tres)
        gpus = alloc.get("gres/gpu", 0.0)
        if gpus:
            out.gpu_hours += seconds / 3600 * gpus
        else:
            out.cpu_hours += seconds / 3600 * alloc.get("cpu", 1.0)
    out.missing = sorted(j for j in set(asked) if j not in seen and j.split("_")[0] not in seen)
    return out


def allocation(job_ids: Iterable[str], timeout_s: float = 30.0) -> Allocation:
    """Ask sacct about ``job_ids`` (array tasks as ``123_4``) in one call."""
    ids = sorted({str(j) for j in job_ids if j})
    if not ids:
        return Allocation(error="no cell recorded a Slurm job")
    if shutil.which("sacct") is None:
        return Allocation(error="sacct is not installed here (run status on the cluster's login node)")
    try:
        done = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o", SACCT_FIELDS],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Allocation(error=f"sacct did not answer ({exc})")
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()
        return Allocation(error=(reason[-1] if reason else f"sacct exited {done.returncode}")
                          + " (accounting storage is needed: ask your admins about slurmdbd)")
    return parse_sacct(done.stdout, ids)


def cost_lines(plan: Any, sacct: bool = True) -> list[str]:
    """What `mkf sweep status` prints under its counts: the finished cells' recorded cost per stage and per sweep
    (:mod:`pipeline.results.spent`), then, when any cell ran under Slurm, what sacct says its jobs took."""
    from pipeline.results.run_folder import read_result
    from pipeline.results.spent import spent_lines, sum_costs

    entries = []
    for cell in plan.cells:
        result = read_result(cell.run_dir)
        if result is not None:
            entries.append((cell.stage, list(getattr(cell, "sweeps", None) or []), result.get("cost")))
    sums = sum_costs(entries)
    lines = spent_lines(sums)
    jobs = sums["total"]["total"].slurm_job_ids
    if sacct and jobs:
        lines.append(allocation(jobs).line())
    return lines
