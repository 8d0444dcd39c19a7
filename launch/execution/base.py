"""The one interface every executor implements, so the CLI never branches on an executor's name.

``run`` starts (or submits) cells, ``status`` adds the executor's own view of each cell to `mkf sweep status`,
``cancel`` stops what it started, and ``from_options`` builds one from the command line's options. Kept apart
from the executors themselves so that no executor module imports another (no import cycle).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from launch.core.plan import Cell, SweepPlan

# what an unfinished cell's state means to the user, where no more specific reason is known
_WAITING = {"pending": "not started (the run stopped first); a rerun trains it",
            "interrupted": "stopped with a checkpoint; a rerun resumes it",
            "running": "still running in another process",
            "submitted": "submitted, queued on the cluster",
            "deferred": "not submitted yet (over the job cap, or its base is not finished)"}


@dataclass
class SweepOutcome:
    """Final state of every cell an executor was asked to run: finished, failed, blocked, submitted (queued on a
    cluster) or deferred (over the cluster's job cap, or waiting for a base cell: a later run submits it)."""

    states: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return [cid for cid, s in self.states.items() if s not in ("finished", "submitted", "deferred")]


@dataclass
class ExecutorView:
    """An executor's view of a sweep for `mkf sweep status`: extra columns per cell, and which cells run now."""

    columns: list[str] = field(default_factory=list)
    rows: dict[str, list[str]] = field(default_factory=dict)  # cell id -> one value per column
    running: set[str] = field(default_factory=set)


class Executor(ABC):
    """Runs cells whose dependencies are finished or among the same call, and reports their outcome."""

    name: str = "base"

    @classmethod
    @abstractmethod
    def from_options(cls, options: dict[str, Any]) -> Executor:
        """Built from `mkf sweep run`'s options (slots, profile, dry_run, the sweep's slurm section...)."""

    @classmethod
    @abstractmethod
    def used_by(cls, plan: SweepPlan) -> bool:
        """Whether this executor has run cells of the sweep (its bookkeeping exists under the output dir)."""

    @abstractmethod
    def run(self, plan: SweepPlan, cells: Sequence[Cell]) -> SweepOutcome: ...

    @abstractmethod
    def status(self, plan: SweepPlan) -> ExecutorView: ...

    @abstractmethod
    def cancel(self, plan: SweepPlan) -> list[str]:
        """Stop every cell of the sweep this executor started; returns what was stopped (ids, for the user)."""


def finished_line(plan: SweepPlan, cell: Cell) -> str:
    """The line a run prints when a cell finishes: its label, top-1 and, for a cell with a finished reference
    base, relative top-1 (the number the report draws)."""
    from pipeline.results.run_folder import read_result

    result = read_result(cell.run_dir) or {}
    top1 = result.get("top1")
    line = f"finished {cell.label} ({cell.id}): top-1 " + ("?" if top1 is None else f"{top1:.4f}")
    if cell.reference and top1 is not None:
        reference = next((c for c in plan.cells if c.id == cell.reference), None)
        ref_top1 = (read_result(reference.run_dir) or {}).get("top1") if reference else None
        if ref_top1:
            line += f", relative top-1 {top1 / ref_top1:.4f}"
        else:
            line += ", relative top-1 undefined (its reference base scored 0 or has not finished)"
    return line


def unfinished_lines(plan: SweepPlan, outcome: SweepOutcome) -> list[str]:
    """One line per cell of ``outcome`` that did not finish, saying why: failed (and the log that says how),
    skipped because a base it depends on failed, or waiting (and for what). `mkf sweep run` prints them after
    "N cells did not finish" so the user knows which cells to look at and which merely follow another."""
    from launch.store.state import cell_state, log_path

    by_id = plan.by_id()

    def state_of(cid: str) -> str:
        return outcome.states.get(cid) or cell_state(plan, by_id[cid])

    def failed_root(cell: Cell, seen: set[str]) -> Cell | None:
        """The failed cell upstream of ``cell`` (a base, or a base's base), if any."""
        for dep in cell.depends_on:
            if dep in seen or dep not in by_id:
                continue
            seen.add(dep)
            if state_of(dep) == "failed":
                return by_id[dep]
            root = failed_root(by_id[dep], seen)
            if root is not None:
                return root
        return None

    failed, waiting = [], []
    skipped: dict[str, list[Cell]] = {}  # failed root id -> the cells skipped because of it
    for cid in outcome.failed:
        cell = by_id.get(cid)
        if cell is None:
            continue
        state = outcome.states[cid]
        if state == "failed":
            log = log_path(plan, cell)
            where = log if log.is_file() else cell.run_dir
            last = _last_line(log) if log.is_file() else ""
            failed.append(f"failed {cell.label} ({cid}): see {where}" + (f" (last line: {last})" if last else ""))
        elif state == "blocked":
            root = failed_root(cell, set())
            if root is not None:
                skipped.setdefault(root.id, []).append(cell)
            else:
                bases = [by_id[d].label for d in cell.depends_on if d in by_id and state_of(d) != "finished"]
                waiting.append(f"waiting {cell.label} ({cid}): its base {', '.join(bases) or '?'} has not finished")
        else:
            waiting.append(f"waiting {cell.label} ({cid}): {_WAITING.get(state, state)}")
    lines = _capped(failed, "failed cells")
    for root_id, cells in skipped.items():
        root = by_id[root_id]
        if len(cells) <= SKIPPED_EACH:
            lines += [f"skipped {c.label} ({c.id}): its base {root.label} ({root.id}) failed" for c in cells]
        else:
            lines.append(f"skipped {len(cells)} cells ({', '.join(c.label for c in cells[:2])}, ...): their base "
                         f"{root.label} ({root.id}) failed")
    return lines + _capped(waiting, "waiting cells")


SKIPPED_EACH = 3  # more cells skipped after one failed base than this: one line for all of them
LINES_MAX = 20  # failed or waiting cells listed one by one, at most


def _capped(lines: list[str], what: str) -> list[str]:
    if len(lines) <= LINES_MAX:
        return lines
    return [*lines[:LINES_MAX], f"... and {len(lines) - LINES_MAX} more {what} (`mkf sweep status OUTPUT --only "
                                f"{'failed' if what.startswith('failed') else 'pending'}` lists them)"]


def _last_line(path: Path, limit: int = 200) -> str:
    """The log's last non-empty line (most often the error a failed cell ended with), shortened to ``limit``."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return last if len(last) <= limit else last[: limit - 1] + "…"
