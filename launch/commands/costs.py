"""`mkf costs fit` (the cost table refitted from finished cells) and `mkf sweep calibrate` (is a budget faithful?).

Both read what cells recorded (result.json ``cost``, their results) and write one file atomically; the arithmetic is
:mod:`pipeline.results.costs` and :mod:`pipeline.results.calibration`, the sweep side
:mod:`launch.planning.calibration`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from datamodules.errors import UserError
from launch.core.console import console


def cmd_costs_fit(args: argparse.Namespace) -> int:
    from launch.planning.cost import COSTS_FILE, load_costs
    from pipeline.results.costs import dump_table, fit_table

    base_path = Path(args.base) if args.base else COSTS_FILE
    base = load_costs(base_path)
    table, lines = fit_table(args.dirs, base=_plain(base), bench_loader=args.bench_loader)
    if not lines:
        raise UserError(f"no finished cell under {', '.join(args.dirs)} recorded a cost (result.json `cost`); pass "
                        "sweep output folders, a cell store or run folders of cells trained by this version")
    for line in lines:
        console.print(line, markup=False, highlight=False)
    out = Path(args.out) if args.out else base_path
    if args.dry_run:
        console.print(f"(dry run: {out} not written)", markup=False, highlight=False)
        return 0
    header = (f"Refitted by `mkf costs fit {' '.join(args.dirs)}` from {base_path.name}: entries with kind "
              "`measured` come from finished cells; every other entry keeps its published source.")
    dump_table(table, out, header)
    console.print(f"wrote {out} ({len(lines)} entries refitted); `mkf sweep plan` reads it"
                  + ("" if out.resolve() == COSTS_FILE.resolve() else f" with --costs {out}"),
                  markup=False, highlight=False)
    return 0


def _plain(table: dict) -> dict:
    """The table as its file states it: the provenance load_table adds is re-derived when it is read again."""
    return json.loads(json.dumps(table, default=str))


def cmd_sweep_calibrate(args: argparse.Namespace) -> int:
    """Set up the calibration sweeps of a budget sweep, or, once their cells have finished, report it."""
    from launch.planning.calibration import REPORT_FILE, write_derived
    from launch.planning.catalog import plan_catalog, write_catalog
    from launch.planning.schema import load_sweep
    from pipeline.results.calibration import calibrate, lines
    from pipeline.results.run_folder import run_state
    from pipeline.results.tables import collect

    sweep = load_sweep(args.sweep)
    folder = write_derived(args.sweep)
    plan = plan_catalog(folder)
    write_catalog(plan)
    done = sum(run_state(c.run_dir) == "finished" for c in plan.cells)
    if done < len(plan.cells):
        console.print(f"calibration of {sweep.name}: {done} of {len(plan.cells)} cells finished (the short ones are "
                      f"the budget sweep's own cells). Train them with `mkf sweep run {folder}` (add --executor "
                      "slurm on a cluster), then run this command again.", markup=False, highlight=False)
        return 0
    report = calibrate(collect(folder / "short"), collect(folder / "full"))
    report["budget"] = sweep.budget
    for line in lines(report):
        console.print(line, markup=False, highlight=False)
    target = folder / REPORT_FILE
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(target)
    console.print(f"wrote {target}" + ("; `mkf sweep run` now trains the sweep at its budget" if report["faithful"]
                                       else "; the budget sweep will not run: raise `budget:` and calibrate again"),
                  markup=False, highlight=False)
    return 0


def add_parsers(sub: argparse._SubParsersAction, sweep_sub: argparse._SubParsersAction) -> None:
    """`mkf costs fit` and `mkf sweep calibrate` (the CLI calls this while it builds its parser)."""
    s = sub.add_parser("costs", help="the cost table plan reads: refit it from finished cells",
                       description="What a sweep costs, from what cells measured (docs/costs.md).")
    costs_sub = s.add_subparsers(dest="costs_command", required=True, metavar="COSTS_COMMAND")
    f = costs_sub.add_parser(
        "fit", help="refit configs/costs.yaml from finished cells",
        description="Read every finished cell under DIR... (sweep output folders, a cell store, run folders) that "
                    "recorded its cost, and refit the table per device type x arch: images/s at the reference "
                    "resolution with a fitted resolution exponent (several resolutions needed, else the table's), "
                    "validation forwards/s, and a loader ceiling from loader-bound cells. With --bench-loader, the "
                    "loader section from `mkf bench loader --json FILE`. Entries without cells keep their "
                    "published source; `mkf sweep plan` says which figure is measured and from how many cells.")
    f.add_argument("dirs", nargs="+", metavar="DIR")
    f.add_argument("--bench-loader", metavar="JSON", help="a `mkf bench loader --json` report (loader ceilings)")
    f.add_argument("--base", metavar="YAML", help="the table to start from (default: configs/costs.yaml)")
    f.add_argument("--out", metavar="YAML", help="where to write the table (default: the --base table, in place)")
    f.add_argument("--dry-run", action="store_true", help="print the fitted entries, write nothing")
    f.set_defaults(func=cmd_costs_fit)

    c = sweep_sub.add_parser(
        "calibrate", help="is the sweep's budget faithful? train its calibration subset short and full, compare",
        description="For a sweep with `budget:` and `calibration: {archs, seeds, depths}`: write OUTPUT/calibration/"
                    "short.yaml and full.yaml (the subset at the budget and at full length, sharing the sweep's "
                    "store), say how many of their cells have finished, and once all have, compare them: rank "
                    "correlation of relative top-1 over depths, the largest difference, and whether each verdict "
                    "(AnB vs random-frozen, AnB vs BnB) stays the same (docs/costs.md §6). Writes "
                    "OUTPUT/calibration/calibration.json; `mkf sweep run` trains the budget sweep only once it "
                    "says faithful.")
    c.add_argument("sweep", help="the budget sweep's YAML")
    c.set_defaults(func=cmd_sweep_calibrate)
