"""`mkf bench sweep --cells-per-hour`: the demo's cells per hour on this machine, each cell its own process vs
bundles of cells in long-lived workers, and bundles with glibc's default malloc (``MKF_MALLOC_TUNING=0``, see
:mod:`pipeline.training.allocator`), side by side in one run.

All runs train the same cells (the demo sweep, cut to ``seeds`` seeds so the benchmark takes minutes) into fresh
temporary output folders, through the real `mkf sweep run` (``--no-bundle`` for the first), one after the other
so neither shares the CPU with the other. The figure includes everything a user waits for: start-up, data,
training, tear-down and the dependency order (base cells first).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from configs import config_path


def bench_cells(seeds: int = 1, slots: int = 2, config: str | Path | None = None, out_json: str | None = None,
                console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    sweep = yaml.safe_load(Path(config or config_path("demo.yaml")).read_text())
    sweep["seeds"] = list(sweep["seeds"])[:seeds]
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="mkf-bench-cells-") as tmp:
        for mode, extra, env in (("own process per cell", ["--no-bundle"], {}),
                                 ("bundles, default malloc", [], {"MKF_MALLOC_TUNING": "0"}),
                                 ("bundles", [], {})):
            out = Path(tmp) / mode.replace(" ", "_").replace(",", "")
            path = Path(tmp) / f"{out.name}.yaml"
            path.write_text(yaml.safe_dump({**sweep, "output_dir": str(out)}, sort_keys=False))
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "launch.cli", "sweep", "run", str(path), "--slots",
                                   str(slots), "--no-progress", *extra], capture_output=True, text=True,
                                  env={**os.environ, **env})
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                raise RuntimeError(f"{mode}: mkf sweep run failed:\n{proc.stderr[-2000:]}")
            cells = len(list((out / "cells").glob("*/result.json")))
            rows[mode] = {"cells": cells, "wall_s": round(wall, 1), "cells_per_hour": round(cells / wall * 3600, 1)}
    table = Table(title=f"demo cells/hour ({seeds} seed(s), --slots {slots}, this machine)")
    for col in ("", "cells", "wall time", "cells/hour"):
        table.add_column(col, justify="right" if col else "left")
    for mode, r in rows.items():
        table.add_row(mode, str(r["cells"]), f"{r['wall_s']:.0f} s", f"{r['cells_per_hour']:.0f}")
    console.print(table)
    a, b, c = rows["own process per cell"], rows["bundles"], rows["bundles, default malloc"]
    console.print(f"bundles: {b['cells_per_hour'] / a['cells_per_hour']:.2f}x the cells per hour of a process per "
                  f"cell; the malloc settings: {b['cells_per_hour'] / c['cells_per_hour']:.2f}x within bundles")
    if out_json:
        Path(out_json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows
