"""A sweep's report: its tables (``results.csv``, ``summary.csv``) and the figure of its kind, in its folder.

Kept apart from :mod:`pipeline.results.tables` so that the tables never import the figures (matplotlib) and the
figures can use the tables' statistics: imports run tables <- figures <- report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datamodules.errors import UserError
from pipeline.results.figures import render
from pipeline.results.tables import (
    SUMMARY_COLUMNS,
    collect,
    indistinguishable,
    mark_summary,
    marked_lines,
    read_manifest,
    summarize,
    write_csv,
)


def write_report(sweep_dir: str | Path, partial: bool = False, kind: str | None = None
                 ) -> tuple[list[dict[str, Any]], list[Path]]:
    """results.csv, summary.csv, summary.md and the figure of the sweep's kind in ``sweep_dir``; returns rows and files.

    Groups whose variants agree within the validation noise while their transferred units are silent
    (:func:`pipeline.results.tables.indistinguishable`) get the note "variants indistinguishable: the transferred
    units are silent" in summary.csv's ``note`` column, a line in summary.md and under the figure.

    Without ``partial`` every planned cell must be finished (a report of half a sweep is a mistake to say out
    loud); with it, whatever has finished is drawn, so a dashboard fills in while the sweep runs.
    """
    root = Path(sweep_dir)
    manifest = read_manifest(root)
    rows = collect(root)
    planned = len(manifest.get("cells") or [])
    if not partial and planned and len(rows) < planned:
        raise UserError(f"{root}: {len(rows)} of {planned} cells have finished; run the sweep to the end, or "
                        "pass --partial to report what has finished")
    if not rows and not partial:
        raise UserError(f"{root} has no finished cells yet; run `mkf sweep run` first")
    summary = summarize(rows)
    if not summary and not partial:
        raise UserError(f"{root} has no finished transfer cell with its reference base yet; run the sweep first")
    marked = indistinguishable(rows, summary)
    notes = marked_lines(marked)
    mark_summary(summary, marked)
    files = [write_csv(rows, root / "results.csv"), write_csv(summary, root / "summary.csv", SUMMARY_COLUMNS),
             write_summary_md(summary, notes, root / "summary.md", manifest.get("name") or root.name)]
    if summary:
        files += render(kind or manifest.get("kind") or "depth_curve", rows, summary, root,
                        manifest.get("report") or {}, title=manifest.get("name") or root.name, notes=notes)
    return rows, files


def write_summary_md(summary: list[dict[str, Any]], notes: list[str], path: Path, title: str) -> Path:
    """summary.csv as a Markdown table, the report's warnings first (what a reader must see before the numbers)."""
    lines = [f"# {title}: relative top-1 over seeds", ""]
    lines += [f"**{n}**" for n in notes] + ([""] if notes else [])
    lines += ["| arch | unit kind | source -> target | variant | depth | n | mean | 95% CI | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        arch = s["arch"] + (f" <- {s['source_arch']}" if s["source_arch"] not in (None, s["arch"]) else "")
        lines.append(f"| {arch} | {s['unit_kind'] or ''} | {s['source']} -> {s['target']} | {s['variant']} | "
                     f"{'' if s['depth'] is None else s['depth']} | {s['n']} | {s['mean']:.4f} | "
                     f"[{s['ci95_low']:.4f}, {s['ci95_high']:.4f}] | {s.get('note') or ''} |")
    path.write_text("\n".join(lines) + "\n")
    return path
