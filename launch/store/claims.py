"""The shared cell store: atomic claims, so two sweeps (or two users) on one filesystem never train a cell twice.

Cells live by content id in a store folder (``<store>/<id>``, see :mod:`launch.core.plan`). Before a process trains a
cell it **claims** it: ``<run_dir>.claim`` is created with ``os.open(O_CREAT | O_EXCL)`` (atomic on local disks
and on NFSv3+/Lustre/GPFS), holding who trains it: host, pid, the Slurm job (and array task) and the time. Torch-free
(login nodes call :func:`claim_holder` for `mkf sweep status` and the Slurm executor).

API
---
``claim(run_dir) -> Claim | None``
    Take the cell, or ``None`` when someone else holds a live claim. A claim of the *same* Slurm job and array task
    (a requeued job, or another rank of the job) or of this very process counts as ours. A **stale** claim is taken
    over: its Slurm job no longer in ``squeue`` (one ``squeue`` call; no ``squeue`` on this machine, or one that
    fails, means "cannot tell", so the claim is kept), or, on the same host, its process gone. The takeover is
    guarded by a marker ``<run_dir>.claim.takeover-<token of the stale claim>`` created with O_EXCL, and the claim
    is re-read under it, so of two processes taking over one stale claim exactly one wins.
``release(claim)``
    Remove the claim if it is still ours (a claim taken over from us is left to its new holder).
``claim_holder(run_dir) -> dict | None``
    The holder's record (host, pid, job, task, time, token), or ``None``: for status, and for the Slurm executor to
    make a job depend on the holder's job instead of submitting the cell again.
``holder_alive(holder) -> bool | None``
    True / False when it can tell, None when it cannot (a Slurm job with no ``squeue`` here).
``claimed_by_parent(run_dir) -> bool``
    Whether this process's parent on this host holds the claim (a rank its holder started).

Training a cell under its claim (wait, claim, train, release) is :func:`launch.worker.lifecycle.run_once`.

Known limit: a process that dies inside the takeover window (between creating the marker and replacing the claim,
microseconds) leaves a marker that blocks takeovers of that claim until it is 10 minutes old.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLAIM_SUFFIX = ".claim"
MARKER_STALE_S = 600.0  # a takeover marker older than this was left by a process that died mid-takeover
FRESH_S = 30.0  # an empty claim file younger than this is being written right now (created, not yet filled)


@dataclass
class Claim:
    path: Path
    holder: dict[str, Any]


def claim_path(run_dir: str | Path | Any) -> Path:
    """``<run_dir>.claim`` for a run dir or a :class:`launch.core.plan.Cell` (anything with ``run_dir``)."""
    run_dir = getattr(run_dir, "run_dir", run_dir)
    return Path(str(run_dir).rstrip("/") + CLAIM_SUFFIX)


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks (Linux): tells a reused pid from the claimer."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def me() -> dict[str, Any]:
    """Who is claiming: this host and process, and the Slurm job and array task when inside one."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID") if os.environ.get("SLURM_ARRAY_JOB_ID") else None
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _proc_start(os.getpid()), "job": job,
            "task": task, "time": time.time(), "token": uuid.uuid4().hex}


def _same_owner(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.get("job") and a.get("job") == b.get("job") and a.get("task") == b.get("task"):
        return True  # a requeued job, or another rank of the same job
    return a.get("host") == b.get("host") and a.get("pid") == b.get("pid") and a.get("start") == b.get("start")


def _read(path: Path) -> dict[str, Any] | None:
    """The claim's record; {} while it is being written (empty / half-written); None if there is no claim."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def claim_holder(run_dir: str | Path | Any) -> dict[str, Any] | None:
    """The claim's holder (host, pid, start, job, task, time, token), or None when the cell is not claimed."""
    data = _read(claim_path(run_dir))
    return None if data is None else data


def _slurm_job_alive(job: str, task: str | None) -> bool | None:
    """One squeue call: True if the job (array task) is queued or running, False if Slurm no longer knows it,
    None if this cannot be told (no squeue here, or squeue failed for another reason)."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return None
    ident = f"{job}_{task}" if task is not None else job
    try:
        out = subprocess.run([squeue, "-h", "-j", ident, "-o", "%i %T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return False if "invalid job id" in (out.stderr or "").lower() else None
    return bool(out.stdout.strip())


def _pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's live process
    return start is None or _proc_start(pid) in (None, start)


def holder_alive(holder: dict[str, Any]) -> bool | None:
    """Whether the claim's holder can still be training: True, False (stale), None (cannot tell)."""
    if holder.get("job"):
        alive = _slurm_job_alive(str(holder["job"]), holder.get("task"))
        if alive is not None:
            return alive
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        return _pid_alive(holder["pid"], holder.get("start"))
    return None


def _create(path: Path, holder: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(holder) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True


def _replace(path: Path, holder: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.{holder['token']}.tmp")
    tmp.write_text(json.dumps(holder) + "\n")
    os.replace(tmp, path)


def _take_over(path: Path, stale: dict[str, Any], mine: dict[str, Any]) -> bool:
    """Replace the stale claim ``stale`` with ``mine``; of several takers of one stale claim, one wins."""
    marker = path.with_name(f"{path.name}.takeover-{stale.get('token', 'unknown')}")
    if not _create(marker, mine):
        try:
            if time.time() - marker.stat().st_mtime < MARKER_STALE_S:
                return False  # another process is taking it over right now
            marker.unlink()  # left by a taker that died mid-takeover
        except FileNotFoundError:
            pass
        if not _create(marker, mine):
            return False
    try:
        now = _read(path)
        if now is None:  # released meanwhile: an ordinary claim
            return _create(path, mine)
        if now.get("token") != stale.get("token"):
            return False  # someone took it over (or it was re-claimed) after we read it
        _replace(path, mine)
        return True
    finally:
        marker.unlink(missing_ok=True)


def claim(run_dir: str | Path | Any, holder: dict[str, Any] | None = None) -> Claim | None:
    """Claim the cell for this process; None while someone else holds a live claim (see the module docstring)."""
    path = claim_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = holder or me()
    for _ in range(5):  # a few rounds: the claim may be released or replaced while we look at it
        if _create(path, mine):
            return Claim(path, mine)
        other = _read(path)
        if other is None:
            continue  # released between our create and our read
        if not other:  # empty or half-written: being created right now, unless it is old (its writer died)
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue
            if age < FRESH_S:
                return None
            other = {"token": None}
        elif _same_owner(other, mine):
            _replace(path, {**mine, "token": other.get("token") or mine["token"]})
            return Claim(path, {**mine, "token": other.get("token") or mine["token"]})
        elif holder_alive(other) is not False:
            return None
        if _take_over(path, other, mine):
            return Claim(path, mine)
    return None


def release(claim: Claim | None) -> None:
    """Drop the claim if it is still ours (after a takeover it belongs to the new holder)."""
    if claim is None:
        return
    now = _read(claim.path)
    if now is not None and now.get("token") == claim.holder.get("token"):
        claim.path.unlink(missing_ok=True)


def claimed_by_parent(run_dir: str | Path | Any) -> bool:
    """Whether the cell's claim is held by this process's parent on this host: a rank the holder started for the
    cell. Lightning's launcher runs ranks 1.. of a local multi-device cell as child processes of rank 0, each
    the same `mkf train`; they train under rank 0's claim (waiting for it would deadlock the process group).
    Ranks of a Slurm job are the same claimer by job and task instead (:func:`_same_owner`)."""
    holder = claim_holder(run_dir)
    parent = os.getppid()
    return bool(holder) and holder.get("host") == socket.gethostname() and holder.get("pid") == parent \
        and holder.get("start") in (None, _proc_start(parent))


def describe(holder: dict[str, Any]) -> str:
    job = holder.get("job")
    who = f"Slurm job {job}" + (f"_{holder['task']}" if holder.get("task") is not None else "") if job else \
        f"pid {holder.get('pid')}"
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(holder["time"])) if holder.get("time") else "?"
    return f"{who} on {holder.get('host', '?')} (since {since})"
