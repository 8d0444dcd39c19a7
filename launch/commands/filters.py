"""`mkf filters ...`: look at, cluster and distil the depthwise kernels of any model (issue 8).

SRC everywhere: a run dir, a Lightning ``.ckpt``, a ``.safetensors`` weights file, a timm model name (with
``--file`` for a local pretrained weights file), an ``.onnx`` file (its grouped depthwise ``Conv`` weights), an
``.npz`` from ``mkf filters extract``, or a filter bank ``.txt`` (``published`` = the 8 master-key filters). Heavy
modules are imported inside the commands.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from rich.console import Console

console = Console()
DEFAULT_OUT = Path("results/filters")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def cmd_extract(args: argparse.Namespace) -> int:
    from pipeline.filters.extract import kernels_from

    kset = kernels_from(args.src, args.file)
    if not kset.num_units:
        from datamodules.errors import UserError

        raise UserError(f"{args.src} ({kset.arch}) has no depthwise convolutions; it is not a DS-CNN")
    out = Path(args.out) if args.out else DEFAULT_OUT / _slug(kset.source)
    npz, summary = kset.save(out)
    info = kset.summary()
    console.print(f"{info['num_kernels']} depthwise kernels of {kset.arch} in {kset.num_units} units "
                  f"({', '.join(f'{k}: {v}' for k, v in info['per_kernel_size'].items())})")
    console.print(f"kernels: {npz}\nsummary: {summary}")
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    from pipeline.filters.extract import kernels_from
    from pipeline.filters.grid import draw_grid

    sets = [kernels_from(src, args.file) for src in args.src]
    paths = draw_grid(sets, args.out, per_unit=args.per_unit, seed=args.seed, dpi=args.dpi)
    console.print("grid: " + ", ".join(str(p) for p in paths))
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from pipeline.filters.cluster import ClusterOptions, cluster_kernels, write_cluster_outputs
    from pipeline.filters.extract import kernels_from

    sets = [kernels_from(src, args.file) for src in args.src]
    options = ClusterOptions(clusters=args.clusters, latent=args.latent, epochs=args.epochs,
                             threshold=args.threshold, sign=args.sign, seed=args.seed, min_r2=args.min_r2,
                             criterion=args.criterion)
    result = cluster_kernels(sets, options)
    out = Path(args.out) if args.out else DEFAULT_OUT / ("cluster_" + _slug("+".join(s.source for s in sets)))
    paths = write_cluster_outputs(result, out)
    summary = result.summary()
    console.print(f"{summary['kernels']} kernels, {len(result.names)} clusters, classified "
                  f"{summary['classified']:.1%} (correlation >= {options.threshold})")
    for c in summary["clusters"]:
        console.print(f"  {c['cluster']}: {c['name']:<10} {c['share']:6.1%} of kernels, fit R2 {c['fit']['r2']:.3f}")
    _print_family_shares(result.layer_shares(), summary["family_shares"], options)
    console.print(f"family fits: {summary['family_kernels_per_second']:.0f} kernels/s")
    console.print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _print_family_shares(rows: list[dict], total: dict[str, float], options: object) -> None:
    """Per unit, each family's share of its kernels (a delta or a Gaussian is never counted as a DoG)."""
    from rich.table import Table

    from pipeline.filters.families import SHARE_KEYS

    table = Table(title=f"family of each kernel by {options.criterion.upper()} "  # type: ignore[attr-defined]
                        f"(other: R2 < {options.min_r2})")  # type: ignore[attr-defined]
    for col in ("source", "unit", "kernels", *SHARE_KEYS):
        table.add_column(col, justify="left" if col == "source" else "right")
    for r in rows:
        table.add_row(str(r["source"])[:20], str(r["unit"]), str(r["kernels"]),
                      *(f"{r[f'family_{k}']:.0%}" for k in SHARE_KEYS))
    table.add_row("all", "", str(sum(r["kernels"] for r in rows)), *(f"{total[k]:.0%}" for k in SHARE_KEYS))
    console.print(table)


def cmd_bench(args: argparse.Namespace) -> int:
    from pipeline.filters.planted import bench_planted

    report = bench_planted(per_family=args.per_family, size=args.size, noise=args.noise, clusters=args.clusters,
                           seed=args.seed, gaussian=args.gaussian, log=console.print)
    if args.out:
        import json

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"wrote {args.out}")
    return 0


def cmd_masterkey(args: argparse.Namespace) -> int:
    import torch

    from pipeline.filters.bank import write_filter_bank
    from pipeline.filters.extract import KernelSet
    from pipeline.filters.grid import draw_grid
    from pipeline.filters.masterkey import MasterKeyOptions, find_master_keys
    from pipeline.filters.source import load_model_source
    from pipeline.training.evaluate import accuracy, validation_batches

    loaded = load_model_source(args.src, args.file)
    loaded.model.to("cuda" if torch.cuda.is_available() else "cpu")  # hundreds of evaluations: use a GPU if any
    data = args.config or loaded.run_dir
    if data is None:
        from datamodules.errors import UserError

        raise UserError(f"{args.src} is not a run dir, so its validation data is unknown; pass --config CELL.yaml")
    batches = validation_batches(data, args.max_val_samples)
    options = MasterKeyOptions(candidates=args.candidates, k=args.k, budget=args.budget, seed=args.seed)
    result = find_master_keys(loaded.model, loaded.arch, lambda m: accuracy(m, batches), options,
                              log=console.print)
    out = Path(args.out) if args.out else DEFAULT_OUT / ("masterkey_" + _slug(loaded.label))
    bank = write_filter_bank(out / "master_key_filters.txt", result.filters, header=[
        f"{len(result.filters)} master-key filters of {loaded.arch} ({args.src}) found by `mkf filters masterkey`",
        f"accuracy without fine-tuning: original {result.original_accuracy:.4f}, {options.candidates} candidates "
        f"{result.candidate_accuracy:.4f}, these filters {result.final_accuracy:.4f} "
        f"on {sum(len(b[1]) for b in batches)} validation images"])
    import json

    (out / "masterkey.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    draw_grid([KernelSet("master keys", loaded.label, ["bank"], [result.filters])], out / "master_key_filters.png",
              per_unit=len(result.filters))
    console.print(f"{len(result.filters)} filters, accuracy {result.final_accuracy:.4f} "
                  f"(original {result.original_accuracy:.4f}); wrote {bank}")
    return 0


def _src_args(s: argparse.ArgumentParser, many: bool) -> None:
    s.add_argument("src", nargs="+" if many else None,
                   help="run dir | .ckpt | .safetensors | timm model name | .onnx | kernels .npz | filter bank .txt")
    s.add_argument("--file", help="local pretrained weights for a timm model name (never downloads)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `mkf filters extract|grid|cluster|masterkey` on the top-level parser."""
    filters = sub.add_parser("filters", help="depthwise filters: extract, grid, cluster, master keys").add_subparsers(
        dest="filters_command", required=True, metavar="SUBCOMMAND")

    s = filters.add_parser("extract", help="every depthwise kernel into one .npz plus a JSON summary")
    _src_args(s, many=False)
    s.add_argument("--out", help=f"output folder (default {DEFAULT_OUT}/<source>)")
    s.set_defaults(func=cmd_extract)

    s = filters.add_parser("grid", help="Figure-1-style grid of kernels from the first, middle and last units")
    _src_args(s, many=True)
    s.add_argument("--out", default="filters_grid.png", help="PNG path; a PDF is written next to it")
    s.add_argument("--per-unit", type=int, default=8, help="kernels drawn per unit (default 8)")
    s.add_argument("--seed", type=int, default=0, help="which channels are drawn (default 0)")
    s.add_argument("--dpi", type=int, default=150)
    s.set_defaults(func=cmd_grid)

    s = filters.add_parser("cluster", help="autoencoder + k-means clusters of the kernels, families by BIC",
                           description="Unveiling-the-Unseen analysis; writes clusters.json, layer_shares.csv, "
                                       "assignments.csv, centroids.png and layer_shares.png.")
    _src_args(s, many=True)
    s.add_argument("--out", help=f"output folder (default {DEFAULT_OUT}/cluster_<sources>)")
    s.add_argument("--clusters", type=int, default=8, help="k of k-means (default 8)")
    s.add_argument("--latent", type=int, default=8, help="autoencoder code size; 0 = no autoencoder (default 8)")
    s.add_argument("--epochs", type=int, default=300, help="autoencoder epochs (default 300)")
    s.add_argument("--threshold", type=float, default=0.8,
                   help="correlation with the cluster centroid for a kernel to count as classified (default 0.8)")
    s.add_argument("--sign", choices=["keep", "canonical"], default="keep",
                   help="keep kernel signs (on/off apart) or flip so the largest entry is positive (default keep)")
    s.add_argument("--min-r2", type=float, default=0.5,
                   help="a kernel or centroid whose chosen family explains less of its variance is 'other' "
                        "(default 0.5)")
    s.add_argument("--criterion", choices=["bic", "aic"], default="bic",
                   help="information criterion that picks each kernel's family (default bic)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_cluster)

    s = filters.add_parser("bench", help="name planted kernels of known family: accuracy, ARI, kernels/s",
                           description="Planted deltas, Gaussians, on/off DoGs, first derivatives and Laplacians "
                                       "with noise: per-family accuracy of the BIC naming, the share of Gaussians "
                                       "and deltas named DoG, and the adjusted Rand index of the old (best-fit) "
                                       "and new (BIC) naming against the truth.")
    s.add_argument("--per-family", type=int, default=100, help="kernels per planted family (default 100)")
    s.add_argument("--size", type=int, default=7, help="kernel size (default 7)")
    s.add_argument("--noise", type=float, default=0.015, help="noise sd as a share of the peak (default 0.015)")
    s.add_argument("--gaussian", choices=["discrete", "sampled"], default="discrete",
                   help="planted shapes from the discrete-analogue models or sampled continuous Gaussians")
    s.add_argument("--clusters", type=int, default=6, help="k of k-means for the clustering ARI (default 6)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", help="also write the report as JSON here")
    s.set_defaults(func=cmd_bench)

    s = filters.add_parser("masterkey", help="the Quest procedure: K filters that replace every kernel as a*f+b",
                           description="1-D-latent autoencoder, candidates along the latent, greedy elimination "
                                       "down to --k within --budget; accuracy measured without fine-tuning.")
    _src_args(s, many=False)
    s.add_argument("--config", help="cell YAML naming the validation data (default: the run dir's config.yaml)")
    s.add_argument("--candidates", type=int, default=16, help="filters sampled along the latent (default 16)")
    s.add_argument("--k", type=int, default=8, help="filters to keep (default 8)")
    s.add_argument("--budget", type=float, default=0.05,
                   help="largest accuracy drop allowed below the all-candidate accuracy (default 0.05)")
    s.add_argument("--max-val-samples", type=int, default=512, help="validation images evaluated (default 512)")
    s.add_argument("--out", help=f"output folder (default {DEFAULT_OUT}/masterkey_<source>)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_masterkey)
