"""Calibration of a budget sweep: the sweep's ``calibration:`` subset planned at both its budget and full length.

A sweep that sets ``budget: {epochs: 16}`` trains every cell short. Whether its comparisons come out as they would
at full length is a measurement, not an assumption (docs/costs.md §6): ``calibration: {archs, seeds, depths}``
names a few comparisons to train both ways. `mkf sweep calibrate SWEEP.yaml` writes two sweeps derived from it
into ``OUTPUT/calibration/`` -- ``short.yaml`` (the subset at the budget) and ``full.yaml`` (the same subset
without it) -- run together as one catalog (`mkf sweep run OUTPUT/calibration/`), and, once their cells have
finished, compares them with :func:`pipeline.results.calibration.calibrate` and writes ``calibration.json``.

**Nothing is trained twice.** Both derived sweeps keep the sweep's store, so the short cells *are* the budget
sweep's own cells (same config, same content id): the main sweep reuses them. Only the full-length subset is
extra. Until ``calibration.json`` says the budget is faithful, `plan` says so and `run` of the budget sweep
refuses (one line naming the fix).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from datamodules.errors import UserError
from launch.planning.schema import SweepConfig, find_recipe, load_sweep
from pipeline.config import load_yaml

CALIBRATION_DIR = "calibration"
REPORT_FILE = "calibration.json"


def calibration_dir(sweep: SweepConfig) -> Path:
    return Path(sweep.output_dir) / CALIBRATION_DIR


def derived_sweeps(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{"short": raw, "full": raw}``: the calibration subset of the sweep at ``path``, at its budget and at full
    length (sweep mappings, ready to write). Paths are made absolute: the files live in another folder."""
    path = Path(path)
    sweep = load_sweep(path)
    if sweep.calibration is None:
        raise UserError(f"{path} has no `calibration:` section; add e.g. `calibration: {{archs: [resnet18], "
                        "seeds: [0, 1]}` (with a `budget:`) to say which comparisons to train both ways")
    raw = load_yaml(path)
    spec = sweep.calibration
    out = Path(sweep.output_dir).absolute() / CALIBRATION_DIR
    store = Path(sweep.store).absolute() if sweep.store else Path(sweep.output_dir).absolute() / "cells"
    archs = []
    for entry in raw["archs"]:
        if spec.archs is None or entry["arch"] in spec.archs:
            entry = dict(entry)
            if entry.get("recipe"):  # found next to the sweep file or shipped: pin where it was found
                entry["recipe"] = str(find_recipe(entry["recipe"], path.parent).absolute())
            archs.append(entry)
    common = {k: v for k, v in raw.items() if k != "calibration"}
    common.update(archs=archs, store=str(store), seeds=spec.seeds if spec.seeds is not None else sweep.seeds)
    if spec.depths is not None:
        common["depths"] = spec.depths
    if sweep.data_root:
        common["data_root"] = str(Path(sweep.data_root).expanduser().absolute())
    short = {**common, "name": f"{sweep.name}-calibration-short", "output_dir": str(out / "short")}
    full = {k: v for k, v in common.items() if k != "budget"}
    full.update(name=f"{sweep.name}-calibration-full", output_dir=str(out / "full"))
    return {"short": short, "full": full}


def write_derived(path: str | Path) -> Path:
    """Write ``short.yaml`` and ``full.yaml`` into OUTPUT/calibration/ (atomically; unchanged files untouched)."""
    import yaml

    sweeps = derived_sweeps(path)
    folder = Path(sweeps["short"]["output_dir"]).parent
    folder.mkdir(parents=True, exist_ok=True)
    for name, raw in sweeps.items():
        target = folder / f"{name}.yaml"
        text = ("# written by `mkf sweep calibrate` from " + str(Path(path).absolute()) + "; edit that file, not this\n"
                + yaml.safe_dump(raw, sort_keys=False))
        if target.is_file() and target.read_text() == text:
            continue
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        tmp.replace(target)
    return folder


def read_report(sweep: SweepConfig) -> dict[str, Any] | None:
    """The calibration report of a sweep, when `mkf sweep calibrate` has written one."""
    try:
        return json.loads((calibration_dir(sweep) / REPORT_FILE).read_text())
    except (OSError, ValueError):
        return None


def state_line(sweep: SweepConfig) -> str | None:
    """What `plan` says about a budget sweep's calibration (None for a sweep without a budget)."""
    if sweep.budget is None:
        return None
    budget = ", ".join(f"{k} {v}" for k, v in sweep.budget.items() if v is not None)
    if sweep.calibration is None:
        return (f"budget ({budget}) not calibrated: add `calibration: {{archs: [...], seeds: [0, 1]}}` and run "
                "`mkf sweep calibrate` to show it reproduces the full length (docs/costs.md §6)")
    report = read_report(sweep)
    if report is None:
        return (f"budget ({budget}): calibration not run yet; `mkf sweep calibrate SWEEP.yaml` sets it up, "
                "`run` trains the sweep only once it is faithful")
    return f"budget ({budget}): calibration says {'FAITHFUL' if report.get('faithful') else 'NOT faithful'} " \
           f"({calibration_dir(sweep) / REPORT_FILE})"


def check_calibrated(sweep: SweepConfig) -> None:
    """`run` of a budget sweep with a ``calibration:`` section: only once its calibration says faithful."""
    if sweep.budget is None or sweep.calibration is None:
        return
    report = read_report(sweep)
    if report is None:
        raise UserError(f"sweep {sweep.name} trains at a budget that is not calibrated yet; run `mkf sweep "
                        "calibrate SWEEP.yaml` first (or remove `calibration:` to train uncalibrated)")
    if not report.get("faithful"):
        raise UserError(f"sweep {sweep.name}: its calibration found the budget NOT faithful "
                        f"({calibration_dir(sweep) / REPORT_FILE}); raise `budget:` and calibrate again, or remove "
                        "`calibration:` to train anyway")

