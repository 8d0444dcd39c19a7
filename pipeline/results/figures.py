"""A figure per experiment kind, chosen by the sweep's ``kind`` (stored in its manifest).

* ``depth_curve`` (Figures 3 and 4): relative top-1 vs transfer depth n, the mean over seeds with a band
  (95% CI or std), one panel per (arch, unit kind, source -> target). Variants that copy from the target's own
  base (BnB) or from nothing (random-frozen) are drawn in every panel of their target; a depthless variant (an
  init scheme such as ``dog``) is a horizontal line with its band.
* ``retention`` (Figure 5): how much of base accuracy a model keeps when its units come from the other dataset.
  **Retention** of an arch = the relative top-1 of ``report.retention_variant`` (default AnB: frozen units from
  the source) at the deepest depth the sweep transfers (``report.retention_at: deepest``), or averaged over all
  its depths (``mean``); computed per seed, then mean and band over seeds; one point per ResNet size, a line per
  source -> target pair.
* ``matrix`` (cross-domain, cross-architecture): mean relative top-1 in a source x target table per (variant,
  depth, ...): rows/columns are datasets, or archs when the sweep transfers between archs. Written as
  ``matrix.csv`` (long form: n, mean, std, CI), ``matrix.md`` (one Markdown table per panel) and a heatmap on a
  diverging map centred on 1.0 whose range is 1 -+ max(0.05, max |x - 1|), so a colour always means the same
  relative top-1 and a 1% spread of noise stays pale; each cell reads "mean [95% CI]" when there are seeds.

The report's warnings (groups whose variants are indistinguishable because their units are silent, see
:func:`pipeline.results.tables.indistinguishable`) are printed under every kind's figure.

Each kind writes ``figure.png`` and ``figure.pdf``.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from datamodules.errors import UserError
from pipeline.results.tables import t_quantile, write_csv

VARIANT_STYLE = {  # colours/markers follow Yosinski et al.'s figure: source-based dark, target-based light
    "AnB": ("#c0392b", "o"), "AnB+": ("#e67e22", "^"), "BnB": ("#2c3e50", "s"), "BnB+": ("#5dade2", "v"),
    "reverse": ("#27ae60", "D"), "random-frozen": ("#7f8c8d", "x"), "shuffled": ("#8e44ad", "P"),
    "dog": ("#16a085", None), "masterkey": ("#d4ac0d", None), "random_k": ("#a04000", None),
}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(s: dict[str, Any], band: str) -> tuple[float, float]:
    """The band around a point: 95% CI or +-1 std over seeds; none (the mean itself) from fewer than 2 seeds."""
    if s.get("n", 2) < 2:
        return s["mean"], s["mean"]
    if band == "std":
        return s["mean"] - s["std"], s["mean"] + s["std"]
    return s["ci95_low"], s["ci95_high"]


def band_title(points: list[dict[str, Any]], band: str) -> str:
    """What the figure's bands are, and every point's n: 'mean over 3 seeds, band = 95% CI' when all agree, the
    range of n (each point annotated) when they do not, and no band claimed when no point has two seeds."""
    ns = sorted({int(p.get("n", 1)) for p in points})
    what = "95% CI" if band == "ci95" else "±1 std"
    if ns[-1] < 2:
        return "one seed per point: no band (n = 1)"
    if len(ns) == 1:
        return f"mean over n = {ns[0]} seeds, band = {what}"
    return f"mean over n = {ns[0]}-{ns[-1]} seeds (n at each point), band = {what} where n >= 2"


def readable_axis(ax: Any, values: list[float], centre: float | None = 1.0, at_least: float = 0.02) -> None:
    """Plain tick labels (matplotlib's '+1' offset and 1e-4 ticks read wrong on relative top-1) over a range of
    at least ``at_least`` around the data (and the reference line at ``centre``)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if centre is not None:
        finite.append(centre)
    if finite:
        lo, hi = min(finite), max(finite)
        if hi - lo < at_least:
            mid = (hi + lo) / 2
            lo, hi = mid - at_least / 2, mid + at_least / 2
        pad = 0.05 * (hi - lo)
        ax.set_ylim(lo - pad, hi + pad)
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")


def _save(fig: Any, root: Path) -> list[Path]:
    paths = [root / "figure.png", root / "figure.pdf"]
    for path in paths:
        fig.savefig(path, dpi=150)
    _plt().close(fig)
    return paths


# ---- depth curves -------------------------------------------------------------------------------------------
def depth_panels(summary: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], list[dict[str, Any]]]:
    """(arch, unit kind, source, target) -> the summary rows drawn in that panel."""
    panels: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for s in summary:
        if s["source_role"] == "source":
            panels[(s["arch"], s["unit_kind"] or "", s["source"], s["target"])].append(s)
    if not panels:  # only BnB / controls: one panel per (arch, unit kind, target)
        for s in summary:
            if s["unit_kind"]:
                panels.setdefault((s["arch"], s["unit_kind"], s["target"], s["target"]), [])
    if not panels:  # only depthless variants (model.init studies): one panel per (arch, target), each a level
        for s in summary:
            panels.setdefault((s["arch"], "", s["target"], s["target"]), [])
    for s in summary:
        if s["source_role"] == "source":
            continue
        for (arch, kind, _src, target), members in panels.items():
            same_kind = not s["unit_kind"] or s["unit_kind"] == kind
            if s["arch"] == arch and s["target"] == target and same_kind:
                members.append(s)
    return dict(sorted(panels.items()))


def plot_depth_curves(summary: list[dict[str, Any]], root: Path, band: str = "ci95", title: str = "",
                      notes: list[str] | None = None, metric: str = "relative_top1") -> list[Path]:
    plt = _plt()
    panels = depth_panels(summary)
    if not panels:
        raise UserError("no finished transfer cells to draw yet; run the sweep first")
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.5 * rows), squeeze=False, sharey=True)
    varied_n = len({int(s.get("n", 1)) for members in panels.values() for s in members}) > 1
    drawn: list[float] = []
    for ax, ((arch, kind, source, target), members) in zip(axes.flat, panels.items(), strict=False):
        lines: dict[tuple[str, str | None], list[dict[str, Any]]] = defaultdict(list)
        for s in members:
            lines[(s["variant"], s["source_arch"] if s["source_arch"] != arch else None)].append(s)
        for (variant, source_arch), pts in sorted(lines.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
            color, marker = VARIANT_STYLE.get(variant, ("gray", "x"))
            label = variant + (f" (from {source_arch})" if source_arch else "")
            if pts[0]["depth"] is None:  # a depthless variant: a level with its band
                lo, hi = _band(pts[0], band)
                drawn += [lo, hi]
                ax.axhline(pts[0]["mean"], color=color, ls=":", lw=1.5,
                           label=label + (f" (n={pts[0]['n']})" if varied_n else ""))
                if hi > lo:  # one seed: no band to draw
                    ax.axhspan(lo, hi, color=color, alpha=0.12)
                if pts[0].get("audit"):
                    ax.text(0.02, pts[0]["mean"], "✗ audit failed", transform=ax.get_yaxis_transform(),
                            color=AUDIT_COLOR, fontsize=7, va="bottom")
                continue
            pts = sorted(pts, key=lambda s: s["depth"])
            xs = [s["depth"] for s in pts]
            lows, highs = zip(*(_band(s, band) for s in pts), strict=True)
            drawn += [*lows, *highs]
            if varied_n:  # every point's n where it is not one number for the whole figure
                for s in pts:
                    ax.annotate(f"n={s['n']}", (s["depth"], s["mean"]), textcoords="offset points",
                                xytext=(3, 4), fontsize=6, color=color)
            ax.plot(xs, [s["mean"] for s in pts], color=color, marker=marker, lw=1.5, ms=5, label=label,
                    ls="--" if source_arch else "-", mfc="white" if source_arch else color)  # cross-arch: dashed
            if any(hi > lo for lo, hi in zip(lows, highs, strict=True)):  # one seed everywhere: no band
                ax.fill_between(xs, lows, highs, color=color, alpha=0.2, lw=0)
            _mark_failed(ax, [(s["depth"], s["mean"]) for s in pts if s.get("audit")])
        if metric == "relative_top1":
            ax.axhline(1.0, color="gray", ls="--", lw=0.8)
        pair = f"{source}→{target}" if source != target else target
        ax.set_title(f"{arch} ({kind} units), {pair}" if kind else f"{arch}, {pair}", fontsize=9)
        ax.set_xlabel("transferred units n")
        ax.set_ylabel(f"top-1 relative to base {target}" if metric == "relative_top1" else "top-1 (absolute)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if any(s.get("note") for s in members):  # the panel's variants cannot be told apart: say so in it
            ax.text(0.5, 0.02, "variants indistinguishable:\ntransferred units silent", transform=ax.transAxes,
                    ha="center", va="bottom", fontsize=7, color="#c0392b")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    readable_axis(axes.flat[0], drawn, 1.0 if metric == "relative_top1" else None)  # shared y axis
    fig.suptitle(f"{title}: {band_title([s for m in panels.values() for s in m], band)}", fontsize=10)
    fig.tight_layout()
    _footer(fig, notes)
    if notes:
        fig.tight_layout()
    return _save(fig, root)


# ---- retention ----------------------------------------------------------------------------------------------
def retention(rows: list[dict[str, Any]], variant: str = "AnB", at: str = "deepest",
              value: str = "relative_top1") -> list[dict[str, Any]]:
    """Per (arch, unit kind, source -> target): retention per seed, then n, mean, std, 95% CI (see module doc)."""

    per_seed: dict[tuple[Any, ...], dict[int, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    failed: set[tuple[Any, ...]] = set()
    for r in rows:
        if r["variant"] == variant and r.get(value) is not None and r["depth"] is not None:
            key = (r["arch"], r["unit_kind"], r["source"], r["target"])
            per_seed[key][r["seed"]].append((r["depth"], r[value]))
            if r.get("audit"):
                failed.add(key)
    out = []
    for (arch, kind, source, target), seeds in per_seed.items():
        deepest = max(d for pts in seeds.values() for d, _ in pts)
        values = []
        for pts in seeds.values():
            if at == "mean":
                values.append(statistics.fmean(v for _, v in pts))
            else:
                values += [v for d, v in pts if d == deepest]
        if not values:
            continue
        n, mean = len(values), statistics.fmean(values)
        std = statistics.stdev(values) if n > 1 else 0.0
        half = t_quantile(n - 1) * std / math.sqrt(n) if n > 1 else 0.0
        out.append({"arch": arch, "unit_kind": kind, "source": source, "target": target, "variant": variant,
                    "at": at, "depth": deepest if at == "deepest" else None, "n": n, "mean": mean,
                    "std": std if n > 1 else None, "ci95_low": mean - half if n > 1 else None,
                    "ci95_high": mean + half if n > 1 else None,
                    "audit": "failed" if (arch, kind, source, target) in failed else ""})
    return out


def _arch_order(name: str) -> tuple[str, int]:
    digits = "".join(ch for ch in name if ch.isdigit())
    return (name.rstrip("0123456789"), int(digits) if digits else 0)  # resnet18 < resnet34 < ... < resnet152


def plot_retention(rows: list[dict[str, Any]], root: Path, report: dict[str, Any], title: str = "",
                   notes: list[str] | None = None, metric: str = "relative_top1") -> list[Path]:

    band = report.get("band", "ci95")
    table = retention(rows, report.get("retention_variant", "AnB"), report.get("retention_at", "deepest"), metric)
    if not table:
        raise UserError(f"no finished {report.get('retention_variant', 'AnB')} cells to compute retention from yet")
    columns = ("arch", "unit_kind", "source", "target", "variant", "at", "depth", "n", "mean", "std", "ci95_low",
               "ci95_high", "audit")
    csv_path = write_csv(table, root / "retention.csv", columns)
    plt = _plt()
    archs = sorted({t["arch"] for t in table}, key=_arch_order)
    fig, ax = plt.subplots(figsize=(1.2 * len(archs) + 3, 3.6))
    pairs = sorted({(t["source"], t["target"]) for t in table})
    varied_n = len({int(t["n"]) for t in table}) > 1
    for i, (source, target) in enumerate(pairs):
        pts = sorted((t for t in table if (t["source"], t["target"]) == (source, target)),
                     key=lambda t: archs.index(t["arch"]))
        xs = [archs.index(t["arch"]) + (i - (len(pairs) - 1) / 2) * 0.08 for t in pts]
        lows, highs = zip(*(_band(t, band) for t in pts), strict=True)
        means = [t["mean"] for t in pts]
        _mark_failed(ax, [(x, t["mean"]) for x, t in zip(xs, pts, strict=True) if t.get("audit")])
        ax.errorbar(xs, means, yerr=[[m - lo for m, lo in zip(means, lows, strict=True)],
                                     [hi - m for m, hi in zip(means, highs, strict=True)]],
                    marker="o", capsize=3, lw=1.5, label=f"{source}→{target}")
        if varied_n:  # every point's n where it is not one number for the whole figure (the title's)
            for x, t in zip(xs, pts, strict=True):
                ax.annotate(f"n={t['n']}", (x, t["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=6)
    ax.set_xticks(range(len(archs)), archs)
    readable_axis(ax, [v for t in table for v in _band(t, band)], 1.0 if metric == "relative_top1" else None)
    if metric == "relative_top1":
        ax.axhline(1.0, color="gray", ls="--", lw=0.8)
    at = report.get("retention_at", "deepest")
    what = "rel. top-1" if metric == "relative_top1" else "top-1"
    ax.set_ylabel(f"retention ({report.get('retention_variant', 'AnB')} {what}, {at})")
    ax.set_title(f"{title}: retention, {band_title(table, band)}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _footer(fig, notes)
    if notes:
        fig.tight_layout()
    return [csv_path, *_save(fig, root)]


# ---- source x target matrices -------------------------------------------------------------------------------
def matrices(summary: list[dict[str, Any]]) -> tuple[str, dict[tuple[Any, ...], dict[tuple[str, str], dict[str, Any]]]]:
    """('datasets' | 'archs', panel key -> {(row, col): summary row}).

    Archs are the axes when any cell copies from another arch (cross-architecture); datasets otherwise.
    """
    by_arch = any(s["source_arch"] and s["source_arch"] != s["arch"] for s in summary)
    panels: dict[tuple[Any, ...], dict[tuple[str, str], dict[str, Any]]] = defaultdict(dict)
    for s in summary:
        if by_arch:
            key = (s["variant"], s["depth"], s["unit_kind"], f"{s['source']}→{s['target']}")
            panels[key][(s["source_arch"] or s["arch"], s["arch"])] = s
        else:
            key = (s["variant"], s["depth"], s["unit_kind"], s["arch"])
            panels[key][(s["source"], s["target"])] = s
    order = sorted(panels, key=lambda k: (str(k[0]), k[1] or 0, str(k[2]), str(k[3])))
    return ("archs" if by_arch else "datasets"), {k: panels[k] for k in order}


def _panel_title(axes: str, key: tuple[Any, ...]) -> str:
    variant, depth, kind, other = key
    return f"{variant}" + ("" if depth is None else f" n={depth}") + (f" {kind}" if kind else "") + f", {other}"


RELATIVE_HALF_RANGE = 0.05  # the colour scale of relative top-1 spans at least 1 +- this
RELATIVE_CMAP = "RdBu"  # diverging: red below 1.0 (transfer cost accuracy), blue above, white at 1.0


def relative_range(values: list[float], at_least: float = RELATIVE_HALF_RANGE) -> tuple[float, float]:
    """A colour range centred on 1.0: 1 -+ max(at_least, max |x - 1|).

    Scaling colours to the data's own range spends the whole map on whatever spread there is, so a 1% spread of
    noise reads as structure; a fixed centre and a floor on the range keep a colour meaning the same amount of
    relative top-1 in every figure, and the symmetric widening keeps every value on the scale.
    """
    finite = [v for v in values if v is not None and math.isfinite(v)]
    half = max([at_least, *(abs(v - 1.0) for v in finite)])
    return 1.0 - half, 1.0 + half


def cell_label(s: dict[str, Any], show_n: bool = False) -> str:
    """A heatmap cell's annotation: the mean, and with seeds its 95% CI (the band summarize() computed); its n
    with ``show_n`` (when the cells' n differ; otherwise the title says it); a cell that failed the protocol
    audit says so in its own square."""
    failed = "\n✗ audit failed" if s.get("audit") else ""
    n = f"\nn={s.get('n', 1)}" if show_n else ""
    if s.get("n", 1) > 1:
        return f"{s['mean']:.3f}\n[{s['ci95_low']:.3f}, {s['ci95_high']:.3f}]{n}{failed}"
    return f"{s['mean']:.3f}{n}{failed}"


def seeds_title(ns: list[int]) -> str:
    """How many seeds the heatmap's cells average: one number, or 'n in each cell' when they differ."""
    ns = sorted(set(ns))
    if not ns:
        return ""
    if len(ns) > 1:
        return f"n = {ns[0]}-{ns[-1]} seeds (n in each cell)"
    return "one seed per cell (n = 1), no interval" if ns[0] < 2 else f"n = {ns[0]} seeds per cell"


def matrix_figure(panels: dict[tuple[Any, ...], dict[tuple[str, str], dict[str, Any]]], axes_kind: str,
                  title: str = "", notes: list[str] | None = None, metric: str = "relative_top1") -> Any:
    """The heatmaps of :func:`matrices`' panels on one diverging scale centred on 1.0 (see relative_range)."""
    plt = _plt()
    from matplotlib.colors import Normalize

    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols + 1, 4.4 * nrows + 0.4 * len(notes or [])),
                             squeeze=False, layout="constrained")
    means = [s["mean"] for cells in panels.values() for s in cells.values()]
    vmin, vmax = relative_range(means) if metric == "relative_top1" else (0.0, max([1e-6, *means]))
    norm = Normalize(vmin=vmin, vmax=vmax)
    ns = [int(s.get("n", 1)) for cells in panels.values() for s in cells.values()]
    show_n = len(set(ns)) > 1
    image = None
    for ax, (key, cells) in zip(axes.flat, panels.items(), strict=False):
        rows = sorted({r for r, _ in cells})
        cols = sorted({c for _, c in cells})
        grid = [[cells[(r, c)]["mean"] if (r, c) in cells else float("nan") for c in cols] for r in rows]
        image = ax.imshow(grid, norm=norm, cmap=RELATIVE_CMAP, aspect="auto")
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                if (r, c) in cells:
                    value = cells[(r, c)]["mean"]
                    centre = 1.0 if metric == "relative_top1" else (vmin + vmax) / 2
                    ax.text(j, i, cell_label(cells[(r, c)], show_n), ha="center", va="center", fontsize=6,
                            color="white" if abs(value - centre) > 0.6 * (vmax - centre) else "black")
        ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_xlabel(f"target {axes_kind[:-1]}", fontsize=8)
        ax.set_ylabel(f"source {axes_kind[:-1]}", fontsize=8)
        ax.set_title(_panel_title(axes_kind, key), fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if image is not None:
        bar = fig.colorbar(image, ax=list(axes.flat), shrink=0.8,
                     label=f"relative top-1, mean over seeds (centred on 1.0, range ±{vmax - 1.0:.3g}; "
                           f"±{RELATIVE_HALF_RANGE} at least)" if metric == "relative_top1"
                     else "top-1 (absolute), mean over seeds")
        if hasattr(bar.formatter, "set_useOffset"):  # no "+1" offset on a scale centred on 1.0
            bar.formatter.set_useOffset(False)
    fig.suptitle(f"{title}: source × target, {seeds_title(ns)}" + ("; cells: mean [95% CI]" if any(
        n > 1 for n in ns) else ""), fontsize=10)
    _footer(fig, notes)
    return fig


AUDIT_COLOR = "#c0392b"


def _mark_failed(ax: Any, points: list[tuple[float, float]]) -> None:
    """Cross out points whose cells failed the protocol audit (pipeline.results.audit): never drawn as fine."""
    if points:
        xs, ys = zip(*points, strict=True)
        ax.scatter(xs, ys, marker="X", s=90, color=AUDIT_COLOR, zorder=5, label="✗ audit failed")


def _footer(fig: Any, notes: list[str] | None) -> None:
    """The report's warnings (indistinguishable variants) under the figure, where a reader of the PNG sees them."""
    if notes:
        fig.supxlabel("\n".join(notes), fontsize=7, color="#c0392b", wrap=True)


def _md_cell(s: dict[str, Any]) -> str:
    spread = f" ± {s['std']:.3f}" if s.get("n", 1) > 1 else ""  # no spread from one seed
    return f"{s['mean']:.3f}{spread} (n={s['n']})"


def plot_matrix(summary: list[dict[str, Any]], root: Path, title: str = "",
                notes: list[str] | None = None, metric: str = "relative_top1") -> list[Path]:

    axes_kind, panels = matrices(summary)
    long = []
    what = "relative top-1" if metric == "relative_top1" else "top-1 (absolute)"
    md = [f"# {title}: {what} (mean ± std over seeds; rows = source {axes_kind[:-1]}, "
          f"columns = target {axes_kind[:-1]})", "", *(f"**{n}**" for n in notes or []), *([""] if notes else [])]
    for key, cells in panels.items():
        rows = sorted({r for r, _ in cells})
        cols = sorted({c for _, c in cells})
        md += [f"## {_panel_title(axes_kind, key)}", "", "| source \\ target | " + " | ".join(cols) + " |",
               "|---" * (len(cols) + 1) + "|"]
        for r in rows:
            md.append(f"| {r} | " + " | ".join(_md_cell(cells[(r, c)]) if (r, c) in cells else "" for c in cols)
                      + " |")
        md.append("")
        for (r, c), s in cells.items():
            long.append({"panel": _panel_title(axes_kind, key), "variant": key[0], "depth": key[1],
                         "row": r, "col": c, "n": s["n"], "mean": s["mean"], "std": s["std"],
                         "ci95_low": s["ci95_low"], "ci95_high": s["ci95_high"]})
    columns = ("panel", "variant", "depth", "row", "col", "n", "mean", "std", "ci95_low", "ci95_high")
    csv_path = write_csv(long, root / "matrix.csv", columns)
    md_path = root / "matrix.md"
    md_path.write_text("\n".join(md) + "\n")
    fig = matrix_figure(panels, axes_kind, title, notes, metric)
    return [csv_path, md_path, *_save(fig, root)]


KINDS = ("depth_curve", "retention", "matrix")


def render(kind: str, rows: list[dict[str, Any]], summary: list[dict[str, Any]], root: Path,
           report: dict[str, Any], title: str = "", notes: list[str] | None = None,
           metric: str = "relative_top1") -> list[Path]:
    """The figure (and tables) of ``kind``; returns the files written, the PNG figure among them.

    ``notes`` (the report's warnings, e.g. indistinguishable variants) are printed under the figure; ``metric``
    is what the summary holds: relative top-1, or absolute top-1 when no reference scored above 0.
    """
    if kind == "depth_curve":
        return plot_depth_curves(summary, root, report.get("band", "ci95"), title, notes, metric)
    if kind == "retention":
        return plot_retention(rows, root, report, title, notes, metric)
    if kind == "matrix":
        return plot_matrix(summary, root, title, notes, metric)
    raise UserError(f"unknown report kind {kind!r}; use one of {', '.join(KINDS)}")
