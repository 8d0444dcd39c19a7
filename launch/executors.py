"""Executors run a sweep's cells. They share one small interface (``launch.executor_base``), so the sweep logic
never knows which runs it: :func:`executor_class` looks one up by name, importing it only then.

``LocalExecutor`` runs each cell as its own ``mkf train`` process on this machine, a few at a time, in
dependency order. ``launch.slurm_executor.SlurmExecutor`` submits job arrays.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from datamodules.errors import UserError
from launch.cell_state import _alive, cell_state, log_path
from launch.executor_base import Executor, ExecutorView, SweepOutcome

if TYPE_CHECKING:
    from launch.sweep import Cell, SweepPlan

# name -> "module:class"; imported on first use, so a local run never loads Slurm code and vice versa
EXECUTORS: dict[str, str] = {"local": "launch.executors:LocalExecutor", "slurm": "launch.slurm_executor:SlurmExecutor"}


def executor_class(name: str) -> type[Executor]:
    if name not in EXECUTORS:
        raise UserError(f"unknown executor {name!r}; available: {', '.join(EXECUTORS)}")
    module, cls = EXECUTORS[name].split(":")
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def executors_used(plan: SweepPlan) -> list[Executor]:
    """Every executor that ran cells of this sweep (a sweep may have been run locally and on Slurm)."""
    used = []
    for name in EXECUTORS:
        cls = executor_class(name)
        if cls.used_by(plan):
            used.append(cls.from_options({}))
    return used


def threads_per_cell(slots: int, cpus: int | None = None) -> int:
    """Split the machine's cores evenly between concurrent cells so they never oversubscribe it."""
    cpus = cpus or len(os.sched_getaffinity(0))
    return max(1, cpus // max(1, slots))


class LocalExecutor(Executor):
    """Run cells as subprocesses, ``slots`` at a time, each limited to its share of the CPU threads."""

    name = "local"

    def __init__(self, slots: int = 1, console: Console | None = None, progress: bool = True) -> None:
        self.slots = max(1, slots)
        self.console = console or Console(stderr=True)
        self.show_progress = progress

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> LocalExecutor:
        return cls(slots=int(options.get("slots") or 1), progress=bool(options.get("progress", True)))

    @classmethod
    def used_by(cls, plan: SweepPlan) -> bool:
        return (plan.output_dir / "logs").is_dir()

    def _running_pids(self, plan: SweepPlan) -> dict[str, int]:
        pids = {}
        for cell in plan.cells:
            try:
                pid = int(log_path(plan, cell, ".pid").read_text().strip())
            except (OSError, ValueError):
                continue
            if _alive(pid):
                pids[cell.id] = pid
        return pids

    def status(self, plan: SweepPlan) -> ExecutorView:
        pids = self._running_pids(plan)
        return ExecutorView(["pid"], {cid: [str(pid)] for cid, pid in pids.items()}, set(pids))

    def cancel(self, plan: SweepPlan) -> list[str]:
        """SIGTERM every cell process this machine runs for the sweep (they checkpoint at the next batch)."""
        pids = self._running_pids(plan)
        for pid in pids.values():
            os.kill(pid, signal.SIGTERM)
        return [str(p) for p in pids.values()]

    def _env(self) -> dict[str, str]:
        threads = str(threads_per_cell(self.slots))
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONUNBUFFERED="1")
        env.setdefault("WANDB_SILENT", "true")
        return env

    def _start(self, plan: SweepPlan, cell: Cell) -> subprocess.Popen[bytes]:
        log = log_path(plan, cell)
        log.parent.mkdir(parents=True, exist_ok=True)
        log_path(plan, cell, ".exit").unlink(missing_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "launch.cli", "train", "--config", cell.config_path],
                stdout=out, stderr=subprocess.STDOUT, env=self._env(),
            )
        log_path(plan, cell, ".pid").write_text(str(proc.pid))
        return proc

    def _finish(self, plan: SweepPlan, cell: Cell, code: int) -> str:
        log_path(plan, cell, ".exit").write_text(str(code))
        log_path(plan, cell, ".pid").unlink(missing_ok=True)
        return cell_state(plan, cell)

    def run(self, plan: SweepPlan, cells: Sequence[Cell]) -> SweepOutcome:
        outcome = SweepOutcome()
        todo = list(cells)
        by_id = plan.by_id()
        running: dict[str, tuple[Cell, subprocess.Popen[bytes]]] = {}
        with Progress(
            TextColumn("[bold]cells"), BarColumn(), MofNCompleteColumn(), TextColumn("elapsed"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.description}"),
            console=self.console, disable=not self.show_progress, transient=False,
        ) as progress:
            task = progress.add_task("", total=len(todo))
            try:
                while todo or running:
                    for cell in list(todo):
                        if len(running) >= self.slots:
                            break
                        deps = [outcome.states.get(d) or cell_state(plan, by_id[d]) for d in cell.depends_on]
                        if any(s in ("failed", "blocked") for s in deps):
                            todo.remove(cell)
                            outcome.states[cell.id] = "blocked"
                            progress.advance(task)
                        elif all(s == "finished" for s in deps):
                            todo.remove(cell)
                            running[cell.id] = (cell, self._start(plan, cell))
                    if not running and todo:  # nothing runs and nothing can start: dependencies outside this run
                        for cell in todo:
                            outcome.states[cell.id] = "blocked"
                            progress.advance(task)
                            self.console.print(f"[yellow]blocked[/yellow] {cell.label}: a dependency is not finished")
                        todo.clear()
                    for cid, (cell, proc) in list(running.items()):
                        code = proc.poll()
                        if code is not None:
                            del running[cid]
                            state = self._finish(plan, cell, code)
                            outcome.states[cid] = "finished" if state == "finished" else "failed"
                            progress.advance(task)
                            if outcome.states[cid] != "finished":
                                self.console.print(f"[red]failed[/red] {cell.label} ({cid}): see {log_path(plan, cell)}")
                    progress.update(task, description=", ".join(c.label for c, _ in running.values()))
                    if running:
                        time.sleep(0.2)
            except KeyboardInterrupt:
                for cell, proc in running.values():
                    proc.terminate()
                    proc.wait()
                    self._finish(plan, cell, -15)
                raise
        return outcome
