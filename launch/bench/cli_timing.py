"""`mkf bench cli`: how fast the login-node commands answer, as ratios to ``python -c "import torch"``.

`mkf sweep status` is what a user runs over and over on a login node; it must answer in well under the time
one torch import takes. Each command runs as its own process (cold, like a user's shell), three times; the
median is reported, next to whether the process imported torch at all.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

VARIANTS = ["AnB", "BnB", "AnB+", "BnB+", "reverse"]
HEAVY = ("torch", "lightning", "timm")


def bench_sweep_yaml(out_dir: Path, seeds: int = 55, arch: str = "convnext_base") -> dict[str, Any]:
    """~10,000 cells: convnext_base (36 depthwise units) x 5 variants x 55 seeds (+ 2 base cells per seed)."""
    return {"name": "bench-cli", "output_dir": str(out_dir), "seeds": list(range(seeds)),
            "data": {"dataset": "fashion_mnist", "split": {"kind": "random_halves", "seed": 0}},
            "archs": [{"arch": arch, "unit_kind": "depthwise"}], "depths": "all", "variants": VARIANTS}


def _timed(argv: list[str], repeats: int) -> tuple[float, bool, int]:
    """Median wall time of ``argv`` (a fresh process each time), whether it imported torch, its exit code.

    The timed runs are plain; one extra run under ``-X importtime`` (which slows imports) tells what was imported.
    """
    times, code = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        code = subprocess.run([sys.executable, *argv], capture_output=True).returncode
        times.append(time.perf_counter() - start)
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True)
    heavy = any(line.startswith("import time:") and line.rsplit("|", 1)[-1].strip() in HEAVY
                for line in proc.stderr.splitlines())
    return statistics.median(times), heavy, code


def _plain_timed(argv: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, *argv], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _fake_progress(manifest: Path) -> int:
    """Give a third of the cells a result and every tenth an attempts file, so status reads real files."""
    cells = json.loads(manifest.read_text())["cells"]
    for i, cell in enumerate(cells):
        run_dir = Path(cell["run_dir"])
        if i % 3 == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "result.json").write_text(json.dumps({"status": "finished", "top1": 0.5}))
        if i % 10 == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "attempts.json").write_text(json.dumps({"preemptions": 2, "failures": 0, "history": []}))
    return len(cells)


def bench_cli(repeats: int = 3, seeds: int = 55, out_json: str | None = None,
              console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    cli = ["-m", "launch.cli"]
    torch_s = _plain_timed(["-c", "import torch"], repeats)
    rows: list[tuple[str, float, bool, int, float]] = []
    with tempfile.TemporaryDirectory(prefix="mkf-bench-cli-") as tmp:
        sweep = Path(tmp) / "sweep.yaml"
        out = Path(tmp) / "out"
        sweep.write_text(yaml.safe_dump(bench_sweep_yaml(out, seeds)))
        rows.append(("mkf --help", *_timed([*cli, "--help"], repeats), 0.5))
        rows.append(("mkf layers --help", *_timed([*cli, "layers", "--help"], repeats), 0.5))
        plan_s, plan_heavy, plan_code = _timed([*cli, "sweep", "plan", str(sweep)], repeats)
        cells = _fake_progress(out / "manifest.json") if plan_code == 0 else 0
        rows.append((f"mkf sweep plan ({cells:,} cells)", plan_s, plan_heavy, plan_code, 2.0))
        rows.append((f"mkf sweep status ({cells:,} cells)", *_timed([*cli, "sweep", "status", str(out)], repeats),
                     2.0))
        rows.append(("mkf sweep cancel (nothing queued)", *_timed([*cli, "sweep", "cancel", str(out)], repeats), 2.0))
    table = Table(title=f'login-node commands (median of {repeats} cold runs); python -c "import torch": '
                        f"{torch_s:.2f} s")
    for col in ("command", "seconds", "x import torch", "imports torch", "target"):
        table.add_column(col, justify="left" if col == "command" else "right")
    result: dict[str, Any] = {"import_torch_s": torch_s, "cells": cells, "commands": {}}
    for name, secs, heavy, code, target in rows:
        verdict = "ok" if secs < target and code == 0 else ("FAILED" if code else "over")
        table.add_row(name, f"{secs:.2f}", f"{secs / torch_s:.2f}", "yes" if heavy else "no",
                      f"< {target} s ({verdict})")
        result["commands"][name] = {"s": secs, "ratio_to_import_torch": secs / torch_s, "imports_torch": heavy,
                                    "exit": code, "target_s": target}
    console.print(table)
    if out_json:
        Path(out_json).write_text(json.dumps(result, indent=2) + "\n")
    return result
