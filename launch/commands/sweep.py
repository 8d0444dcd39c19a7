"""`mkf sweep ...`: one function per verb (plan, run, worker, status, advance, cancel, report, smoke, audit, sync,
dashboard), each a call into the room that does the work. Every room is imported inside its verb, so the parser
(:mod:`launch.cli`) loads nothing heavy.
"""

from __future__ import annotations

import argparse

from launch.core.console import console


def cmd_sweep_plan(args: argparse.Namespace) -> int:
    from launch.core.console import err_console
    from launch.planning.catalog import plan_catalog, write_catalog
    from launch.planning.checks import check_plan
    from launch.views.plan import print_plan

    plan = plan_catalog(args.sweep)  # one sweep file, or several / a folder as one catalog plan
    for warning in check_plan(plan, strict=False):  # data, ranges, splits, profiles: before anything is written
        err_console.print(warning, markup=False, highlight=False, soft_wrap=True)
    print_plan(plan)
    written = write_catalog(plan, view=False)  # the links into the store are made by `run`
    console.print(f"manifest: {written[-1]}" + (f" (and each sweep's own: {len(written) - 1})" if len(written) > 1
                                                else ""))
    return 0


def cmd_sweep_run(args: argparse.Namespace) -> int:
    from launch.execution.run import run_sweep
    from launch.planning.catalog import check_calibrated_files
    from launch.views.plan import print_plan

    check_calibrated_files(args.sweep)  # a budget sweep trains only once its calibration says faithful
    return run_sweep(args.sweep, args.executor, args.slots, progress=not args.no_progress, profile=args.profile,
                     profiles_file=args.profiles, dry_run=args.dry_run, bundle=not args.no_bundle,
                     bundle_below_min=args.bundle_below, show_plan=print_plan)


def cmd_sweep_worker(args: argparse.Namespace) -> int:
    from launch.worker.bundle import run_list

    return run_list(args.configs, args.log_dir)


def cmd_sweep_status(args: argparse.Namespace) -> int:
    from launch.views.status import print_status

    return print_status(args.target, only=args.only, limit=args.limit)


def cmd_sweep_advance(args: argparse.Namespace) -> int:
    from launch.execution.rounds import advance_sweep

    return advance_sweep(args.target)


def cmd_sweep_cancel(args: argparse.Namespace) -> int:
    from launch.execution.cancel import cancel_targets

    return cancel_targets(args.target)


def cmd_sweep_report(args: argparse.Namespace) -> int:
    from launch.views.report import report_targets

    _, passed = report_targets(args.target, partial=args.partial)
    return 0 if passed else 1


def cmd_sweep_smoke(args: argparse.Namespace) -> int:
    from launch.planning.smoke import parse_source_files, write_smoke

    written = write_smoke(args.sweep, args.out, args.data_root, parse_source_files(args.source_file))
    console.print(f"{len(written)} smoke sweep(s) in {args.out}: " + ", ".join(p.name for p in written))
    console.print(f"next: mkf sweep run {args.out} [--executor slurm]; mkf sweep audit {args.out}; "
                  f"mkf sweep report {args.out}", markup=False, highlight=False)
    return 0


def cmd_sweep_audit(args: argparse.Namespace) -> int:
    from launch.views.audit import audit_targets

    return audit_targets(args.target)


def cmd_sweep_sync(args: argparse.Namespace) -> int:
    from launch.planning.planner import resolve_plan
    from launch.views.wandb_sync import sync_sweep

    return sync_sweep(resolve_plan(args.target), dry_run=args.dry_run, console=console)


def cmd_sweep_dashboard(args: argparse.Namespace) -> int:
    from launch.planning.planner import resolve_plan
    from launch.views.dashboard import make_dashboard

    make_dashboard(resolve_plan(args.target), dry_run=args.dry_run, console=console)
    return 0
