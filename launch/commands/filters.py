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
                             criterion=args.criterion, centroid_criterion=args.centroid_criterion,
                             merge=not args.no_merge)
    result = cluster_kernels(sets, options)
    out = Path(args.out) if args.out else DEFAULT_OUT / ("cluster_" + _slug("+".join(s.source for s in sets)))
    paths = write_cluster_outputs(result, out)
    summary = result.summary()
    console.print(f"{summary['kernels']} kernels, {len(result.names)} clusters, classified "
                  f"{summary['classified']:.1%} (correlation >= {options.threshold})")
    console.print(f"noise: {result.noise:.1%} of the peak (median residual of the {result.noise_kernels} "
                  f"kernels a family explains)")
    if result.separability is not None:
        for line in result.separability.lines():
            console.print(line, highlight=False)
    console.print(f"clusters: share, centroid named by {options.centroid_criterion} and its R2, its kernels' "
                  "own families", highlight=False)
    for c in summary["clusters"]:
        members = ", ".join(f"{SHORT.get(k, k)} {v:.0%}" for k, v in list(c["members"].items())[:3])
        console.print(f"  {c['cluster']:>2} {c['name']:<20} {c['share']:6.1%} R2 {c['fit']['r2']:.3f}  {members}",
                      highlight=False)
    _print_family_shares(result, options)
    console.print(f"family fits: {summary['family_kernels_per_second']:.0f} kernels/s")
    console.print("wrote " + ", ".join(str(p) for p in paths))
    return 0


SHORT = {"delta": "delta", "gauss": "gauss", "dog_on": "dog+", "dog_off": "dog-", "laplacian": "LoG", "d1": "d1",
         "d2": "d2", "other": "other", "centre_surround": "c-s", "blob": "blob", "dog_like": "DoG-like"}


def family_table(rows: list[dict], total: dict[str, float], groups: dict[str, str],
                 merged: dict[str, list[str]] | None = None, criterion: str = "bic", min_r2: float = 0.5) -> object:
    """Per unit, each reported family's share of its kernels (merged where the naming does not separate them):
    a Rich table that fits an 80-column terminal (short headers, sources by number when there are several) and
    its legend under it, wrapped at the terminal's width. ``rows``: ``ClusterResult.layer_shares()``; ``total``:
    the summary's ``reported_shares``; ``groups`` / ``merged``: the separability's."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    names = list(dict.fromkeys(groups[n] for n in groups)) + ["dog_like"]
    sources = list(dict.fromkeys(str(r["source"]) for r in rows))
    many = len(sources) > 1
    legend = ["src " + ", ".join(f"{i} = {s}" for i, s in enumerate(sources, 1)) if many
              else f"source {sources[0] if sources else '-'}", f"other: R2 < {min_r2}",
              "DoG-like = centre-surround + d1 + d2"]
    legend += [f"{SHORT.get(g, g)} = {' + '.join(SHORT.get(f, f) for f in fams)} (not separated here)"
               for g, fams in (merged or {}).items()]
    table = Table(title=f"family of each kernel by {criterion.upper()}", title_justify="left", box=box.SIMPLE_HEAD,
                  show_edge=False, padding=(0, 1), pad_edge=False, collapse_padding=True)
    for col in (["src"] if many else []) + ["unit", "n"] + [SHORT.get(n, n) for n in names]:
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(*([str(sources.index(str(r["source"])) + 1)] if many else []), str(r["unit"]),
                      str(r["kernels"]), *(f"{r[f'reported_{k}']:.0%}" for k in names))
    table.add_row(*([""] if many else []), "all", str(sum(r["kernels"] for r in rows)),
                  *(f"{total[k]:.0%}" for k in names))
    return Group(table, Text("; ".join(legend) + "; per family: layer_shares.csv"))


def _print_family_shares(result: object, options: object) -> None:
    separability = result.separability  # type: ignore[attr-defined]
    console.print(family_table(result.layer_shares(), result.summary()["reported_shares"],  # type: ignore[attr-defined]
                               result.groups,  # type: ignore[attr-defined]
                               separability.merged if separability is not None else None,
                               options.criterion, options.min_r2),  # type: ignore[attr-defined]
                  highlight=False)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.generator == "planted":
        from pipeline.filters.planted import bench_planted

        report = bench_planted(per_family=args.per_family, size=args.size or 7,
                               noise=0.015 if args.noise is None else args.noise,
                               clusters=args.clusters, seed=args.seed, gaussian=args.gaussian, log=console.print)
    else:
        from pipeline.filters.separability import bench_analytic

        report = bench_analytic(args.like, args.file, per_family=args.per_family, size=args.size, noise=args.noise,
                                seed=args.seed, log=lambda line: console.print(line, highlight=False))
    if args.out:
        import json

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"wrote {args.out}")
    return 0


def cmd_masterkey(args: argparse.Namespace) -> int:
    import torch

    from pipeline.filters.bank import write_filter_bank
    from pipeline.filters.grid import draw_grid
    from pipeline.filters.kernel_set import KernelSet
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
    s.add_argument("--centroid-criterion", choices=["effect", "bic", "aic"], default="effect",
                   help="what names a cluster's centroid: effect size (a richer family must explain 0.2 %% more "
                        "of its variance; default), or a criterion as for kernels")
    s.add_argument("--no-merge", action="store_true",
                   help="report every family apart, even those the naming does not separate at this kernel size "
                        "and noise (measured on planted kernels each run)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_cluster)

    s = filters.add_parser("bench", help="name planted kernels of known family: confusion matrix, merges",
                           description="Analytic kernels (continuous profiles averaged over each pixel, sub-pixel "
                                       "centres, wide scales, random gain; pipeline/filters/analytic.py) of every "
                                       "family at a kernel size and noise: per family its recall and what it is "
                                       "taken for, and the families reported merged there. --like SRC takes the "
                                       "size and noise from a model's own kernels. --generator planted: the older "
                                       "planted set (accuracy, ARI of the old and new naming, kernels/s).")
    s.add_argument("--like", metavar="SRC", help="take the kernel size and noise from SRC's depthwise kernels "
                                                 "(any SRC of mkf filters)")
    s.add_argument("--file", help="local pretrained weights for a timm model name given to --like")
    s.add_argument("--generator", choices=["analytic", "planted"], default="analytic",
                   help="analytic (default) or the older planted set")
    s.add_argument("--per-family", type=int, default=100, help="kernels per planted family (default 100)")
    s.add_argument("--size", type=int, default=None, help="kernel size (default 7, or SRC's with --like)")
    s.add_argument("--noise", type=float, default=None,
                   help="noise sd as a share of the peak (default: SRC's with --like, else 0.19 for analytic, "
                        "as measured on a trained 7x7 DS-CNN, docs/filters.md; 0.015 for planted)")
    s.add_argument("--gaussian", choices=["discrete", "sampled"], default="discrete",
                   help="planted generator only: shapes from the discrete-analogue models or sampled Gaussians")
    s.add_argument("--clusters", type=int, default=6, help="planted generator only: k of k-means (default 6)")
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
