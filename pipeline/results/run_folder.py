"""A cell's run directory, read and written without torch: file names, results, configs, attempts, state.

Everything a login-node command needs (``mkf sweep status``, the cell state, report tables, W&B sync) reads a
run directory through this module, so none of them pays for importing torch or Lightning (seconds each call).
Training (``pipeline.training.train``) writes the same files under the same names.

Run directory layout::

    config.yaml          the resolved cell config
    result.json          written last: its presence (with status "finished") means the cell is done
    failed.json          the cell gave up (crash limit reached); removed when a re-run is asked for
    attempts.json        one entry per start of the cell: preemptions and failures counted apart
    checkpoints/         last.ckpt (resume point), preempt.ckpt (written on a preemption signal), best.ckpt
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

RESULT_FILE = "result.json"
CONFIG_FILE = "config.yaml"
FAILED_FILE = "failed.json"
ATTEMPTS_FILE = "attempts.json"
EVIDENCE_FILE = "evidence.json"  # how the cell was trained, for the protocol audit (pipeline.training.evidence)
WEIGHTS_FILE = "weights.safetensors"  # the final weights (pipeline.models.weights writes and reads them)
CHECKPOINT_DIR = "checkpoints"
LAST_CKPT = "last.ckpt"
PREEMPT_CKPT = "preempt.ckpt"  # written at a batch boundary when the scheduler warns of (or starts) preemption

# what a run directory alone says about its cell (the launcher adds "running" from its own bookkeeping)
RUN_STATES = ("finished", "failed", "interrupted", "pending")


def read_result(run_dir: str | Path) -> dict[str, Any] | None:
    """The cell's result if it finished (a valid result.json with status 'finished'), else None."""
    try:  # plain os.path: status reads thousands of run directories, pathlib's overhead would dominate
        with open(os.path.join(run_dir, RESULT_FILE), "rb") as f:
            result = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("status") == "finished" else None


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temp file, fsync, then rename: readers never see half a file, and a node that loses
    power after the rename does not leave a named but empty file (the rename can reach the disk first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def read_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The resolved cell config the cell trained with (a plain dict), or None before it started."""
    try:
        data = yaml.safe_load((Path(run_dir) / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def read_evidence(run_dir: str | Path) -> dict[str, Any] | None:
    """The cell's ``evidence.json`` (pipeline.training.evidence), or None before it started / if unreadable."""
    try:
        data = json.loads((Path(run_dir) / EVIDENCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_failure(run_dir: str | Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(run_dir) / FAILED_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else {"reason": "unreadable failed.json"}


def mark_failed(run_dir: str | Path, reason: str, **extra: Any) -> None:
    """Record why a cell gave up, so status says 'failed' and a re-run resubmits it."""
    write_json_atomic(Path(run_dir) / FAILED_FILE, {"reason": reason, "time": time.time(), **extra})


def clear_failed(run_dir: str | Path) -> None:
    (Path(run_dir) / FAILED_FILE).unlink(missing_ok=True)


def has_checkpoint(run_dir: str | Path) -> bool:
    ckpt = os.path.join(run_dir, CHECKPOINT_DIR)
    return any(os.path.isfile(os.path.join(ckpt, name)) for name in (LAST_CKPT, PREEMPT_CKPT))


def run_state(run_dir: str | Path) -> str:
    """finished | failed | interrupted (a checkpoint to resume from) | pending, from the files alone."""
    if not os.path.isdir(run_dir):  # most cells of a fresh sweep: one stat answers
        return "pending"
    if read_result(run_dir) is not None:
        return "finished"
    if os.path.isfile(os.path.join(run_dir, FAILED_FILE)):
        return "failed"
    return "interrupted" if has_checkpoint(run_dir) else "pending"


# ---- attempts: preemptions and failures counted apart ----------------------------------------------------
def read_attempts(run_dir: str | Path) -> dict[str, Any]:
    """``{"preemptions": n, "failures": n, "history": [...]}``; zeros for a cell that never started."""
    try:
        with open(os.path.join(run_dir, ATTEMPTS_FILE), "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    return {"preemptions": int(data.get("preemptions", 0)), "failures": int(data.get("failures", 0)),
            "history": list(data.get("history", []))}


def record_attempt(run_dir: str | Path, outcome: str, **details: Any) -> dict[str, Any]:
    """Append one attempt's outcome (``started``, ``preempted``, ``failed``, ``finished``) and return the counts.

    Preemptions (the scheduler took the node back) never count against a cell; failures (a crash, a killed
    rank) do, up to ``max_restarts``. Only rank 0 writes, so no two writers race on the file.
    """
    data = read_attempts(run_dir)
    if outcome == "preempted":
        data["preemptions"] += 1
    elif outcome == "failed":
        data["failures"] += 1
    data["history"] = (data["history"] + [{"outcome": outcome, "time": round(time.time(), 3), **details}])[-200:]
    write_json_atomic(Path(run_dir) / ATTEMPTS_FILE, data)
    return data


def reset_failures(run_dir: str | Path, reason: str = "rerun asked for") -> None:
    """Start the failure count afresh (a re-run of the sweep asks for the cell again: a cell that hit its restart
    limit on slow checkpoints or a flaky node must not stay failed for good). The history keeps what happened."""
    data = read_attempts(run_dir)
    if not data["failures"] and not data["history"]:
        return
    data["history"] = (data["history"] + [{"outcome": "reset", "failures_before": data["failures"],
                                           "reason": reason, "time": round(time.time(), 3)}])[-200:]
    data["failures"] = 0
    write_json_atomic(Path(run_dir) / ATTEMPTS_FILE, data)


def last_open_attempt(run_dir: str | Path) -> dict[str, Any] | None:
    """The newest history entry if it is a ``started`` one: that attempt ended without saying how (killed)."""
    history = read_attempts(run_dir)["history"]
    return history[-1] if history and history[-1].get("outcome") == "started" else None


def last_metric(run_dir: str | Path) -> str:
    """The cell's final top-1, else the newest val/top1 or train/loss of its CSV log (a running cell's progress)."""
    result = read_result(run_dir)
    if result and result.get("top1") is not None:
        return f"top1 {result['top1']:.4f}"
    log_dir = Path(run_dir) / "logs"
    if not log_dir.is_dir():
        return ""
    logs = sorted(log_dir.glob("version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return ""
    with logs[-1].open(newline="") as f:
        rows = list(csv.DictReader(f))
    for key in ("val/top1", "train/loss"):
        values = [r[key] for r in rows if r.get(key)]
        if values:
            return f"{key.split('/')[1]} {float(values[-1]):.4f} @{rows[-1].get('step', '?')}"
    return ""


def offline_wandb_runs(run_dir: str | Path) -> list[Path]:
    """The cell's offline W&B run directories (one per cell: restarts continue the same run id)."""
    wandb_dir = Path(run_dir) / "wandb"
    return sorted(p for p in wandb_dir.glob("offline-run-*") if p.is_dir()) if wandb_dir.is_dir() else []
