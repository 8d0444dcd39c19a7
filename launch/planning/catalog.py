"""The catalog as one plan: several sweep files (or a folder of them, e.g. ``configs/paper/``) -> one :class:`SweepPlan`.

Each sweep is planned as usual (:func:`launch.planning.planner.plan_sweep`) and keeps its own manifest, view of its cells and
report in its own ``output_dir``. The catalog plan holds every *distinct* cell once (content ids: a ResNet-18 base
that Fig. 3, Fig. 4 and Fig. 5 all plan is one cell), each cell listing the sweeps that plan it
(``Cell.sweeps``), so the executors, which take one plan, submit the whole catalog in one go (arrays per stage and
profile) without knowing it is a catalog.

Where the catalog's own files go: ``<common folder of the sweeps' output_dirs>/catalog`` (``results/paper/catalog``
for the paper): its manifest (``kind: catalog``, the sweeps listed under ``sweeps``), the cells' config YAMLs, the
executors' logs and Slurm bookkeeping. A cell planned by two sweeps must live in one place, so sweeps that share a
cell must share a ``store:`` (the paper's configs all use ``results/paper/cells``); otherwise planning stops with
one line saying so.

A single sweep file keeps today's behaviour exactly (its own plan, no catalog folder).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from datamodules.errors import UserError
from launch.core.plan import MANIFEST, SweepPlan, load_manifest, write_plan
from launch.planning.planner import plan_sweep
from launch.planning.schema import load_sweep

CATALOG_DIR = "catalog"
WANDB_RUNS_LIMIT = 10_000  # W&B documents about this many runs per project


def sweep_files(paths: list[str | Path] | str | Path) -> list[Path]:
    """Sweep YAMLs named on the command line, a folder standing for its ``*.yaml`` files (sorted)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
            if not found:
                raise UserError(f"{path} holds no sweep files (*.yaml); pass sweep YAMLs or a folder of them")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{path} does not exist; check the path: pass sweep YAMLs or a folder of them, e.g. configs/paper/")
    return list(dict.fromkeys(files))


def check_calibrated_files(targets: list[str] | str) -> None:
    """`run`'s gate for budget sweeps (:func:`launch.planning.calibration.check_calibrated`) over every sweep YAML
    among its targets; an output folder was checked when its sweep was first run."""
    from launch.planning.calibration import check_calibrated

    targets = [targets] if isinstance(targets, str) else list(targets)
    if any(Path(t).is_dir() and (Path(t) / MANIFEST).is_file() for t in targets):
        return
    for path in sweep_files(targets):
        check_calibrated(load_sweep(path))


def is_catalog_dir(path: str | Path) -> bool:
    """Whether ``path`` is a catalog run's output folder (its manifest says kind: catalog)."""
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("kind") == "catalog"


def is_catalog(paths: list[str | Path]) -> bool:
    return len(sweep_files(paths)) > 1


def plan_catalog(paths: list[str | Path] | str | Path, name: str | None = None) -> SweepPlan:
    """One plan over every sweep in ``paths``: each distinct cell once (``Cell.sweeps`` says who plans it).

    The sweeps' own plans ride along as ``plan.parts`` (for per-sweep manifests, cost lines and reports).
    """
    files = sweep_files(paths)
    plans = []
    for f in files:
        sweep = load_sweep(f)
        plan = plan_sweep(sweep)
        plan.slurm = sweep.slurm  # type: ignore[attr-defined]
        plan.sweep = sweep  # type: ignore[attr-defined]  # its prepare: writes and adaptive rounds
        plans.append(plan)
    if len(plans) == 1:
        plans[0].parts = [plans[0]]  # type: ignore[attr-defined]
        return plans[0]
    names = Counter(p.name for p in plans)
    if (dup := next((n for n, k in names.items() if k > 1), None)) is not None:
        where = ", ".join(str(f) for f, p in zip(files, plans, strict=True) if p.name == dup)
        raise UserError(f"two sweeps are named {dup!r} ({where}); give each sweep its own name")
    outs = Counter(str(p.output_dir.absolute()) for p in plans)
    if (dup_out := next((o for o, k in outs.items() if k > 1), None)) is not None:
        raise UserError(f"two sweeps write to output_dir {dup_out}; give each sweep its own output_dir")
    common = Path(os.path.commonpath([str(p.output_dir) for p in plans])) if all(
        p.output_dir.is_absolute() == plans[0].output_dir.is_absolute() for p in plans) else Path(".")
    out = common / CATALOG_DIR
    if name is None:
        folders = {Path(p).name for p in ([paths] if isinstance(paths, (str, Path)) else paths) if Path(p).is_dir()}
        name = f"catalog-{folders.pop()}" if len(folders) == 1 else "catalog"
    cells: dict[str, Any] = {}
    templates: dict[str, dict[str, Any]] = {}
    for plan in plans:
        for key, template in plan.templates.items():
            templates[f"{plan.name}/{key}"] = template
        for cell in plan.cells:
            seen = cells.get(cell.id)
            if seen is None:
                cells[cell.id] = dataclasses.replace(
                    cell, template=None if cell.template is None else f"{plan.name}/{cell.template}",
                    config_path=str(out / "configs" / f"{cell.id}.yaml"), sweeps=[plan.name],
                    depends_on=list(cell.depends_on))
            elif seen.run_dir != cell.run_dir:
                raise UserError(f"sweeps {seen.sweeps[0]} and {plan.name} both plan cell {cell.id} but keep it in "
                                f"different stores ({Path(seen.run_dir).parent} and {Path(cell.run_dir).parent}); "
                                f"give them one `store:` so the cell is trained once")
            else:
                seen.sweeps.append(plan.name)
    ordered = [c for c in cells.values() if c.stage == "base"] + [c for c in cells.values() if c.stage != "base"]
    stores = {str(p.store_dir) for p in plans}
    catalog = SweepPlan(name, out, ordered, kind="catalog", templates=templates,
                        store=Path(stores.pop()) if len(stores) == 1 else None,
                        sweeps=[{"name": p.name, "output_dir": str(p.output_dir), "kind": p.kind} for p in plans])
    for plan in plans:  # configs of cells built from explicit configs (no template) carry over as they are
        for cid, config in plan.configs.cache.items():  # type: ignore[attr-defined]
            catalog.configs.cache.setdefault(cid, config)  # type: ignore[attr-defined]
    catalog.parts = plans  # type: ignore[attr-defined]
    catalog.slurm = plans[0].slurm  # type: ignore[attr-defined]  # see slurm_section
    return catalog


def slurm_section(plan: SweepPlan, profile: str | None = None) -> dict[str, Any]:
    """The sweeps' ``slurm`` section for one submission; sweeps that disagree need ``--profile``."""
    sections = {p.name: getattr(p, "slurm", {}) for p in parts(plan)}
    first = next(iter(sections), None)
    other = next((n for n, v in sections.items() if v != sections[first]), None) if first else None
    if other is not None and profile is None:
        raise UserError(f"sweeps {first} and {other} give different slurm sections; a catalog is submitted with "
                        f"one: align them or pass --profile NAME")
    return next(iter(sections.values()), {}) if profile is None else {}


def parts(plan: SweepPlan) -> list[SweepPlan]:
    """The sweeps of a catalog plan (the plan itself for one sweep); a loaded catalog manifest loads theirs."""
    got = getattr(plan, "parts", None)
    if got is not None:
        return list(got)
    if plan.kind != "catalog":
        return [plan]
    loaded = []
    for entry in plan.sweeps:
        path = Path(entry["output_dir"]) / MANIFEST
        if path.is_file():
            loaded.append(load_manifest(path))
    return loaded


def write_catalog(plan: SweepPlan, view: bool = True) -> list[Path]:
    """Every sweep's own manifest (and, with ``view``, the links of its cells), then the catalog's manifest.

    The plan-time checks (:mod:`launch.planning.checks`) run first, so no manifest of bad input is written
    (`plan` and `run` ran them already; `mkf sweep calibrate` writes its sweeps' manifests here)."""
    from launch.planning.checks import check_plan

    check_plan(plan, strict=False, check_profiles=False)  # profiles: `run` checks the file it submits with
    written = [write_plan(p, view) for p in parts(plan) if p is not plan]
    written.append(write_plan(plan, view=False) if len(written) else write_plan(plan, view))
    return written


def resolve_targets(targets: list[str] | str) -> SweepPlan:
    """`mkf sweep status|cancel|report` targets: sweep YAMLs, folders of them, or sweep / catalog output dirs."""
    from launch.planning.planner import resolve_plan

    targets = [targets] if isinstance(targets, str) else list(targets)
    if len(targets) == 1:
        path = Path(targets[0])
        if path.name == MANIFEST or (path.is_dir() and (path / MANIFEST).is_file()):
            return resolve_plan(path)
        if path.is_file():
            return resolve_plan(path)
        if path.is_dir() and not any(path.glob("*.y*ml")):
            return resolve_plan(path)  # an output dir without a manifest: the usual "plan it first" error
    if all(Path(t).is_dir() and (Path(t) / MANIFEST).is_file() for t in targets):
        plans = [load_manifest(t) for t in targets]  # several sweep output dirs: their cells, each once
        merged: dict[str, Any] = {}
        for p in plans:
            for c in p.cells:
                merged.setdefault(c.id, c)
        out = Path(os.path.commonpath([str(p.output_dir) for p in plans])) / CATALOG_DIR
        plan = SweepPlan("catalog", out, list(merged.values()), kind="catalog",
                         sweeps=[{"name": p.name, "output_dir": str(p.output_dir), "kind": p.kind} for p in plans])
        plan.parts = plans  # type: ignore[attr-defined]
        return plan
    return plan_catalog(targets)


# ---- what `plan` prints about a catalog ---------------------------------------------------------------------
def cost_lines(plan: SweepPlan, costs_file: str | Path | None = None, gpu: str | None = None) -> list[str]:
    """One cost table: each sweep alone, their sum, the catalog with each cell once, and what the store saves."""
    from launch.planning.cost import _hours, estimate

    sweeps = parts(plan)
    total = estimate(plan, costs_file, gpu)
    if len(sweeps) <= 1:
        return total.lines()
    width = max(len(p.name) for p in sweeps) + 2
    lines = [f"{'cost (' + total.gpu + ')':<{width}} {'cells':>8}  GPU-hours"]
    sum_cells, sum_hours = 0, 0.0
    for p in sweeps:
        est = estimate(p, costs_file, gpu)
        n = sum(est.cells.values())
        sum_cells += n
        sum_hours += est.total_hours
        lines.append(f"{p.name:<{width}} {n:>8,}  ~{_hours(est.total_hours)}"
                     + (" (some costs unknown)" if est.unknown else ""))
    n_total = sum(total.cells.values())
    lines.append(f"{'sum of the sweeps':<{width}} {sum_cells:>8,}  ~{_hours(sum_hours)}")
    lines.append(f"{'catalog, each cell once':<{width}} {n_total:>8,}  ~{_hours(total.total_hours)}")
    saved = sum_hours - total.total_hours
    share = f" ({saved / sum_hours:.1%})" if sum_hours else ""
    lines.append(f"{'the store saves':<{width}} {sum_cells - n_total:>8,}  ~{_hours(saved)}{share}")
    lines += [line for line in total.lines() if line.startswith("  cost unknown")]
    return lines


def wandb_warnings(plan: SweepPlan, limit: int = WANDB_RUNS_LIMIT) -> list[str]:
    """A line per W&B project that would hold more runs than W&B supports (each cell logs one run, once)."""
    runs: Counter[str] = Counter()
    sweeps_of: dict[str, set[str]] = defaultdict(set)
    per_template: dict[str, tuple[bool, str]] = {}
    for cell in plan.cells:
        if cell.template is not None and cell.template in plan.templates:
            if cell.template not in per_template:
                w = plan.templates[cell.template].get("wandb") or {}
                per_template[cell.template] = (bool(w.get("enabled")), str(w.get("project")))
            enabled, project = per_template[cell.template]
        else:
            w = plan.configs[cell.id].get("wandb") or {}
            enabled, project = bool(w.get("enabled")), str(w.get("project"))
        if enabled:
            runs[project] += 1
            sweeps_of[project].update(cell.sweeps or [plan.name])
    return [f"warning: W&B project {project!r} would hold {n:,} runs ({', '.join(sorted(sweeps_of[project]))}); "
            f"W&B supports about {limit:,} per project: give these sweeps their own wandb.project (the default "
            f"is one project per sweep)" for project, n in sorted(runs.items()) if n > limit]
