"""Executors by name. They share one small interface (:mod:`launch.execution.base`), so the sweep logic never
knows which runs it: :func:`executor_class` looks one up by name, importing its module only then.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from datamodules.errors import UserError
from launch.execution.base import Executor

if TYPE_CHECKING:
    from launch.core.plan import SweepPlan

# name -> "module:class"; imported on first use, so a local run never loads Slurm code and vice versa
EXECUTORS: dict[str, str] = {"local": "launch.execution.local:LocalExecutor",
                             "slurm": "launch.execution.slurm.executor:SlurmExecutor"}


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
