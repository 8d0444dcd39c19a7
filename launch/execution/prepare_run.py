"""Running a sweep's data writes (:mod:`launch.planning.prepare` decides which): here, first, before a local run,
or as a Slurm prepare job (`mkf data prepare JOB.json`). The writer imports PIL only when a write actually runs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from launch.planning.prepare import (
    INDEX,
    MARKER,
    PrepareJob,
    check_source,
    fingerprint,
    jsonable,
    prepare_jobs,
    source_summary,
)


def run_job(job: PrepareJob, progress: bool = True, workers: int | None = None, log: Callable[..., Any] = print
            ) -> dict[str, Any]:
    """Write (or finish writing) one job's shards, then its marker; returns the writer's index."""
    from datamodules.shards.writer import WriteOptions, write_dataset

    spec = job.spec
    opts = WriteOptions(format=spec.format, shard_size=spec.shard_size, max_resolution=spec.max_resolution,
                        jpeg_quality=spec.jpeg_quality, compress_probability=spec.compress_probability,
                        seed=spec.seed, max_per_class=spec.max_per_class)
    workers = spec.workers or workers or _default_workers()
    if job.complete():
        log(f"{job.out}: prepared already (roles {', '.join(job.roles)}); skipped")
        return json.loads((job.out / INDEX).read_text())
    job.marker.unlink(missing_ok=True)  # a stale marker of other arguments must not survive a rewrite
    start = time.time()
    index = write_dataset(spec.source, job.out, opts, split=spec.split_text(), workers=workers,
                          val_labels=spec.val_labels, progress=progress, log=log)
    marker = {"fingerprint": job.fingerprint, "args": jsonable(spec.args()), "roles": job.roles,
              "samples": index.get("total_samples"), "written_s": round(time.time() - start, 3),
              "time": time.time(), "job": os.environ.get("SLURM_JOB_ID")}
    tmp = job.out / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=1) + "\n")
    os.replace(tmp, job.marker)
    return index


def _default_workers() -> int:
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    return int(cpus) if cpus and cpus.isdigit() else min(8, os.cpu_count() or 1)


def run_prepare_local(source: Any, progress: bool = True, log: Callable[..., Any] = print) -> list[PrepareJob]:
    """Run every pending write of a sweep here, first, with its progress bar; returns the jobs that ran.

    ``source``: the list :func:`prepare_jobs` returned, or anything it accepts.
    """
    jobs = source if isinstance(source, list) else prepare_jobs(source)
    ran = []
    for job in jobs:
        if job.complete():
            log(f"data for {', '.join(job.roles)}: {job.out} prepared already; skipped")
            continue
        log(f"data for {', '.join(job.roles)}: writing {job.spec.source} -> {job.out} ({job.spec.format})")
        run_job(job, progress=progress, log=log)
        ran.append(job)
    return ran


def run_job_file(path: str | Path, progress: bool = False, log: Callable[..., Any] = print) -> int:
    """``mkf data prepare JOB.json`` (a Slurm prepare job): re-check, write, mark complete."""
    job = PrepareJob.from_json(json.loads(Path(path).read_text()))
    summary = source_summary(job.spec)
    job.source_present = summary is not None
    job.fingerprint = fingerprint(job.out, job.spec, summary)  # the source as the job sees it now
    if not job.complete():
        check_source(job)
    run_job(job, progress=progress, log=log)
    log(f"prepared {job.out} for {', '.join(job.roles)}")
    return 0
