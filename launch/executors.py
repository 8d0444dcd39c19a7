"""Executors run a sweep's cells. They share one small interface, so the sweep logic never knows which runs it.

``LocalExecutor`` runs each cell as its own ``mkf train`` process on this machine, a few at a time, in
dependency order. A Slurm executor (the cluster issue) implements the same ``run``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from launch.cell_state import cell_state, log_path
from launch.sweep import Cell, SweepPlan


@dataclass
class SweepOutcome:
    """Final state of every cell an executor was asked to run."""

    states: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return [cid for cid, s in self.states.items() if s != "finished"]


class Executor(ABC):
    """Runs cells whose dependencies are finished or among the same call, and reports their outcome."""

    name: str = "base"

    @abstractmethod
    def run(self, plan: SweepPlan, cells: Sequence[Cell]) -> SweepOutcome: ...


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


def _slurm_executor(**kwargs: object) -> Executor:
    from launch.slurm_executor import SlurmExecutor  # imported lazily: local runs need no Slurm code

    return SlurmExecutor(**kwargs)  # type: ignore[arg-type]


EXECUTORS: dict[str, object] = {"local": LocalExecutor, "slurm": _slurm_executor}
