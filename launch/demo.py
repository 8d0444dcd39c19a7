"""`mkf demo` (= `make demo`): the demo sweep (configs/demo.yaml) run locally end to end, ending in its figure."""

from __future__ import annotations

import time
from pathlib import Path

from launch.core.console import console
from launch.execution.run import run_sweep
from launch.views.report import report


def run_demo(config: str | Path, slots: int = 2, progress: bool = True) -> int:
    """The embedded default: run the demo sweep locally, then its report; prints where the figure is."""
    from launch.planning.schema import load_sweep

    start = time.time()
    code = run_sweep(config, "local", slots, progress=progress)
    if code != 0:
        return code
    out = Path(load_sweep(config).output_dir)
    files, passed = report(out)
    figure = next(f for f in files if f.suffix == ".png")
    console.print(f"demo finished in {time.time() - start:.0f} s; figure: {figure.resolve()}")
    return 0 if passed else 1
