"""`mkf`: the command line of masterkey-filters: the argument parser, dispatching each verb to its function in
:mod:`launch.commands`.

Every user mistake surfaces as one line on stderr (``mkf: error: ...``) and exit status 2; the commands check
their input before they write or train anything.
"""

from __future__ import annotations

import argparse
import os
import sys

from configs import config_path
from datamodules.errors import UserError
from launch.commands.bench import cmd_bench_adaptive, cmd_bench_cli, cmd_bench_sweep, cmd_bench_train
from launch.commands.costs import add_parsers as add_costs_parsers
from launch.commands.demo import cmd_demo
from launch.commands.layers import cmd_layers
from launch.commands.report import cmd_report
from launch.commands.sweep import (
    cmd_sweep_advance,
    cmd_sweep_audit,
    cmd_sweep_cancel,
    cmd_sweep_dashboard,
    cmd_sweep_plan,
    cmd_sweep_report,
    cmd_sweep_run,
    cmd_sweep_smoke,
    cmd_sweep_status,
    cmd_sweep_sync,
    cmd_sweep_worker,
)
from launch.commands.train import cmd_train
from launch.core.console import err_console

DEMO_CONFIG = config_path("demo.yaml")  # package data: found from a checkout and from an installed wheel


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
    s.add_argument("--config", required=True, help="cell YAML (see docs/reference.md 'Config format')")
    s.add_argument("--run-dir", help="override the config's run_dir")
    s.add_argument("--num-nodes", type=int, help="override trainer.num_nodes (set by the Slurm executor)")
    s.add_argument("--devices", type=int, help="override trainer.devices per node (set by the Slurm executor)")
    s.add_argument("--accelerator", help="override trainer.accelerator (cpu, gpu, auto)")
    s.set_defaults(func=cmd_train)

    sweep = sub.add_parser("sweep", help="plan, run and inspect transfer sweeps").add_subparsers(
        dest="sweep_command", required=True, metavar="SUBCOMMAND")
    s = sweep.add_parser("plan", help="expand a sweep YAML into cells and write the manifest (trains nothing)")
    s.add_argument("sweep", nargs="+", help="sweep YAML(s) or a folder of them, e.g. configs/demo.yaml or "
                                            "configs/paper/ (one plan: each distinct cell once)")
    s.set_defaults(func=cmd_sweep_plan)
    s = sweep.add_parser("run", help="run every unfinished cell in dependency order",
                         description="Runs base cells, then transfer cells once their base finished. Finished "
                                     "cells are skipped; interrupted ones resume from their last checkpoint.")
    s.add_argument("sweep", nargs="+", help="sweep YAML(s) or a folder of them (one catalog plan, one submission)")
    s.add_argument("--executor", default="local", choices=["local", "slurm"],
                   help="local: run here, in dependency order; slurm: job arrays per (stage, profile, base tasks waited for)")
    s.add_argument("--profile", help="slurm: cluster profile name (default: the sweep's slurm.profiles, else "
                                     "'default')")
    s.add_argument("--profiles", help="slurm: profiles YAML (default: configs/profiles.yaml)")
    s.add_argument("--dry-run", action="store_true", help="slurm: print every script and sbatch command, submit nothing")
    s.add_argument("--slots", type=int, default=1,
                   help="cells run at once by the local executor; CPU threads are split between them (default 1)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    s.add_argument("--no-bundle", action="store_true",
                   help="local: every cell its own `mkf train` process (default: short cells share --slots "
                        "long-lived workers, see docs/speed.md)")
    s.add_argument("--bundle-below", type=float, metavar="MIN",
                   help="local: bundle cells the cost table estimates below MIN minutes (default 30)")
    s.set_defaults(func=cmd_sweep_run)
    s = sweep.add_parser("worker", help="train cell configs one after another in ONE process (a bundle)",
                         description="What a bundle runs: the configs in order, torch imported and the data read "
                                     "once; each cell keeps its own log (--log-dir), run folder, attempts and W&B "
                                     "run. Exit 0 all finished, 1 some failed, 3 stopped by a preemption signal.")
    s.add_argument("configs", nargs="+", help="cell config YAMLs")
    s.add_argument("--log-dir", help="each cell's output to DIR/<config stem>.log")
    s.set_defaults(func=cmd_sweep_worker)
    s = sweep.add_parser("status", help="per-cell state (joined with Slurm's view) and counts per stage")
    s.add_argument("target", nargs="+", help="sweep YAML(s), a folder of them, or sweep / catalog output directories")
    s.add_argument("--only", nargs="+", metavar="STATE",
                   choices=["finished", "running", "interrupted", "failed", "pending"],
                   help="list only cells in these states (the counts always cover every cell)")
    s.add_argument("--limit", type=int, default=200, help="list at most this many cells (default 200; 0 = all)")
    s.set_defaults(func=cmd_sweep_status)
    s = sweep.add_parser("advance", help="adaptive depths: plan and submit the next round (the Slurm planner job)",
                         description="Refines every curve whose cells have finished (docs/adaptive.md), submits "
                                     "the new cells and a planner job after them. Run by Slurm after each round.")
    s.add_argument("target", help="sweep output directory (holds adaptive.json)")
    s.set_defaults(func=cmd_sweep_advance)
    s = sweep.add_parser("cancel", help="stop every cell of the sweep (scancel its Slurm arrays, stop local cells)")
    s.add_argument("target", nargs="+", help="sweep YAML(s), a folder of them, or sweep / catalog output directories")
    s.set_defaults(func=cmd_sweep_cancel)
    s = sweep.add_parser("report", help="every sweep's report (mkf report of each sweep's output directory)")
    s.add_argument("target", nargs="+", help="sweep YAML(s), a folder of them, or sweep / catalog output directories")
    s.add_argument("--partial", action="store_true", help="report the cells finished so far")
    s.set_defaults(func=cmd_sweep_report)
    s = sweep.add_parser(
        "smoke", help="write smoke-scale copies of sweeps (real archs, 32 px, 2 steps) to run before the real thing",
        description="Writes each sweep as a smoke sweep into OUT: the same archs (real timm models at full "
                    "width), unit kinds, variants, recipes, datasets and profiles, at one seed, the first "
                    "transfer pair, the first, middle and last unit, 32 px, 16 training images per dataset and two "
                    "optimizer steps per cell (with gradient accumulation), W&B off. Then `mkf sweep run OUT` "
                    "trains them, `mkf sweep audit OUT` checks every cell's protocol and `mkf sweep report OUT` "
                    "draws every figure: the whole pipeline, on your data and cluster, for minutes of compute.")
    s.add_argument("sweep", nargs="+", help="sweep YAML(s) or a folder of them, e.g. configs/paper/")
    s.add_argument("--out", required=True, help="folder for the smoke sweeps (their results go under OUT/results)")
    s.add_argument("--data-root", help="the folder relative data paths are read from (the sweeps' data_root)")
    s.add_argument("--source-file", action="append", metavar="NAME=PATH",
                   help="a local weights file for an external source (e.g. in1k_timm=convnext_tiny.safetensors); "
                        "pairs from sources without one are left out (no download)")
    s.set_defaults(func=cmd_sweep_smoke)
    s = sweep.add_parser(
        "audit", help="check every finished cell against the experiment it claims to be (exit 1 on a failure)",
        description="The protocol audit, from each cell's evidence.json (written while it trained): transferred "
                    "units equal their source's final tensors and frozen ones stayed put; re-initialised layers "
                    "are a fresh draw (or the reference's, under transfer.reinit: paired); random-frozen and "
                    "shuffled units are no identity map; the cells of each comparison trained at one world size, "
                    "global batch, LR schedule, resolution, recipe and step count with paired seeds; the classes "
                    "and validation data are as declared. One table per sweep, audit.json beside it; `mkf report` "
                    "runs the same audit and marks what fails.")
    s.add_argument("target", nargs="+", help="sweep YAML(s), a folder of them, or sweep / catalog output directories")
    s.set_defaults(func=cmd_sweep_audit)
    s = sweep.add_parser("sync", help="upload every cell's offline W&B runs (wandb sync), once back online")
    s.add_argument("target", help="sweep YAML or sweep output directory")
    s.add_argument("--dry-run", action="store_true", help="list the offline runs, upload nothing")
    s.set_defaults(func=cmd_sweep_sync)
    s = sweep.add_parser(
        "dashboard", help="build the sweep's W&B workspace (figure, training health, filter grids) and save it",
        description="Builds the sweep's W&B workspace with wandb-workspaces (pip install "
                    "'masterkey-filters[dashboard]'): a section for the figure of the sweep's kind (the report's "
                    "figure and tables: relative top-1 by depth per arch and variant; each cell's top-1 by depth), "
                    "one for training health (loss, top-1, learning rates, images/s, data-wait share, memory, "
                    "step and epoch time) and one for the DS-CNN cells' filter grids and kernel-family shares. The "
                    "runset is the sweep's W&B group, grouped by arch and variant; one workspace per W&B project "
                    "the cells log to. Online (an API key, WANDB_MODE not offline) it is saved and its URL "
                    "printed; offline it prints what it would create and keeps it pending in DIR/dashboard.json, "
                    "saved by the next online `mkf sweep dashboard` or by `mkf sweep sync`. Re-running updates "
                    "the same view.")
    s.add_argument("target", help="sweep YAML or sweep output directory")
    s.add_argument("--dry-run", action="store_true", help="print the workspace, save and write nothing")
    s.set_defaults(func=cmd_sweep_dashboard)

    s = sub.add_parser("report", help="results.csv, summary.csv and the figure of the sweep's kind (PNG + PDF)",
                       description="Collects every finished cell: results.csv (one row per cell), summary.csv "
                                   "(mean, std, 95% CI over seeds) and the figure the sweep's kind selects: "
                                   "depth curves with bands (depth_curve), retention per model size (retention) "
                                   "or source x target heatmaps + tables (matrix). Logged to W&B when enabled. "
                                   "A catalog run's folder (results/paper/catalog) reports every sweep in it.")
    s.add_argument("dir", help="sweep output directory, e.g. results/demo, or a catalog run's folder")
    s.add_argument("--partial", action="store_true", help="report the cells finished so far (a running sweep)")
    s.set_defaults(func=cmd_report)

    add_costs_parsers(sub, sweep)  # `mkf costs fit`, `mkf sweep calibrate`

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
    s.add_argument("--cells-per-hour", action="store_true",
                   help="instead: the demo's cells/hour here, each cell its own process vs bundles (trains)")
    s.add_argument("--demo-seeds", type=int, default=1, help="--cells-per-hour: seeds of the demo (22 cells each)")
    s.add_argument("--slots", type=int, default=2, help="--cells-per-hour: cells at once (default 2)")
    s.add_argument("--json", help="also write the figures to this JSON file")
    s.set_defaults(func=cmd_bench_sweep)

    s = bench.add_parser("adaptive", help="the catalog's cost: depths as written, all, adaptive start grid, worst case")
    s.set_defaults(func=cmd_bench_adaptive)

    s = bench.add_parser("cli", help="login-node commands (help, sweep plan/status/cancel) vs `import torch`",
                         description="Times `mkf --help`, `mkf sweep plan` and `mkf sweep status` of a "
                                     "10,000-cell sweep, each a fresh process, as ratios to `python -c 'import "
                                     "torch'` on this machine, and says whether each imported torch.")
    s.add_argument("--repeats", type=int, default=3, help="cold runs per command; the median is reported")
    s.add_argument("--seeds", type=int, default=55, help="seeds of the benchmark sweep (182 cells each)")
    s.add_argument("--json", help="also write the figures to this JSON file")
    s.set_defaults(func=cmd_bench_cli)

    from launch.commands import data, filters, gpu_bench

    data.add_parsers(sub, bench)
    filters.add_parsers(sub)
    gpu_bench.add_parsers(bench)
    return p


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words[:1] == ["train"]:
        from launch.worker import slurm_task  # torch-free

        if slurm_task.in_slurm_step():  # a preemption during the imports below is recorded, not fatal
            slurm_task.record_early_signals()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        err_console.print(f"mkf: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
