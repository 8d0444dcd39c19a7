"""A sweep's report: its tables (``results.csv``, ``summary.csv``) and the figure of its kind, in its folder.

Kept apart from :mod:`pipeline.results.tables` so that the tables never import the figures (matplotlib) and the
figures can use the tables' statistics: imports run tables <- figures <- report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datamodules.errors import UserError
from pipeline.results.figures import render
from pipeline.results.tables import SUMMARY_COLUMNS, collect, read_manifest, summarize, write_csv


def write_report(sweep_dir: str | Path, partial: bool = False, kind: str | None = None
                 ) -> tuple[list[dict[str, Any]], list[Path]]:
    """results.csv, summary.csv and the figure of the sweep's kind in ``sweep_dir``; returns rows and files.

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
    files = [write_csv(rows, root / "results.csv"), write_csv(summary, root / "summary.csv", SUMMARY_COLUMNS)]
    if summary:
        files += render(kind or manifest.get("kind") or "depth_curve", rows, summary, root,
                        manifest.get("report") or {}, title=manifest.get("name") or root.name)
    return rows, files
