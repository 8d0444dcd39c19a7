"""`mkf bench train|sweep|adaptive|cli`: the benchmarks of training steps (:mod:`pipeline.bench.train`) and of
the launch layer (:mod:`launch.bench`). ``mkf bench loader`` and ``mkf bench gpu`` are :mod:`.data` and
:mod:`.gpu_bench`.
"""

from __future__ import annotations

import argparse

from launch.core.console import console


def cmd_bench_train(args: argparse.Namespace) -> int:
    from pipeline.bench.train import bench_train

    bench_train(arch=args.arch, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                image_size=args.image_size, repeats=args.repeats, out_json=args.json, console=console)
    return 0


def cmd_bench_sweep(args: argparse.Namespace) -> int:
    if args.cells_per_hour:
        from launch.bench.sweep_cells import bench_cells

        bench_cells(seeds=args.demo_seeds, slots=args.slots, out_json=args.json, console=console)
        return 0
    from launch.bench.sweep_submit import bench_sweep

    bench_sweep(seeds=args.seeds, arch=args.arch, profile=args.profile, profiles_file=args.profiles,
                submit=not args.no_submit, out_json=args.json, console=console)
    return 0


def cmd_bench_adaptive(args: argparse.Namespace) -> int:
    from launch.bench.catalog_costs import catalog_costs

    catalog_costs(console=console)
    return 0


def cmd_bench_cli(args: argparse.Namespace) -> int:
    from launch.bench.cli_timing import bench_cli

    bench_cli(repeats=args.repeats, seeds=args.seeds, out_json=args.json, console=console)
    return 0
