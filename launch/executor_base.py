"""The one interface every executor implements, so the CLI never branches on an executor's name.

``run`` starts (or submits) cells, ``status`` adds the executor's own view of each cell to `mkf sweep status`,
``cancel`` stops what it started, and ``from_options`` builds one from the command line's options. Kept apart
from the executors themselves so that no executor module imports another (no import cycle).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from launch.sweep import Cell, SweepPlan


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
