"""`mkf`: the command line of masterkey-filters.

Every user mistake surfaces as one line on stderr (``mkf: error: ...``) and exit status 2; the commands check
their input before they write or train anything.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from configs import config_path
from datamodules.errors import UserError

DEMO_CONFIG = config_path("demo.yaml")  # package data: found from a checkout and from an installed wheel
# tables stay readable when piped or logged (rich would squeeze them into 80 columns)
console = Console(width=None if sys.stdout.isatty() else 220)
err_console = Console(stderr=True)


# ---- mkf layers ---------------------------------------------------------------------------------------------
def cmd_layers(args: argparse.Namespace) -> int:
    from pipeline.layer_plan import plan_units
    from pipeline.models import create_model

    if args.map:
        return _print_mapping(args)
    if not args.arch:
        raise UserError("mkf layers needs ARCH (e.g. convnext_tiny), or --map SRC_ARCH DST_ARCH")
    model = create_model(args.arch, num_classes=args.num_classes)
    units = plan_units(model, args.kind)
    if not units:
        raise UserError(f"{args.arch} has no {args.kind} units; try --kind block or --kind pointwise")
    table = Table(title=f"{args.arch}: {len(units)} {args.kind} units (forward order)")
    for col in ("#", "modules", "shape", "params"):
        table.add_column(col, justify="right" if col in ("#", "params") else "left")
    for u in units:
        table.add_row(str(u.index), "\n".join(u.modules) if args.kind in ("block", "both") and args.verbose
                      else (u.modules[0] + (f" (+{len(u.modules) - 1})" if len(u.modules) > 1 else "")),
                      u.shape, f"{u.num_params:,}")
    console.print(table)
    console.print(f"{len(units)} units")
    return 0


def _print_mapping(args: argparse.Namespace) -> int:
    """`mkf layers --map SRC DST`: which source unit, channels and kernel feed each target unit."""
    from pipeline.layer_plan import plan_units
    from pipeline.models import create_model
    from pipeline.unit_mapping import MappingPolicy, mapping_table

    src_arch, dst_arch = args.map
    if args.arch:
        raise UserError("give either ARCH or --map SRC_ARCH DST_ARCH, not both")
    policy = MappingPolicy(units=args.units, channels=args.channels, kernel=args.kernel, seed=args.seed)
    src, dst = create_model(src_arch, num_classes=args.num_classes), create_model(dst_arch, num_classes=args.num_classes)
    src_units, dst_units = plan_units(src, args.kind), plan_units(dst, args.kind)
    for arch, units in ((src_arch, src_units), (dst_arch, dst_units)):
        if not units:
            raise UserError(f"{arch} has no {args.kind} units; choose another --kind")
    rows = mapping_table(policy, src, src_units, dst, dst_units)
    table = Table(title=f"{src_arch} -> {dst_arch}: {args.kind} units, units {policy.units}, channels "
                        f"{policy.channels}, kernel {policy.kernel}, seed {policy.seed}")
    for col in ("target", "source", "target shape", "source shape", "action"):
        table.add_column(col, justify="right" if col in ("target", "source") else "left")
    for row, _ in rows:
        table.add_row(str(row.target), str(row.source or "-"), row.target_shape, row.source_shape,
                      "; ".join(row.actions))
    console.print(table)
    console.print(f"{len(dst_units)} target units from {len(src_units)} source units")
    return 0


# ---- mkf train ----------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from pipeline.config import load_cell_config
    from pipeline.train import train_cell

    cfg = load_cell_config(args.config)
    if args.run_dir:
        cfg.run_dir = args.run_dir
    for flag, key in (("num_nodes", "num_nodes"), ("devices", "devices"), ("accelerator", "accelerator")):
        if getattr(args, flag) is not None:
            setattr(cfg.trainer, key, getattr(args, flag))
    if isinstance(cfg.trainer.devices, int) and cfg.trainer.devices * cfg.trainer.num_nodes > 1:
        cfg.trainer.strategy = "ddp" if cfg.trainer.strategy == "auto" else cfg.trainer.strategy
    from launch import slurm_runtime

    if slurm_runtime.in_slurm_step():  # preemption, periodic checkpoints and the restart policy live there
        return slurm_runtime.train_in_slurm(cfg, report=err_console.print)
    result = train_cell(cfg)
    if result:
        console.print(f"{cfg.run_dir}: top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f}, "
                      f"{result['steps']} steps in {result['wall_time_s']:.1f} s")
    return 0


# ---- mkf sweep ----------------------------------------------------------------------------------------------
def _plan_table(plan) -> Table:  # type: ignore[no-untyped-def]
    table = Table(title=f"sweep {plan.name}: {len(plan.cells)} cells -> {plan.output_dir}")
    for col in ("id", "stage", "arch", "variant", "source->target", "depth", "seed", "depends on"):
        table.add_column(col, no_wrap=col in ("id", "depends on"), min_width=12 if "id" in col else None,
                         overflow="fold")
    for c in plan.cells:
        table.add_row(c.id, c.stage, c.arch + (f" <- {c.source_arch}" if c.source_arch not in (None, c.arch) else ""),
                      c.variant + (f" ({c.unit_kind})" if c.unit_kind else ""),
                      f"{c.source}->{c.target}" if c.stage == "transfer" else str(c.target or ""),
                      "" if c.depth is None else str(c.depth), str(c.seed), ",".join(c.depends_on))
    return table


PLAN_TABLE_MAX = 60  # larger plans print a per-stage summary instead of one row per cell


def _plan_summary(plan) -> Table:  # type: ignore[no-untyped-def]
    counts: Counter[tuple[str, str, str, str]] = Counter(
        (c.stage, c.arch, c.variant if c.stage == "transfer" else "base", c.unit_kind) for c in plan.cells)
    table = Table(title=f"sweep {plan.name}: {len(plan.cells):,} cells -> {plan.output_dir}")
    for col in ("stage", "arch", "variant", "unit kind", "cells"):
        table.add_column(col, justify="right" if col == "cells" else "left")
    for (stage, arch, variant, kind), n in sorted(counts.items()):
        table.add_row(stage, arch, variant, kind, f"{n:,}")
    return table


def _print_plan(plan, costs: bool = True) -> None:  # type: ignore[no-untyped-def]
    console.print(_plan_table(plan) if len(plan.cells) <= PLAN_TABLE_MAX else _plan_summary(plan))
    if costs:
        from launch.cost import estimate

        for line in estimate(plan).lines():
            console.print(line, markup=False, highlight=False)


def cmd_sweep_plan(args: argparse.Namespace) -> int:
    from launch.sweep import load_sweep, plan_sweep, write_plan

    plan = plan_sweep(load_sweep(args.sweep))
    _print_plan(plan)
    console.print(f"manifest: {write_plan(plan)}")
    return 0


def run_sweep(sweep_path: str | Path, executor_name: str = "local", slots: int = 1, progress: bool = True,
              profile: str | None = None, profiles_file: str | None = None, dry_run: bool = False) -> int:
    """Plan, write the manifest, run (or submit) every cell that is not finished; finished cells are skipped."""
    from launch.cell_state import cell_state, clear_failure
    from launch.executors import executor_class
    from launch.sweep import load_sweep, materialize_configs, plan_sweep, write_plan

    cls = executor_class(executor_name)
    sweep = load_sweep(sweep_path)
    plan = plan_sweep(sweep)
    executor = cls.from_options({"slots": slots, "progress": progress, "profile": profile,
                                 "profiles_file": profiles_file, "dry_run": dry_run, "sweep_slurm": sweep.slurm})
    if dry_run:
        _print_plan(plan)
    else:
        write_plan(plan)
    states = {c.id: cell_state(plan, c) for c in plan.cells}
    todo = [c for c in plan.cells if states[c.id] != "finished"]
    skipped = len(plan.cells) - len(todo)
    console.print(f"sweep {plan.name}: {len(plan.cells)} cells, {skipped} already finished, {len(todo)} to run "
                  f"({sum(states[c.id] == 'interrupted' for c in todo)} resume from a checkpoint)")
    if not dry_run:
        for cell in todo:
            clear_failure(plan, cell)
        materialize_configs(plan, todo)  # only the cells about to run get their config YAML
    outcome = executor.run(plan, todo)
    failed = outcome.failed
    if failed:
        err_console.print(f"{len(failed)} cells did not finish; rerun the same command to retry them")
        return 1
    return 0


def cmd_sweep_run(args: argparse.Namespace) -> int:
    return run_sweep(args.sweep, args.executor, args.slots, progress=not args.no_progress, profile=args.profile,
                     profiles_file=args.profiles, dry_run=args.dry_run)


def cmd_sweep_status(args: argparse.Namespace) -> int:
    from launch.cell_state import STATES, cell_state
    from launch.executors import executors_used
    from launch.sweep import resolve_plan
    from pipeline.run_folder import last_metric, read_attempts

    plan = resolve_plan(args.target)
    views = [e.status(plan) for e in executors_used(plan)]
    table = Table(title=f"sweep {plan.name} ({plan.output_dir})")
    columns = ["id", "stage", "arch", "variant", "depth", "seed", "state", "preempted", "failed", "metric"]
    columns += [c for v in views for c in v.columns]
    for col in columns:
        table.add_column(col, no_wrap=True, min_width=12 if col == "id" else None)
    counts: dict[str, Counter[str]] = {}
    shown = 0
    for c in plan.cells:
        state = cell_state(plan, c)
        if state in ("pending", "interrupted") and any(c.id in v.running for v in views):
            state = "running"
        counts.setdefault(c.stage, Counter())[state] += 1
        if args.only and state not in args.only:
            continue
        shown += 1
        if shown > args.limit > 0:
            continue
        attempts = read_attempts(c.run_dir)
        row = [c.id, c.stage, c.arch, c.variant, "" if c.depth is None else str(c.depth), str(c.seed), state,
               str(attempts["preemptions"]), str(attempts["failures"]), last_metric(c.run_dir)]
        for v in views:
            row += v.rows.get(c.id, [""] * len(v.columns))
        table.add_row(*row)
    console.print(table)
    if shown > args.limit > 0:
        console.print(f"... {shown - args.limit} more cells not listed (--limit 0 lists all, --only STATE filters)")
    for stage, counter in counts.items():
        console.print(f"{stage:>8}: " + "  ".join(f"{s}: {counter[s]}" for s in STATES)
                      + f"  total: {sum(counter.values())}")
    total = sum(counts.values(), Counter())
    console.print("   total: " + "  ".join(f"{s}: {total[s]}" for s in STATES) + f"  total: {len(plan.cells)}")
    return 0


def cmd_sweep_cancel(args: argparse.Namespace) -> int:
    from launch.executors import executors_used
    from launch.sweep import resolve_plan

    plan = resolve_plan(args.target)
    stopped = {e.name: e.cancel(plan) for e in executors_used(plan)}
    if not any(stopped.values()):
        console.print("nothing running or queued for this sweep")
    for name, ids in stopped.items():
        if ids:
            console.print(f"cancelled ({name}): {', '.join(ids)}")
    return 0


def cmd_sweep_sync(args: argparse.Namespace) -> int:
    from launch.sweep import resolve_plan
    from launch.wandb_sync import sync_sweep

    return sync_sweep(resolve_plan(args.target), dry_run=args.dry_run, console=console)


# ---- mkf report ---------------------------------------------------------------------------------------------
def report(sweep_dir: str | Path, partial: bool = False) -> list[Path]:
    from pipeline.results import write_report

    rows, files = write_report(sweep_dir, partial=partial)
    table = Table(title=f"relative top-1 ({sweep_dir})")
    for col in ("arch", "variant", "source->target", "depth", "seed", "top-1", "reference", "relative"):
        table.add_column(col, justify="right" if col not in ("arch", "variant", "source->target") else "left")
    shown = [r for r in rows if r["stage"] == "transfer"] if len(rows) > PLAN_TABLE_MAX else rows
    for r in shown[:PLAN_TABLE_MAX * 4]:
        table.add_row(r["arch"], r["variant"] or "", f"{r['source']}->{r['target']}" if r["stage"] == "transfer"
                      else str(r["target"] or ""), "" if r["depth"] is None else str(r["depth"]), str(r["seed"]),
                      f"{r['top1']:.4f}", f"{r['reference_top1']:.4f}" if r["reference_top1"] else "",
                      f"{r['relative_top1']:.3f}" if r["relative_top1"] is not None else "")
    console.print(table)
    for f in files:
        console.print(f"wrote {f}")
    figure = next((f for f in files if f.suffix == ".png"), None)
    if figure is None:
        console.print("no figure yet: no transfer cell has finished with its reference base")
        return files
    import csv

    from launch.wandb_sync import log_report

    tables = {}
    for path in files:  # summary.csv and the kind's tables (matrix.csv, retention.csv)
        if path.suffix == ".csv" and path.name != "results.csv":
            with path.open(newline="") as f:
                tables[path.stem] = list(csv.DictReader(f))
    logged = log_report(Path(sweep_dir), figure, rows, key="figure", tables=tables)
    if logged:
        console.print(f"logged the figure to W&B ({logged})")
    return files


def cmd_report(args: argparse.Namespace) -> int:
    report(args.dir, partial=args.partial)
    return 0


# ---- mkf demo -----------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from launch.sweep import load_sweep

    start = time.time()
    code = run_sweep(args.config, "local", args.slots, progress=not args.no_progress)
    if code != 0:
        return code
    out = Path(load_sweep(args.config).output_dir)
    files = report(out)
    figure = next(f for f in files if f.suffix == ".png")
    console.print(f"demo finished in {time.time() - start:.0f} s; figure: {figure.resolve()}")
    return 0


# ---- mkf bench ----------------------------------------------------------------------------------------------
def cmd_bench_train(args: argparse.Namespace) -> int:
    from pipeline.benchmark import bench_train

    bench_train(arch=args.arch, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                image_size=args.image_size, repeats=args.repeats, out_json=args.json, console=console)
    return 0


def cmd_bench_sweep(args: argparse.Namespace) -> int:
    from launch.bench_sweep import bench_sweep

    bench_sweep(seeds=args.seeds, arch=args.arch, profile=args.profile, profiles_file=args.profiles,
                submit=not args.no_submit, out_json=args.json, console=console)
    return 0


def cmd_bench_cli(args: argparse.Namespace) -> int:
    from launch.bench_cli import bench_cli

    bench_cli(repeats=args.repeats, seeds=args.seeds, out_json=args.json, console=console)
    return 0


# ---- parser -------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mkf",
        description="masterkey-filters: train, transfer and freeze depthwise filters (Master Key Filters "
                    "Hypothesis), run the paper's experiments as sweeps locally or on Slurm, report them as figures and "
                    "tables, and analyse the filters themselves.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  mkf demo\n  mkf layers convnext_tiny --kind depthwise\n"
               "  mkf sweep plan configs/demo.yaml\n  mkf sweep run configs/demo.yaml --slots 2\n"
               "  mkf sweep status results/demo\n  mkf report results/demo\n"
               "  mkf sweep plan configs/paper/cross_domain.yaml   # cells and GPU-hours before submitting\n"
               "  mkf filters grid results/demo/cells/<id>\n  mkf bench train",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("layers", help="list an architecture's transfer units, or map one architecture's onto another",
                       description="Print the transfer units of ARCH in forward order: index, modules, "
                                   "kernel shape, parameter count, and the unit count. With --map SRC DST, print "
                                   "which SRC unit, channels and kernel feed each DST unit (transfer.mapping).")
    s.add_argument("arch", nargs="?", help="timm model name, e.g. convnext_tiny, resnet18, hornet_tiny_7x7")
    s.add_argument("--kind", default="depthwise", choices=["depthwise", "pointwise", "both", "block"],
                   help="unit kind (default: depthwise; both = depthwise + its block's pointwise layers)")
    s.add_argument("--map", nargs=2, metavar=("SRC_ARCH", "DST_ARCH"),
                   help="print the cross-architecture mapping (transfer.mapping) from SRC_ARCH's units to DST_ARCH's")
    s.add_argument("--units", default="by_stage", choices=["by_index", "by_stage", "proportional"],
                   help="--map: which source unit feeds each target unit (default: by_stage)")
    s.add_argument("--channels", default="tile", choices=["tile", "subsample", "error"],
                   help="--map: channel policy when counts differ (default: tile)")
    s.add_argument("--kernel", default="center", choices=["center", "resample", "error"],
                   help="--map: kernel policy when sizes differ (default: center)")
    s.add_argument("--seed", type=int, default=0, help="--map: seed of channels subsample")
    s.add_argument("--num-classes", type=int, default=1000, help="head width (does not change the units)")
    s.add_argument("--verbose", action="store_true", help="list every module of block units")
    s.set_defaults(func=cmd_layers)

    s = sub.add_parser("train", help="train one cell from a YAML config",
                       description="Train one cell (base or transfer) into its run directory; rerunning a "
                                   "finished cell is a no-op, an interrupted one resumes from last.ckpt.")
    s.add_argument("--config", required=True, help="cell YAML (see README 'Config format')")
    s.add_argument("--run-dir", help="override the config's run_dir")
    s.add_argument("--num-nodes", type=int, help="override trainer.num_nodes (set by the Slurm executor)")
    s.add_argument("--devices", type=int, help="override trainer.devices per node (set by the Slurm executor)")
    s.add_argument("--accelerator", help="override trainer.accelerator (cpu, gpu, auto)")
    s.set_defaults(func=cmd_train)

    sweep = sub.add_parser("sweep", help="plan, run and inspect transfer sweeps").add_subparsers(
        dest="sweep_command", required=True, metavar="SUBCOMMAND")
    s = sweep.add_parser("plan", help="expand a sweep YAML into cells and write the manifest (trains nothing)")
    s.add_argument("sweep", help="sweep YAML, e.g. configs/demo.yaml")
    s.set_defaults(func=cmd_sweep_plan)
    s = sweep.add_parser("run", help="run every unfinished cell in dependency order",
                         description="Runs base cells, then transfer cells once their base finished. Finished "
                                     "cells are skipped; interrupted ones resume from their last checkpoint.")
    s.add_argument("sweep", help="sweep YAML")
    s.add_argument("--executor", default="local", choices=["local", "slurm"],
                   help="local: run here, in dependency order; slurm: job arrays per (stage, profile, base tasks waited for)")
    s.add_argument("--profile", help="slurm: cluster profile name (default: the sweep's slurm.profiles, else "
                                     "'default')")
    s.add_argument("--profiles", help="slurm: profiles YAML (default: configs/profiles.yaml)")
    s.add_argument("--dry-run", action="store_true", help="slurm: print every script and sbatch command, submit nothing")
    s.add_argument("--slots", type=int, default=1,
                   help="cells run at once by the local executor; CPU threads are split between them (default 1)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    s.set_defaults(func=cmd_sweep_run)
    s = sweep.add_parser("status", help="per-cell state (joined with Slurm's view) and counts per stage")
    s.add_argument("target", help="sweep YAML or sweep output directory")
    s.add_argument("--only", nargs="+", metavar="STATE",
                   choices=["finished", "running", "interrupted", "failed", "pending"],
                   help="list only cells in these states (the counts always cover every cell)")
    s.add_argument("--limit", type=int, default=200, help="list at most this many cells (default 200; 0 = all)")
    s.set_defaults(func=cmd_sweep_status)
    s = sweep.add_parser("cancel", help="stop every cell of the sweep (scancel its Slurm arrays, stop local cells)")
    s.add_argument("target", help="sweep YAML or sweep output directory")
    s.set_defaults(func=cmd_sweep_cancel)
    s = sweep.add_parser("sync", help="upload every cell's offline W&B runs (wandb sync), once back online")
    s.add_argument("target", help="sweep YAML or sweep output directory")
    s.add_argument("--dry-run", action="store_true", help="list the offline runs, upload nothing")
    s.set_defaults(func=cmd_sweep_sync)

    s = sub.add_parser("report", help="results.csv, summary.csv and the figure of the sweep's kind (PNG + PDF)",
                       description="Collects every finished cell: results.csv (one row per cell), summary.csv "
                                   "(mean, std, 95% CI over seeds) and the figure the sweep's kind selects: "
                                   "depth curves with bands (depth_curve), retention per model size (retention) "
                                   "or source x target heatmaps + tables (matrix). Logged to W&B when enabled.")
    s.add_argument("dir", help="sweep output directory, e.g. results/demo")
    s.add_argument("--partial", action="store_true", help="report the cells finished so far (a running sweep)")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("demo", help="the embedded default: a small real sweep on CPU ending in a figure",
                       description="Runs configs/demo.yaml (Fashion-MNIST halves, tiny ConvNeXt and ResNet, AnB, "
                                   "BnB and the random-frozen control at depths 1, 3, 5, three seeds) and writes "
                                   "results/demo/{results.csv,summary.csv,figure.png,figure.pdf}.")
    s.add_argument("--config", default=str(DEMO_CONFIG), help="sweep YAML (default: configs/demo.yaml)")
    s.add_argument("--slots", type=int, default=min(2, os.cpu_count() or 1), help="cells at once (default 2)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="benchmarks that print figures").add_subparsers(
        dest="bench_command", required=True, metavar="BENCHMARK")
    s = bench.add_parser("train", help="Lightning training steps vs a plain PyTorch loop, same model and data")
    s.add_argument("--arch", default="convnext_demo")
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--image-size", type=int, default=32)
    s.add_argument("--steps", type=int, default=60, help="timed steps per run")
    s.add_argument("--warmup", type=int, default=10, help="untimed steps before timing")
    s.add_argument("--repeats", type=int, default=3, help="alternating runs of each; the median is reported")
    s.add_argument("--json", help="also write the figures to this JSON file")
    s.set_defaults(func=cmd_bench_train)

    s = bench.add_parser("sweep", help="planning time of a 10,000-cell sweep and its sbatch calls",
                         description="Plans ~10,000 cells (convnext_base, all 36 depths, 5 variants, 55 seeds), "
                                     "then submits them to the Slurm cluster in SLURM_CONF (e.g. the test cluster "
                                     "of slurm/testcluster/up.sh) and cancels them again.")
    s.add_argument("--seeds", type=int, default=55, help="seeds (182 cells each with convnext_base)")
    s.add_argument("--arch", default="convnext_base")
    s.add_argument("--profile", default="local-test", help="profile used for both stages")
    s.add_argument("--profiles", help="profiles YAML (default: configs/profiles.yaml)")
    s.add_argument("--no-submit", action="store_true", help="only plan (no Slurm needed)")
    s.add_argument("--json", help="also write the figures to this JSON file")
    s.set_defaults(func=cmd_bench_sweep)

    s = bench.add_parser("cli", help="login-node commands (help, sweep plan/status/cancel) vs `import torch`",
                         description="Times `mkf --help`, `mkf sweep plan` and `mkf sweep status` of a "
                                     "10,000-cell sweep, each a fresh process, as ratios to `python -c 'import "
                                     "torch'` on this machine, and says whether each imported torch.")
    s.add_argument("--repeats", type=int, default=3, help="cold runs per command; the median is reported")
    s.add_argument("--seeds", type=int, default=55, help="seeds of the benchmark sweep (182 cells each)")
    s.add_argument("--json", help="also write the figures to this JSON file")
    s.set_defaults(func=cmd_bench_cli)

    from launch import data_cli, filters_cli, gpu_bench_cli

    data_cli.add_parsers(sub, bench)
    filters_cli.add_parsers(sub)
    gpu_bench_cli.add_parsers(bench)
    return p


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words[:1] == ["train"]:
        from launch import slurm_runtime  # torch-free

        if slurm_runtime.in_slurm_step():  # a preemption during the imports below is recorded, not fatal
            slurm_runtime.record_early_signals()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        err_console.print(f"mkf: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
