"""The local executor: runs cells on this machine, ``slots`` at a time, in dependency order.

Short cells (estimated below ``bundle_below_min`` minutes by the cost table) go to ``slots`` long-lived bundle
workers (``launch.worker.bundle --serve``: torch imported once, the data read once per worker), longer ones (and
every cell with ``--no-bundle``) each to its own ``mkf train`` process. The Slurm executor is
:class:`launch.execution.slurm.executor.SlurmExecutor`; both implement :class:`launch.execution.base.Executor`.
"""

from __future__ import annotations

import json
import os
import select
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

from launch.core.exits import EXIT_PREEMPTED
from launch.core.plan import materialize_configs
from launch.execution.base import Executor, ExecutorView, SweepOutcome, finished_line, unfinished_lines
from launch.store.state import _alive, cell_state, log_path
from pipeline.results import run_folder

if TYPE_CHECKING:
    from launch.core.plan import Cell, SweepPlan

def threads_per_cell(slots: int, cpus: int | None = None) -> int:
    """Split the machine's cores evenly between concurrent cells so they never oversubscribe it."""
    cpus = cpus or len(os.sched_getaffinity(0))
    return max(1, cpus // max(1, slots))


BUNDLE_BELOW_MIN = 30.0  # cells estimated shorter than this (cost table minutes) share a bundle worker


def bundled(plan: SweepPlan, cells: Sequence[Cell], below_min: float) -> set[str]:
    """Ids of the cells short enough to share a worker: a known cost below ``below_min`` minutes, one device.

    A cell whose cost the table does not know, or that spans devices (DDP spawns its own processes), runs alone.
    """
    from launch.planning.cost import cell_gpu_hours, load_costs

    table = load_costs()
    gpu = table.get("gpu", "a100")
    out = set()
    for cell in cells:
        config = plan.configs[cell.id]
        trainer = config.get("trainer", {})
        devices = trainer.get("devices")
        if (isinstance(devices, int) and devices > 1) or trainer.get("num_nodes", 1) > 1:
            continue
        hours, missing = cell_gpu_hours(config, table, gpu)
        if missing is None and hours is not None and hours * 60 < below_min:
            out.add(cell.id)
    return out


class _Worker:
    """One long-lived ``launch.worker.bundle --serve`` process and the cell it trains now (None: idle)."""

    def __init__(self, plan: SweepPlan, index: int, env: dict[str, str]) -> None:
        log = plan.output_dir / "logs" / f"bundle-worker-{index}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "launch.worker.bundle", "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=err, env=env,
            )
        self.cell: Cell | None = None
        self.buffer = b""
        self.stdout_fd = self.proc.stdout.fileno()  # type: ignore[union-attr]

    def send(self, plan: SweepPlan, cell: Cell) -> None:
        self.cell = cell
        request = {"config": cell.config_path, "log": str(log_path(plan, cell))}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def replies(self) -> list[dict[str, Any]]:
        """Whole reply lines available now (never blocks)."""
        out = []
        while select.select([self.stdout_fd], [], [], 0)[0]:
            chunk = os.read(self.stdout_fd, 65536)
            if not chunk:
                break
            self.buffer += chunk
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.strip():
                out.append(json.loads(line))
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # type: ignore[union-attr]  # EOF: the worker ends after its cell
            except OSError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class LocalExecutor(Executor):
    """Run cells here, ``slots`` at a time, each limited to its share of the CPU threads; short cells in
    long-lived bundle workers (see the module doc), the rest as their own processes."""

    name = "local"

    def __init__(self, slots: int = 1, console: Console | None = None, progress: bool = True,
                 bundle: bool = True, bundle_below_min: float = BUNDLE_BELOW_MIN) -> None:
        self.slots = max(1, slots)
        self.console = console or Console(stderr=True)
        self.show_progress = progress
        self.bundle = bundle
        self.bundle_below_min = bundle_below_min

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> LocalExecutor:
        # `mkf sweep run --no-bundle / --bundle-below MIN` (through run_sweep's bundle / bundle_below_min)
        below = options.get("bundle_below_min")
        return cls(slots=int(options.get("slots") or 1), progress=bool(options.get("progress", True)),
                   bundle=options.get("bundle", True) is not False,
                   bundle_below_min=BUNDLE_BELOW_MIN if below is None else float(below))
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

    def _prepare(self, plan: SweepPlan, cell: Cell) -> None:
        log_path(plan, cell).parent.mkdir(parents=True, exist_ok=True)
        log_path(plan, cell, ".exit").unlink(missing_ok=True)

    def _start(self, plan: SweepPlan, cell: Cell) -> subprocess.Popen[bytes]:
        self._prepare(plan, cell)
        with log_path(plan, cell).open("ab") as out:
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
        materialize_configs(plan, cells)  # atomically, untouched where unchanged
        outcome = SweepOutcome()
        todo = list(cells)
        by_id = plan.by_id()
        short = bundled(plan, todo, self.bundle_below_min) if self.bundle else set()
        running: dict[str, tuple[Cell, subprocess.Popen[bytes]]] = {}  # cells in their own process
        workers: list[_Worker] = []
        spawned = 0
        stopping = False  # a worker was preempted (e.g. `mkf sweep cancel`): start nothing new

        def done(cell: Cell, code: int, progress_advance: Any) -> None:
            state = self._finish(plan, cell, code)
            outcome.states[cell.id] = "finished" if state == "finished" else state if code == 0 else "failed"
            progress_advance()
            if outcome.states[cell.id] == "failed":
                self.console.print(f"[red]failed[/red] {cell.label} ({cell.id}): see {log_path(plan, cell)}", soft_wrap=True,
                                   highlight=False)
            elif outcome.states[cell.id] == "finished":
                self.console.print(finished_line(plan, cell), markup=False, highlight=False, soft_wrap=True)

        with Progress(
            TextColumn("[bold]cells"), BarColumn(), MofNCompleteColumn(), TextColumn("elapsed"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.description}"),
            console=self.console, disable=not self.show_progress, transient=False,
        ) as progress:
            task = progress.add_task("", total=len(todo))
            advance = lambda: progress.advance(task)  # noqa: E731
            try:
                while todo or running or any(w.cell for w in workers):
                    busy = len(running) + sum(w.cell is not None for w in workers)
                    for cell in list(todo):
                        if stopping or busy >= self.slots:
                            break
                        deps = [outcome.states.get(d) or cell_state(plan, by_id[d]) for d in cell.depends_on]
                        if any(s in ("failed", "blocked") for s in deps):
                            todo.remove(cell)
                            outcome.states[cell.id] = "blocked"
                            advance()
                        elif all(s == "finished" for s in deps):
                            if cell.id in short:
                                worker = next((w for w in workers if w.cell is None), None)
                                if worker is None and len(workers) + len(running) < self.slots:
                                    spawned += 1
                                    worker = _Worker(plan, spawned, self._env())
                                    workers.append(worker)
                                if worker is None:
                                    continue  # every slot is held by a cell of its own: wait for one
                                todo.remove(cell)
                                self._prepare(plan, cell)
                                worker.send(plan, cell)
                                log_path(plan, cell, ".pid").write_text(str(worker.proc.pid))
                            else:
                                idle = [w for w in workers if w.cell is None]
                                if len(workers) + len(running) >= self.slots and idle:
                                    idle[0].close()  # its slot goes to a cell that runs alone
                                    workers.remove(idle[0])
                                todo.remove(cell)
                                running[cell.id] = (cell, self._start(plan, cell))
                            busy += 1
                    if not running and not any(w.cell for w in workers) and todo:
                        for cell in todo:  # nothing runs and nothing can start: dependencies outside this run
                            outcome.states[cell.id] = "pending" if stopping else "blocked"
                            advance()  # each is named, with what it waits for, after the run (unfinished_lines)
                        todo.clear()
                    for cid, (cell, proc) in list(running.items()):
                        code = proc.poll()
                        if code is not None:
                            del running[cid]
                            done(cell, code, advance)
                    for worker in list(workers):
                        ended = worker.proc.poll() is not None  # preempted, or crashed inside a cell
                        for reply in worker.replies():  # read after the poll: an ended worker's last word
                            if worker.cell is not None and reply.get("config") == worker.cell.config_path:
                                cell, worker.cell = worker.cell, None
                                done(cell, int(reply["code"]), advance)
                                stopping |= bool(reply.get("preempted"))
                        if ended:
                            if worker.cell is not None:
                                done(worker.cell, worker.proc.returncode or 1, advance)
                                worker.cell = None
                            stopping |= worker.proc.returncode == EXIT_PREEMPTED
                            workers.remove(worker)
                    progress.update(task, description=", ".join(
                        [c.label for c, _ in running.values()] + [w.cell.label for w in workers if w.cell]))
                    if running or any(w.cell for w in workers):
                        time.sleep(0.1)
            except KeyboardInterrupt:
                for worker in workers:
                    worker.proc.terminate()  # the current cell checkpoints at its next step (preempt.ckpt)
                for cell, proc in running.values():
                    proc.terminate()
                    proc.wait()
                    self._finish(plan, cell, -15)
                for worker in workers:
                    worker.proc.wait()
                    if worker.cell is not None:
                        self._finish(plan, worker.cell, 0 if run_folder.has_checkpoint(worker.cell.run_dir) else -15)
                raise
            finally:
                for worker in workers:
                    worker.close()
        if outcome.failed:  # why each cell did not finish: failed (its log), skipped after its base, or waiting
            self.console.print(f"{len(outcome.failed)} of {len(cells)} cells did not finish:", highlight=False)
            for line in unfinished_lines(plan, outcome):
                self.console.print("  " + line, markup=False, highlight=False, soft_wrap=True)
        return outcome
