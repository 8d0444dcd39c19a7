"""A cell's loggers: the CSV log of every attempt, and its W&B run (offline unless told otherwise), kept as ONE
run across restarts and robust to W&B's service dying under a preemption.

Kept apart from :mod:`pipeline.training.train` so the fit reads top to bottom; ``mkf sweep sync`` and the report
use :func:`wandb_mode` from here too.
"""

from __future__ import annotations

import csv
import os
import zlib
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger

from pipeline.config import CellConfig, WandbConfig, to_dict


def wandb_mode(cfg: WandbConfig) -> str:
    """Offline unless the user set a mode or has credentials: a compute node must never hang on the network."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if cfg.mode:
        return cfg.mode
    netrc = Path.home() / ".netrc"
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (netrc.is_file() and "api.wandb.ai" in netrc.read_text())
    return "online" if has_key else "offline"


def wandb_run_id(run_dir: Path, labels: dict[str, Any]) -> str:
    """Stable per cell (the sweep's cell id when there is one), so a restarted cell continues the same W&B run."""
    return str(labels.get("cell_id") or f"{zlib.crc32(str(run_dir.resolve()).encode()):08x}")


def make_loggers(cfg: CellConfig, run_dir: Path) -> list[Logger]:
    earlier_attempts = sorted(run_dir.glob("logs/version_*/metrics.csv"))
    # one CSV version per attempt (Lightning's CSV logger would truncate a reused file); merged at the end
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="logs")]
    if cfg.wandb.enabled:
        from lightning.pytorch.loggers import WandbLogger

        # a cell is its own W&B process: never attach to a service inherited from whoever started it (a sweep,
        # sbatch's exported environment, a notebook), where this cell's run id may still be "in use" by an
        # earlier attempt and whose host may not even be this node
        os.environ.pop("WANDB_SERVICE", None)
        w = cfg.wandb
        run_id = wandb_run_id(run_dir, cfg.labels)
        mode = wandb_mode(w)
        previous = sorted(run_dir.glob(f"wandb/offline-run-*-{run_id}")) if mode == "offline" else []
        logger = _surviving(WandbLogger)(
            project=w.project, entity=w.entity, group=w.group, job_type=w.job_type,
            name=w.name or run_dir.name, tags=list(w.tags), save_dir=str(run_dir),
            id=run_id, resume="allow", mode=mode, config=to_dict(cfg),
        )
        if previous and process_rank() == 0:  # only rank 0 owns the run dir (other ranks' experiment is a dummy)
            _continue_offline_run(logger, previous, earlier_attempts)
        loggers.append(logger)
    return loggers


def _surviving(wandb_logger: type[Logger]) -> type[Logger]:
    """``WandbLogger`` whose calls never end the training when W&B's service process is gone.

    Slurm signals every process of the step on a preemption, W&B's service included, and it dies at once; the
    next ``log`` (a validation's metrics, say) raised ``ConnectionResetError`` before the training process reached
    its preemption checkpoint, so the preemption was recorded as a failure. The metrics are in the CSV log too
    (and re-logged into the cell's W&B run by the next attempt), so W&B is dropped for the rest of the attempt.
    """
    from lightning.pytorch.utilities import rank_zero_only

    class SurvivingWandbLogger(wandb_logger):  # type: ignore[misc, valid-type]
        _gone = False

        def _drop(self, exc: BaseException) -> None:
            self._gone = True
            print(f"mkf: W&B logging stopped for this attempt ({type(exc).__name__}: {exc}); the CSV log goes on",
                  flush=True)

        @rank_zero_only
        def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
            if not self._gone:
                try:
                    super().log_metrics(metrics, step)
                except _service_errors() as exc:
                    self._drop(exc)

        @rank_zero_only
        def log_hyperparams(self, params: Any) -> None:
            if not self._gone:
                try:
                    super().log_hyperparams(params)
                except _service_errors() as exc:
                    self._drop(exc)

    return SurvivingWandbLogger


def _service_errors() -> tuple[type[BaseException], ...]:
    """What a W&B call raises when its service process died (a lost socket, wandb's own errors)."""
    import wandb

    return (OSError, wandb.Error)


def _continue_offline_run(logger: Logger, previous: list[Path], attempts: list[Path]) -> None:
    """Keep ONE offline W&B run directory per cell across restarts.

    wandb starts a new offline directory per process even when the run id is the same; online, ``resume``
    stitches attempts together, offline it cannot. So a restarted cell re-logs the earlier attempts' metrics
    (kept in their CSV logs) into the new directory and removes the old one(s): `wandb sync` then uploads one
    complete run per cell.
    """
    import shutil

    if not getattr(logger.experiment, "id", None):  # ranks other than 0 hold a dummy experiment
        return
    for attempt in attempts:
        with attempt.open(newline="") as f:
            for row in csv.DictReader(f):
                step = int(float(row.pop("step", 0) or 0))
                metrics = {k: float(v) for k, v in row.items() if v not in ("", None)}
                if metrics:
                    logger.log_metrics(metrics, step=step)
    for old in previous:
        shutil.rmtree(old, ignore_errors=True)


def process_rank() -> int:
    """This process's global rank before the Trainer exists (Lightning's own environment lookup)."""
    from lightning.fabric.utilities.rank_zero import _get_rank

    return _get_rank() or 0


def merge_metrics(run_dir: Path) -> None:
    """Concatenate every attempt's logs/version_*/metrics.csv into run_dir/metrics.csv (resumes included)."""
    parts = sorted((run_dir / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    rows: list[dict[str, str]] = []
    fields: dict[str, None] = {}
    for part in parts:
        with part.open(newline="") as f:
            reader = csv.DictReader(f)
            fields.update(dict.fromkeys(reader.fieldnames or []))
            rows.extend(reader)
    rows, columns = compact_rows(rows, list(fields))
    with (run_dir / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def compact_rows(rows: list[dict[str, str]], fields: list[str]) -> tuple[list[dict[str, str]], list[str]]:
    """One row per (epoch, step), the values Lightning logged at different moments of that step merged into it,
    and no column that is empty in every row: Lightning's CSV log writes each logging call as its own row, so a
    cell's metrics.csv was mostly empty cells (a validation row, an epoch-time row, a train row per step)."""
    merged: dict[tuple[str, str], dict[str, str]] = {}
    for row in rows:
        key = (row.get("epoch", ""), row.get("step", ""))
        into = merged.setdefault(key, {})
        for name, value in row.items():
            if value not in (None, ""):
                into[name] = value
    columns = [f for f in fields if any(r.get(f) not in (None, "") for r in merged.values())]
    return [{c: r.get(c, "") for c in columns} for r in merged.values()], columns
