"""`mkf sweep audit`: the protocol audit of every finished cell (pipeline.results.audit), as tables.

One table per sweep, one row per invariant (cells or comparisons checked, passed, failed, the first failure
named), the failures themselves below it (a few per invariant), and ``audit.json`` in the sweep's folder. Exit
status 1 when anything failed, so a script or a CI job stops there. Torch-free: it reads run folders only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from launch.core.console import console

if TYPE_CHECKING:
    from pipeline.results.audit import AuditReport

SHOWN_PER_INVARIANT = 5


def audit_table(title: str, rows: list[dict[str, object]]) -> Table:
    table = Table(title=title, show_lines=False)
    for col in ("invariant", "checked", "passed", "failed", "first failure"):
        table.add_column(col, justify="right" if col in ("checked", "passed", "failed") else "left",
                         overflow="fold")
    for r in rows:
        failed = int(r["failed"])  # type: ignore[call-overload]
        table.add_row(str(r["invariant"]), str(r["checked"]), str(r["passed"]),
                      f"[red]{failed}[/red]" if failed else "0", str(r["first_failure"]) or "-")
    return table


def audit_sweep(sweep_dir: str | Path, verbose: bool = True, report: AuditReport | None = None) -> bool:
    """Audit one sweep folder (or print ``report``, an audit of it already run), print its table and failures,
    write audit.json; True when everything passed."""
    from pipeline.results.audit import INVARIANTS, audit

    root = Path(sweep_dir)
    report = report or audit(root)
    data = report.to_json()
    tmp = root / ".audit.json.tmp"
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(root / "audit.json")
    unfinished = f", {report.unfinished} cells not finished (not audited)" if report.unfinished else ""
    console.print(audit_table(f"protocol audit: {root}{unfinished}", report.rows()))
    if verbose:
        for invariant in INVARIANTS:
            bad = [f for f in report.findings if f.invariant == invariant and not f.ok]
            for f in bad[:SHOWN_PER_INVARIANT]:
                console.print(f"  {invariant}: {f.subject}: {f.detail}", markup=False, highlight=False)
            if len(bad) > SHOWN_PER_INVARIANT:
                console.print(f"  {invariant}: ... and {len(bad) - SHOWN_PER_INVARIANT} more (audit.json)",
                              markup=False, highlight=False)
    console.print(f"audit {'passed' if report.passed else 'FAILED'}: {root / 'audit.json'}", markup=False,
                  highlight=False)
    return report.passed


def audit_targets(targets: list[str] | str) -> int:
    """`mkf sweep audit SWEEP.yaml|DIR...`: every sweep of the targets; 0 when all passed, else 1."""
    from launch.planning.catalog import parts, resolve_targets

    ok = True
    for part in parts(resolve_targets(targets)):
        ok = audit_sweep(part.output_dir) and ok
    return 0 if ok else 1
