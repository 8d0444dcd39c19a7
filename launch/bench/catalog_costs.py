"""`mkf bench adaptive`: what the paper catalog costs with its depths as written, with ``depths: all``, and as
an adaptive grid (its start grid and its worst case), per config and in total."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any


def catalog_costs(paths: list[Path] | None = None, console: Any = None) -> list[dict[str, Any]]:
    """For each catalog config: cells and GPU-hours of its depths as written, of ``depths: all``, of an adaptive
    start grid (``start: stages``) and of its worst case (default tolerance and max_rounds)."""
    from configs import config_path
    from launch.planning.adaptive import grid_costs
    from launch.planning.cost import estimate
    from launch.planning.depths import AdaptiveDepths, AdaptiveSpec, adaptive_depths
    from launch.planning.planner import plan_sweep
    from launch.planning.schema import load_sweep

    paths = paths or sorted(Path(str(config_path("paper"))).glob("*.yaml"))
    rows = []
    for path in paths:
        sweep = load_sweep(path)
        as_written = plan_sweep(sweep)
        # made adaptive first: a sweep that lists its depths by hand keeps them in full_plan, while an adaptive
        # grid (and depths: all) spans every unit
        c = grid_costs(sweep if adaptive_depths(sweep) else
                       sweep.model_copy(update={"depths": AdaptiveDepths(adaptive=AdaptiveSpec())}))
        rows.append({"config": path.stem, "written": (len(as_written.cells), estimate(as_written).total_hours),
                     "all": c.full, "start": c.start, "worst": c.worst})
    if console is not None:
        from rich.table import Table

        table = Table(title="catalog: depths as written vs depths: all vs adaptive (start: stages, "
                            "max_rounds 4); cells, A100-hours")
        for col in ("config", "as written", "depths: all", "adaptive start", "adaptive worst case", "start/all"):
            table.add_column(col, justify="left" if col == "config" else "right")
        total = defaultdict(float)
        for r in rows:
            cells = [f"{r[k][0]:,} / {r[k][1]:,.0f} h" for k in ("written", "all", "start", "worst")]
            table.add_row(r["config"], *cells, f"{r['start'][1] / r['all'][1]:.0%}" if r["all"][1] else "")
            for k in ("written", "all", "start", "worst"):
                total[k + "_n"] += r[k][0]
                total[k + "_h"] += r[k][1]
        table.add_row("total", *[f"{total[k + '_n']:,.0f} / {total[k + '_h']:,.0f} h"
                                 for k in ("written", "all", "start", "worst")],
                      f"{total['start_h'] / total['all_h']:.0%}" if total["all_h"] else "")
        console.print(table)
    return rows
