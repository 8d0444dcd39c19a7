"""`mkf bench sweep`: how long planning a 10,000-cell sweep takes, and how many sbatch calls submitting it costs.

The paper's grid is archs x variants x depths x seeds; at cluster scale the planner must stay instant and the
submission must be one sbatch per array (stage, profile and the base tasks its cells wait for), never one per cell.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from launch.core.plan import materialize_configs, write_plan
from launch.core.variants import CLASSIC as VARIANTS
from launch.execution.slurm.executor import SlurmExecutor, cancel_sweep
from launch.planning.planner import plan_sweep
from launch.planning.schema import SweepConfig
from pipeline.models.unit_counts import unit_count


def bench_sweep(seeds: int = 55, arch: str = "convnext_base", profile: str = "local-test",
                profiles_file: str | None = None, submit: bool = True, out_json: str | None = None,
                console: Console | None = None) -> dict[str, Any]:
    """Plan (cold: model building included) and, if ``submit``, submit then cancel a sweep of ~10,000 cells."""
    console = console or Console()
    unit_count.cache_clear()
    with tempfile.TemporaryDirectory(prefix="mkf-bench-sweep-") as tmp:
        sweep = SweepConfig(name="bench", output_dir=str(Path(tmp) / "out"), seeds=list(range(seeds)),
                            data={"dataset": "fashion_mnist", "split": {"kind": "random_halves", "seed": 0}},
                            archs=[{"arch": arch, "unit_kind": "depthwise"}], depths="all", variants=list(VARIANTS),
                            slurm={"profiles": {"base": profile, "transfer": profile}})
        start = time.perf_counter()
        plan = plan_sweep(sweep)
        plan_s = time.perf_counter() - start
        result: dict[str, Any] = {"cells": len(plan.cells), "plan_s": plan_s, "arch": arch}
        if submit:
            start = time.perf_counter()
            write_plan(plan)
            materialize_configs(plan, plan.cells)  # submitting writes every submitted cell's YAML
            write_s = time.perf_counter() - start
            executor = SlurmExecutor(profiles_file=profiles_file, sweep_slurm=sweep.slurm, console=Console(quiet=True),
                                     hold=True)  # queued, never run: cancelled right after
            start = time.perf_counter()
            executor.run(plan, plan.cells)
            submit_s = time.perf_counter() - start
            cancel_sweep(plan)
            result.update(write_s=write_s, submit_s=submit_s, sbatch_calls=executor.sbatch_calls,
                          arrays=executor.sbatch_calls)
    table = Table(title=f"sweep of {result['cells']:,} cells ({arch}, all depths, {len(VARIANTS)} variants, {seeds} seeds)")
    table.add_column("step")
    table.add_column("figure", justify="right")
    table.add_row("plan (unit counts from pipeline/models/unit_counts.json)", f"{plan_s:.2f} s  (target < 2 s)")
    if submit:
        table.add_row("write manifest + the 10,010 cell YAMLs submitted", f"{result['write_s']:.2f} s")
        table.add_row("submit", f"{result['submit_s']:.2f} s")
        table.add_row("sbatch calls", f"{result['sbatch_calls']} (one per stage x profile x base tasks waited for; {result['cells']:,} cells)")
    console.print(table)
    if out_json:
        Path(out_json).write_text(json.dumps(result, indent=2) + "\n")
    return result
