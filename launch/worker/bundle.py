"""A bundle worker: cells one after another in ONE process (`mkf sweep worker CONFIG...` =
``python -m launch.worker.bundle CONFIG...``), so torch, Lightning and timm are imported once and the data is read
once.

Two ways to feed it:

- a list (what a Slurm array task of K cells runs): ``python -m launch.worker.bundle [--log-dir DIR] CONFIG...``
  trains the configs in order and exits 0 if every one finished, 1 if any failed, 3 if it stopped on a preemption;
- ``--serve`` (the local executor's long-lived workers): one JSON request per line on stdin,
  ``{"config": path, "log": path}``, one JSON reply per line on stdout, ``{"config", "code", "preempted"}``;
  EOF on stdin ends the worker.

Per cell: the shared store's claim (:func:`launch.worker.lifecycle.run_once`: a finished cell is skipped, one
trained elsewhere waited for), the cell's own log file (fds 1 and 2), its own ``attempts.json`` entry, isolation of
process-wide state (:mod:`pipeline.training.bundle`), and a failure that stays the cell's. Preemption: SIGTERM
(and USR1 under Slurm) checkpoints the current cell at the next optimizer step into ``preempt.ckpt`` (the
project's PreemptionHandler) and stops the bundle; finished cells stay finished, and the next run resumes the
interrupted one. A signal between two cells stops the bundle before the next one starts.

This module imports torch only inside :func:`main` (via ``pipeline.training.bundle``); the exit statuses the
executors read are in :mod:`launch.core.exits`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from launch.core.exits import EXIT_DEVICE, EXIT_HUNG, EXIT_PREEMPTED, EXIT_REQUEUE_FAILED

_signalled: list[int] = []
_idle: list[bool] = [False]  # a serving worker waiting for its next request: a signal ends it at once


def _record(signum: int, frame: Any) -> None:
    if not _signalled:
        _signalled.append(signum)
    if _idle[0]:
        raise SystemExit(EXIT_PREEMPTED)


def _pending_handler_signal() -> int | None:
    """A signal a cell's PreemptionHandler received after its fit ended (it still owns the handler until the
    bundle puts its own back): the bundle must stop then too."""
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        handler = signal.getsignal(signum)
        owner = getattr(handler, "__self__", None)
        if owner is not None and getattr(owner, "signum", None) is not None:
            return int(owner.signum)
    return None


def _details(index: int) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "bundle_position": index}


class Worker:
    """Trains cells in this process; remembers whether a preemption signal asked it to stop."""

    def __init__(self) -> None:
        from pipeline.training.allocator import tune_malloc

        tune_malloc()  # before torch allocates anything: freed step memory stays in the process
        from launch.worker import slurm_task
        from pipeline.training import bundle
        from pipeline.training import train as _train  # noqa: F401  (torch, Lightning, timm: once, before any cell)

        self.bundle = bundle
        self.slurm = slurm_task.in_slurm_step()
        self.index = 0
        self.stopped_by: int | None = None
        self.requeue_pending = False
        self.exit_code: int | None = None  # the worker must end with this status (requeue refused, device error)
        bundle.share_datasets()
        for signum in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(signum, _record)
        bundle.freeze_imports()

    @property
    def stop(self) -> bool:
        return self.stopped_by is not None or bool(_signalled) or self.exit_code is not None

    def run(self, config: str, log: str | None = None) -> tuple[int, bool]:
        """(exit code, preempted) of one cell."""
        from launch.worker.lifecycle import run_once

        self.index += 1
        preempted: list[bool] = []

        def train() -> int:
            return self._train_slurm(config, preempted) if self.slurm else self._train_local(config, preempted)

        def cell() -> int:
            from datamodules.errors import UserError

            try:
                return run_once(config, train)
            except UserError as exc:  # bad input: one line in the cell's log, as `mkf train` prints it, no traceback
                print(f"mkf: error: {exc}", file=sys.stderr, flush=True)
                return 2

        watchdog = self._watchdog(config)
        try:
            code = self.bundle.run_isolated(cell, log)
        finally:
            if watchdog is not None:
                watchdog.cancel()
        late = _pending_handler_signal()
        if code == EXIT_REQUEUE_FAILED:  # the time-limit warning, and the requeue was refused: fail the task
            self.exit_code = EXIT_REQUEUE_FAILED
        elif code != 0 and _device_error(config):  # CUDA's errors are sticky: every later cell here would fail
            self.exit_code = EXIT_DEVICE
        if preempted:  # the cell's handler checkpointed (and, on USR1 under Slurm, requeued the job)
            self.stopped_by = late or (_signalled[0] if _signalled else signal.SIGTERM)
        elif late is not None or _signalled:  # arrived outside a fit: nobody requeued yet
            self.stopped_by = late or _signalled[0]
            self.requeue_pending = True
        return code, bool(preempted)

    def _watchdog(self, config: str) -> threading.Timer | None:
        """A cell that runs past ``MKF_CELL_TIMEOUT_S`` (the profile's ``cell_timeout``) is hung: charge it a failure
        and end the worker (exit 6) so the batch script requeues the rest of the bundle in a fresh process. A
        thread, so it fires even while the main thread is stuck in C code (a collective that never returns)."""
        limit = float(os.environ.get("MKF_CELL_TIMEOUT_S") or 0)
        if limit <= 0:
            return None

        def hung() -> None:
            from launch.worker import lifecycle
            from pipeline.config import load_yaml

            run_dir = (load_yaml(config) or {}).get("run_dir")
            if run_dir:
                lifecycle.failed(run_dir, f"hung: no result after {limit:.0f} s (cell_timeout)")
            print(f"mkf worker: {config}: no result after {limit:.0f} s; ending the worker so the rest of the "
                  "bundle runs in a fresh process", file=sys.stderr, flush=True)
            os._exit(EXIT_HUNG)

        timer = threading.Timer(limit, hung)
        timer.daemon = True
        timer.start()
        return timer

    def _train_local(self, config: str, preempted: list[bool]) -> int:
        from datamodules.errors import UserError
        from launch.worker import lifecycle
        from pipeline.config import load_cell_config
        from pipeline.results import run_folder
        from pipeline.training.resume import Preempted, PreemptionHandler
        from pipeline.training.train import train_cell

        cfg = load_cell_config(config)
        if isinstance(cfg.trainer.devices, int) and cfg.trainer.devices * cfg.trainer.num_nodes > 1:
            cfg.trainer.strategy = "ddp" if cfg.trainer.strategy == "auto" else cfg.trainer.strategy
        run_dir = Path(cfg.run_dir)
        if run_folder.read_result(run_dir) is not None:
            return 0
        lifecycle.begin_attempt(run_dir, bundle_position=self.index)
        handler = PreemptionHandler(run_dir / run_folder.CHECKPOINT_DIR / run_folder.PREEMPT_CKPT,
                                    signals=(signal.SIGTERM,), requeue_on=(),
                                    on_preempt=lambda signum: lifecycle.preempting(run_dir, "SIGTERM"))
        # owns TERM from now on (a TERM while the data and model are built stops the cell before its first step)
        handler.install(earlier=_signalled[0] if _signalled else None)
        try:
            result = train_cell(cfg, callbacks=[handler])
        except Preempted as exc:
            preempted.append(True)  # recorded as preempted before its checkpoint (on_preempt)
            print(f"mkf: {exc}; the next run resumes this cell", flush=True)
            return 0
        except UserError as exc:
            lifecycle.failed(run_dir, str(exc), bad_input=True, bundle_position=self.index)
            raise
        except BaseException as exc:
            lifecycle.failed(run_dir, f"{type(exc).__name__}: {exc}", bundle_position=self.index)
            raise
        lifecycle.finished(run_dir, bundle_position=self.index)
        if result:
            print(f"{cfg.run_dir}: top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f}, "
                  f"{result['steps']} steps in {result['wall_time_s']:.1f} s", flush=True)
        return 0

    def _train_slurm(self, config: str, preempted: list[bool]) -> int:
        """The Slurm step's own policy per cell (attempts, restart limit, USR1/TERM, requeue)."""
        from launch.worker import slurm_task
        from pipeline.config import load_cell_config
        from pipeline.results import run_folder

        cfg = load_cell_config(config)
        slurm_task._early_signal.clear()
        if _signalled:
            slurm_task._early_signal.append(_signalled[0])
        code = slurm_task.train_in_slurm(cfg, report=lambda msg: print(msg, file=sys.stderr, flush=True))
        history = run_folder.read_attempts(cfg.run_dir)["history"]
        if history and history[-1].get("outcome") == "preempted":
            preempted.append(True)
        return code


DEVICE_ERRORS = ("CUDA error", "CUBLAS_STATUS", "CUDNN_STATUS", "cuDNN error", "device-side assert",
                 "NCCL error", "illegal memory access", "ECC error")


def _device_error(config: str) -> bool:
    """Whether the cell's last attempt failed on a device error (a sticky CUDA context error, not an OOM)."""
    from pipeline.config import load_yaml
    from pipeline.results import run_folder

    run_dir = (load_yaml(config) or {}).get("run_dir") if Path(config).is_file() else None
    if not run_dir:
        return False
    history = run_folder.read_attempts(run_dir)["history"]
    last = history[-1] if history else {}
    return last.get("outcome") == "failed" and any(m in str(last.get("reason", "")) for m in DEVICE_ERRORS)


def _rss_mib() -> float:
    """This process's resident memory now (the bundle's memory check: it must not grow cell after cell)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_list(configs: list[str], log_dir: str | None = None) -> int:
    """Train ``configs`` in order in this process. Exit 0 all finished, 1 some failed, 3 stopped by a preemption
    (requeued), 4 the time-limit requeue was refused, 5 a device error ended it, 6 a cell hung (the watchdog);
    the batch script requeues the task on 5 and 6 and fails it on 4 (launch/core/exits.py)."""
    worker = Worker()
    failed = 0
    for config in configs:
        if worker.stop:
            break
        log = str(Path(log_dir) / f"{Path(config).stem}.log") if log_dir else None
        code, preempted = worker.run(config, log)
        failed += code != 0
        print(f"mkf worker: {config}: " + ("preempted" if preempted else f"exit {code}")
              + f" (open fds {worker.bundle.open_fds()}, rss {_rss_mib():.1f} MiB)", file=sys.stderr, flush=True)
    if worker.exit_code is not None:
        return worker.exit_code
    if worker.stop:
        if worker.slurm and worker.stopped_by == signal.SIGUSR1 and worker.requeue_pending:
            from launch.worker.lifecycle import requeue_self

            if not requeue_self():  # a time-limit warning between cells, and the requeue was refused
                return EXIT_REQUEUE_FAILED
        return EXIT_PREEMPTED
    return 1 if failed else 0


def serve() -> int:
    """Answer cell requests on stdin until EOF or a preemption signal (the local executor's long-lived worker)."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray output between cells goes to the worker's log, never into the reply channel
    worker = Worker()
    reply.write(json.dumps({"ready": os.getpid()}) + "\n")
    while True:
        _idle[0] = True
        if _signalled:
            return EXIT_PREEMPTED
        line = sys.stdin.readline()
        _idle[0] = False
        if not line:
            return 0
        if not line.strip():
            continue
        request = json.loads(line)
        code, preempted = worker.run(request["config"], request.get("log"))
        reply.write(json.dumps({"config": request["config"], "code": code, "preempted": preempted}) + "\n")
        if worker.exit_code is not None:  # a device error: the executor starts a fresh worker for what is left
            return worker.exit_code
        if worker.stop:
            return EXIT_PREEMPTED


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mkf sweep worker", description=__doc__.split("\n\n")[0])
    p.add_argument("configs", nargs="*", help="cell config YAMLs, trained in this order")
    p.add_argument("--log-dir", help="each cell's output to DIR/<config stem>.log (default: this process's)")
    p.add_argument("--serve", action="store_true", help="read requests on stdin (the local executor's workers)")
    args = p.parse_args(argv)
    if args.serve:
        return serve()
    if not args.configs:
        p.error("give cell config YAMLs (or --serve)")
    return run_list(args.configs, args.log_dir)


if __name__ == "__main__":
    sys.exit(main())
