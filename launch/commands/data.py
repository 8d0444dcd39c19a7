"""`mkf data ...` and `mkf bench loader`: shard writers, verification and the loader benchmark.

Kept apart from launch/cli.py so the data commands can grow without touching the training commands.
"""

from __future__ import annotations

import argparse
import os

from rich.console import Console

console = Console()


def cmd_data_write(args: argparse.Namespace) -> int:
    from datamodules.shards.writer import WriteOptions, write_dataset

    opts = WriteOptions(format=args.format, shard_size=args.shard_size, max_resolution=args.max_resolution,
                        jpeg_quality=args.jpeg_quality, compress_probability=args.compress_probability,
                        seed=args.seed, max_per_class=args.max_per_class)
    index = write_dataset(args.source, args.out, opts, split=args.split, workers=args.workers,
                          val_labels=args.val_labels, progress=not args.no_progress, log=console.print)
    for set_name, entry in index["sets"].items():
        console.print(f"{set_name}: train {entry['train']['samples']} samples in {len(entry['train']['files'])} "
                      f"file(s), val {entry['val']['samples']} in {len(entry['val']['files'])}")
    if index["skipped_count"]:
        console.print(f"skipped {index['skipped_count']} unreadable source images (listed in index.json)")
    console.print(f"index: {os.path.join(args.out, 'index.json')}")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from launch.execution.prepare_run import run_job_file

    return run_job_file(args.job, progress=not args.no_progress, log=console.print)


def cmd_data_verify(args: argparse.Namespace) -> int:
    from datamodules.shards.verify import verify_dataset

    report = verify_dataset(args.dir, workers=args.workers)
    console.print(f"{report['root']}: {report['files']} {report['format']} files, {report['total']} samples "
                  f"decode and match the index {report['samples']}")
    return 0


def cmd_data_index(args: argparse.Namespace) -> int:
    from datamodules.errors import UserError
    from datamodules.shards.hub_index import index_hub_shards

    classes = None
    if args.classes:
        try:
            classes = [line.strip() for line in open(args.classes) if line.strip()]
        except OSError as exc:
            raise UserError(f"cannot read --classes {args.classes}: {exc}") from None
    index = index_hub_shards(args.train, args.val or [], args.out, classes=classes, workers=args.workers)
    entry = index["sets"]["all"]
    console.print(f"{len(index['classes'])} classes; train {entry['train']['samples']} samples in "
                  f"{len(entry['train']['files'])} shard(s), val {entry['val']['samples']} in "
                  f"{len(entry['val']['files'])}; {index['skipped_count']} incomplete sample(s)")
    console.print(f"index: {os.path.join(args.out, 'index.json')} (use it as data.shards)")
    return 0


def cmd_bench_loader(args: argparse.Namespace) -> int:
    from pipeline.bench.loader import bench_loader

    bench_loader(count=args.images, sizes=tuple(args.sizes), workers=args.workers, batch_size=args.batch_size,
                 out_json=args.json, console=console)
    return 0


def add_parsers(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Register the data commands on the top-level parser (``sub``) and the loader benchmark (``bench``)."""
    data = sub.add_parser("data", help="write and verify webdataset shards / FFCV files").add_subparsers(
        dest="data_command", required=True, metavar="SUBCOMMAND")
    s = data.add_parser(
        "write", help="write a dataset (or each half of a class split) as wds shards or FFCV .beton files",
        description="Write SRC into OUT: split-specific, shuffled shards and an index.json. Parallel, with "
                    "progress; rerunning an interrupted write finishes it (no duplicates, nothing missing).",
        epilog="SRC: an ImageNet-layout folder (train/<wnid>/, val/<wnid>/ or flat val/ + --val-labels), or "
               "LAYOUT[:ROOT] with LAYOUT one of imagenet_folder, class_folders, food101, oxford_pets, flowers102, "
               "cifar10, cifar100, fashion_mnist, mnist_5k, sklearn_digits")
    s.add_argument("--source", required=True, help="folder or LAYOUT[:ROOT] (see below)")
    s.add_argument("--format", default="wds", choices=["wds", "ffcv"], help="output format (default wds)")
    s.add_argument("--out", required=True, help="output folder (new, empty, or an unfinished write to resume)")
    s.add_argument("--split", default="none",
                   help="none | random_halves[:SEED] | imagenet_manmade_natural | JSON split; one set per half")
    s.add_argument("--shard-size", type=int, default=1000, help="samples per wds shard (default 1000)")
    s.add_argument("--max-resolution", type=int, help="longest side; larger images are resized (JPEG)")
    s.add_argument("--jpeg-quality", type=int, default=90, help="quality of re-encoded images (default 90)")
    s.add_argument("--compress-probability", type=float, default=0.5,
                   help="ffcv: share of images stored as JPEG, the rest as raw pixels (default 0.5)")
    s.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="writer processes")
    s.add_argument("--seed", type=int, default=0, help="sample order across shards (default 0)")
    s.add_argument("--max-per-class", type=int, help="keep the first N samples per class and part (quick runs)")
    s.add_argument("--val-labels", help="flat ImageNet val: file of '<file name> <wnid or index>' lines")
    s.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    s.set_defaults(func=cmd_data_write)

    s = data.add_parser(
        "prepare", help="run one data-preparation job of a sweep (what its Slurm prepare job calls)",
        description="Writes the shards a sweep's dataset role describes under `prepare:` (the arguments of "
                    "`mkf data write`) and marks them complete (prepare.json); skipped if already complete.")
    s.add_argument("job", help="the job's JSON (OUTPUT/slurm/prepare-*.json, written at submission)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    s.set_defaults(func=cmd_data_prepare)

    s = data.add_parser("verify", help="decode every sample of a written dataset and check the index's counts")
    s.add_argument("dir", help="folder written by `mkf data write`")
    s.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    s.set_defaults(func=cmd_data_verify)

    s = data.add_parser(
        "index", help="write an index.json for existing webdataset shards (e.g. the Hub's ImageNet layout)",
        description="Reads each shard once (no image decode) and writes OUT/index.json listing the shards, their "
                    "sample counts and the classes, so `loader: wds` with `data.shards: OUT` can train on them. "
                    "A sample is an image (jpg/jpeg/png/webp) plus an integer cls, optionally json.",
        epilog="Shards are local paths, URLs or 'pipe:' commands; braces expand: "
               "--train 'imagenet/train-{0000..1023}.tar'")
    s.add_argument("--train", nargs="+", required=True, help="training shards (patterns)")
    s.add_argument("--val", nargs="+", help="validation shards (patterns)")
    s.add_argument("--out", required=True, help="folder for index.json")
    s.add_argument("--classes", help="file of class names, one a line, for labels 0, 1, ... (default: the labels)")
    s.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="shards read in parallel")
    s.set_defaults(func=cmd_data_index)

    s = bench.add_parser("loader", help="images/s: ImageFolder+DataLoader vs webdataset vs FFCV vs decode limit",
                         description="Generates (once, cached) real-photo JPEGs from scikit-image/scikit-learn "
                                     "sample photos and measures each loader at each size, side by side.")
    s.add_argument("--images", type=int, default=2000, help="JPEGs in the benchmark set (default 2000)")
    s.add_argument("--sizes", type=int, nargs="+", default=[160, 224], help="output resolutions")
    s.add_argument("--workers", type=int, default=2, help="loader workers / decode processes (default 2)")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--json", help="also write the figures to this JSON file")
    s.set_defaults(func=cmd_bench_loader)
