"""The faults a scenario injects into the processes it starts, and the ledger they keep (black-box: no import of
``launch``; the modules patched are Lightning's Trainer and the training code's stable entry points, patched when
the process itself imports them).

Environment (all optional except MKF_FAULT_DIR):

MKF_FAULT_DIR            the scenario's fault folder: markers ("this fault fired") and ``ledger.jsonl``
MKF_FAULT_STEP_SLEEP     seconds each training step sleeps, in the first process that trains a run dir only (a
                         long cell, so a signal or a kill lands mid-training; the resumed attempt runs at speed)
MKF_FAULT_VAL_SLEEP      seconds each validation step sleeps during the first in-fit validation pass of the first
                         process that validates a run dir; marker ``validating-<key>`` (a long validation pass)
MKF_FAULT_FSYNC_SLEEP    seconds ``os.fsync`` sleeps on the MKF_FAULT_FSYNC_NTH-th (default 1) checkpoint temp
                         file of a process, once per scenario; marker ``once-fsync`` holds the temp file's path (the
                         kill-mid-write window: the temp exists, the rename has not happened)
MKF_FAULT_DEVICE_ERROR_NTH  the n-th ``train_cell`` call of a process raises a CUDA "illegal memory access", once
                         per scenario (marker ``once-device-error``); every later call in that process raises it
                         too (a sticky device error, as CUDA's is)

Ledger events (one JSON line each, appended atomically): ``fit_start`` (run_dir, temps: temporary files found in
the run dir as the fit starts), ``fit_end`` (completed: the fit returned having trained to its last epoch/step;
error), ``validating``, ``fsync_sleep``, ``device_error`` (sticky), ``hook_error``.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

DIR = Path(os.environ.get("MKF_FAULT_DIR", "."))
LEDGER = DIR / "ledger.jsonl"
CUDA_ERROR = "CUDA error: an illegal memory access was encountered"


def _float(name: str) -> float:
    try:
        return float(os.environ.get(name) or 0)
    except ValueError:
        return 0.0


def _rank() -> int | None:
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(var)
        if value is not None and value.isdigit():
            return int(value)
    return None


def record(event: str, **data: Any) -> None:
    entry = {"ev": event, "t": time.time(), "pid": os.getpid(), "host": socket.gethostname(),
             "job": os.environ.get("SLURM_JOB_ID"), "array": os.environ.get("SLURM_ARRAY_JOB_ID"),
             "task": os.environ.get("SLURM_ARRAY_TASK_ID"), "restart": os.environ.get("SLURM_RESTART_COUNT"),
             "rank": _rank(), **data}
    line = (json.dumps(entry, default=str) + "\n").encode()
    try:
        fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError:
        pass


def key(run_dir: Any) -> str:
    return hashlib.sha1(str(Path(str(run_dir)).absolute()).encode()).hexdigest()[:12]


def _create(path: Path, content: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, content.encode())
    finally:
        os.close(fd)
    return True


def once(name: str, content: str = "") -> bool:
    """True the first time any process of the scenario asks (marker ``once-<name>``)."""
    return _create(DIR / f"once-{name}", content)


def owner(kind: str, run_dir: Any) -> bool:
    """Whether this process owns fault ``kind`` of ``run_dir``: the first process to ask does, for good."""
    path = DIR / f"owner-{kind}-{key(run_dir)}"
    mine = f"{socket.gethostname()}:{os.getpid()}"
    if _create(path, mine):
        return True
    try:
        return path.read_text() == mine
    except OSError:
        return False


TEMP_MARKS = (".tmp", "tmp-", "tmp.", ".part", ".partial", "~")


def is_temp(name: str) -> bool:
    low = name.lower()
    return any(m in low for m in TEMP_MARKS) or low.startswith("tmp")


def temps(run_dir: Any) -> list[str]:
    root = Path(str(run_dir))
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and is_temp(p.name))


# ---- os.fsync: a slow checkpoint write --------------------------------------------------------------------
_real_fsync = os.fsync
_ckpt_fsyncs = [0]


def _fd_path(fd: Any) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd if isinstance(fd, int) else fd.fileno()}")
    except (OSError, AttributeError, ValueError):
        return ""


def _slow_fsync(fd: Any) -> None:
    path = _fd_path(fd)
    name = os.path.basename(path)
    if "ckpt" in name and is_temp(name):
        _ckpt_fsyncs[0] += 1
        if _ckpt_fsyncs[0] == int(_float("MKF_FAULT_FSYNC_NTH") or 1) and once("fsync", path):
            record("fsync_sleep", path=path)
            time.sleep(_float("MKF_FAULT_FSYNC_SLEEP"))
    return _real_fsync(fd)


# ---- Lightning's Trainer.fit: the ledger of who trained what ----------------------------------------------
def _patch_trainer(module: Any) -> None:
    trainer_cls = module.Trainer
    fit = trainer_cls.fit

    def traced_fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        run_dir = str(Path(str(self.default_root_dir)).absolute())
        record("fit_start", run_dir=run_dir, temps=temps(run_dir))
        try:
            out = fit(self, *args, **kwargs)
        except BaseException as exc:
            record("fit_end", run_dir=run_dir, completed=False, error=f"{type(exc).__name__}: {exc}"[:300],
                   global_rank=getattr(self, "global_rank", None), step=getattr(self, "global_step", None))
            raise
        steps_done = self.max_steps is not None and self.max_steps > 0 and self.global_step >= self.max_steps
        epochs_done = self.max_epochs is not None and self.max_epochs > 0 and self.current_epoch >= self.max_epochs
        record("fit_end", run_dir=run_dir, completed=bool((steps_done or epochs_done) and not self.interrupted),
               global_rank=self.global_rank, step=self.global_step, epoch=self.current_epoch)
        return out

    trainer_cls.fit = traced_fit


# ---- the classifier: slow training steps, a long validation pass ------------------------------------------
def _patch_classifier(module: Any) -> None:
    cls = module.ImageClassifier
    step_sleep, val_sleep = _float("MKF_FAULT_STEP_SLEEP"), _float("MKF_FAULT_VAL_SLEEP")
    if step_sleep:
        training_step = cls.training_step

        def slow_training_step(self: Any, *args: Any, **kwargs: Any) -> Any:
            trainer = getattr(self, "_trainer", None)
            if trainer is not None and owner("step", trainer.default_root_dir):
                time.sleep(step_sleep)
            return training_step(self, *args, **kwargs)

        cls.training_step = slow_training_step
    if val_sleep:
        validation_step = cls.validation_step
        first_pass: list[int] = []

        def slow_validation_step(self: Any, *args: Any, **kwargs: Any) -> Any:
            trainer = getattr(self, "_trainer", None)
            if (trainer is not None and not trainer.sanity_checking and trainer.global_step > 0
                    and str(getattr(trainer.state.fn, "value", trainer.state.fn)) == "fit"
                    and (not first_pass or first_pass[0] == trainer.current_epoch)
                    and owner("val", trainer.default_root_dir)):
                if not first_pass:
                    first_pass.append(trainer.current_epoch)
                    run_dir = str(Path(str(trainer.default_root_dir)).absolute())
                    _create(DIR / f"validating-{key(run_dir)}", json.dumps({"pid": os.getpid(), "t": time.time(),
                                                                            "run_dir": run_dir}))
                    record("validating", run_dir=run_dir, epoch=trainer.current_epoch)
                time.sleep(val_sleep)
            return validation_step(self, *args, **kwargs)

        cls.validation_step = slow_validation_step


# ---- train_cell: a sticky device error --------------------------------------------------------------------
def _patch_train(module: Any) -> None:
    nth = int(_float("MKF_FAULT_DEVICE_ERROR_NTH"))
    if not nth:
        return
    train_cell = module.train_cell
    calls = [0]
    sticky: list[bool] = []

    def faulty_train_cell(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        run_dir = str(Path(str(getattr(cfg, "run_dir", ""))).absolute())
        if sticky:
            record("device_error", run_dir=run_dir, sticky=True, call=calls[0])
            raise RuntimeError(CUDA_ERROR)
        if calls[0] == nth and once("device-error", run_dir):
            sticky.append(True)
            record("device_error", run_dir=run_dir, sticky=False, call=calls[0])
            raise RuntimeError(CUDA_ERROR)
        return train_cell(cfg, *args, **kwargs)

    module.train_cell = faulty_train_cell


PATCHES = {
    "lightning.pytorch.trainer.trainer": _patch_trainer,
    "pipeline.training.classifier": _patch_classifier,
    "pipeline.training.train": _patch_train,
}


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, inner: Any, patch: Any) -> None:
        self.inner, self.patch = inner, patch

    def create_module(self, spec: Any) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.inner.exec_module(module)
        try:
            self.patch(module)
        except Exception as exc:
            record("hook_error", module=module.__name__, error=f"{type(exc).__name__}: {exc}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        patch = PATCHES.get(name)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PatchingLoader(spec.loader, patch)
        return spec


def install() -> None:
    DIR.mkdir(parents=True, exist_ok=True)
    if _float("MKF_FAULT_FSYNC_SLEEP"):
        os.fsync = _slow_fsync
    sys.meta_path.insert(0, _Finder())
