"""A sweep's report: its tables (``results.csv``, ``summary.csv``) and the figure of its kind, in its folder.

Kept apart from :mod:`pipeline.results.tables` so that the tables never import the figures (matplotlib) and the
figures can use the tables' statistics: imports run tables <- figures <- report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datamodules.errors import UserError
from pipeline.results.audit import AuditReport, audit, failing_groups
from pipeline.results.figures import render
from pipeline.results.tables import (
    GROUP,
    SUMMARY_COLUMNS,
    collect,
    indistinguishable,
    mark_summary,
    marked_lines,
    read_manifest,
    summarize,
    write_csv,
)


def write_report(sweep_dir: str | Path, partial: bool = False, kind: str | None = None,
                 audit_report: AuditReport | None = None) -> tuple[list[dict[str, Any]], list[Path]]:
    """results.csv, summary.csv, summary.md and the figure of the sweep's kind in ``sweep_dir``; returns rows and files.

    Groups whose variants agree within the validation noise while their transferred units are silent
    (:func:`pipeline.results.tables.indistinguishable`) get the note "variants indistinguishable: the transferred
    units are silent" in summary.csv's ``note`` column, a line in summary.md and under the figure.

    Every point is checked by the protocol audit (:mod:`pipeline.results.audit`; ``audit_report`` when the caller
    ran it already): a point any of whose cells, or their reference, failed an invariant gets ``audit`` = the
    invariants it failed in results.csv and summary.csv, a ✗ on the figure and a line under it.

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
    metric, metric_notes = choose_metric(rows)
    summary = summarize(rows, metric)
    if not summary and not partial:
        raise UserError(f"{root} has no finished transfer cell with its reference base yet; run the sweep first")
    marked = indistinguishable(rows, summary) if metric == "relative_top1" else []
    notes = metric_notes + marked_lines(marked)
    mark_summary(summary, marked)
    if manifest:
        notes = audit_notes(audit_report or audit(root), rows, summary) + notes
    files = [write_csv(rows, root / "results.csv"), write_csv(summary, root / "summary.csv", SUMMARY_COLUMNS),
             write_summary_md(summary, notes, root / "summary.md", manifest.get("name") or root.name)]
    if summary:
        files += render(kind or manifest.get("kind") or "depth_curve", rows, summary, root,
                        manifest.get("report") or {}, title=manifest.get("name") or root.name, notes=notes,
                        metric=metric)
    return rows, files


def choose_metric(rows: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """What the summary and figure show: relative top-1, or -- when no transfer cell has one because every
    reference scored top-1 0 (a smoke run at chance: 8 validation images of 500 classes) -- absolute top-1, said
    under the figure. Cells whose reference is at 0 are named either way: their relative top-1 is undefined."""
    transfers = [r for r in rows if r["stage"] == "transfer"]
    at_zero = [r for r in transfers if r.get("reference_top1") == 0]
    if transfers and at_zero and not any(r.get("relative_top1") is not None for r in transfers):
        return "top1", ["relative top-1 is undefined: every reference base scored top-1 0, so this report shows "
                        "absolute top-1"]
    if at_zero:
        return "relative_top1", [f"{len(at_zero)} cells left out: their reference base scored top-1 0, so their "
                                 "relative top-1 is undefined"]
    return "relative_top1", []


def audit_notes(report: AuditReport, rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> list[str]:
    """Mark rows and summary points that the audit failed; the line the figure and summary.md carry."""
    failed = report.failed_cells()
    for r in rows:
        bad = failed.get(str(r["cell_id"]), []) + [i for i in failed.get(str(r.get("reference_id")), [])
                                                  if r.get("stage") == "transfer"]
        r["audit"] = ", ".join(dict.fromkeys(bad))
    groups = failing_groups(report, rows, GROUP)
    for s in summary:
        s["audit"] = ", ".join(groups.get(tuple(s.get(k) for k in GROUP), []))
    points = sum(bool(s["audit"]) for s in summary)
    if report.passed:
        return []
    failed_invariants = sorted({f.invariant for f in report.findings if not f.ok})
    return [f"✗ protocol audit failed ({', '.join(failed_invariants)}): {points} of {len(summary)} points marked; "
            "`mkf sweep audit` names each failure"]


def ci_text(s: dict[str, Any]) -> str:
    """The 95% CI cell of a summary row: none from one seed (a CI of [x, x] claims a certainty one run lacks)."""
    if s.get("n", 0) < 2:
        return "n/a (n = 1)"
    return f"[{s['ci95_low']:.4f}, {s['ci95_high']:.4f}]"


def write_summary_md(summary: list[dict[str, Any]], notes: list[str], path: Path, title: str) -> Path:
    """summary.csv as a Markdown table, the report's warnings first (what a reader must see before the numbers)."""
    lines = [f"# {title}: relative top-1 over seeds", ""]
    lines += [f"**{n}**" for n in notes] + ([""] if notes else [])
    lines += ["| arch | unit kind | source -> target | variant | depth | n | mean | 95% CI | note | audit |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    if summary and max(s["n"] for s in summary) < 2:
        lines.insert(2, "One seed per point: no confidence interval can be given (n = 1).\n")
    for s in summary:
        arch = s["arch"] + (f" <- {s['source_arch']}" if s["source_arch"] not in (None, s["arch"]) else "")
        lines.append(f"| {arch} | {s['unit_kind'] or ''} | {s['source']} -> {s['target']} | {s['variant']} | "
                     f"{'' if s['depth'] is None else s['depth']} | {s['n']} | {s['mean']:.4f} | "
                     f"{ci_text(s)} | {s.get('note') or ''} | "
                     f"{'✗ ' + s['audit'] if s.get('audit') else ''} |")
    from pipeline.results.spent import spent_markdown

    lines += spent_markdown(path.parent)  # what the finished cells recorded they cost, per stage
    path.write_text("\n".join(lines) + "\n")
    return path
