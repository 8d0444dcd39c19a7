"""`mkf report`: a sweep's tables and figure (:mod:`pipeline.results.report`), the relative top-1 table on the
terminal, and the figure and tables logged to the sweep's W&B group when a W&B run exists for it.
"""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from launch.console import console
from launch.sweep_view import PLAN_TABLE_MAX


def report(sweep_dir: str | Path, partial: bool = False) -> list[Path]:
    from pipeline.results.report import write_report

    rows, files = write_report(sweep_dir, partial=partial)
    table = Table(title=f"relative top-1 ({sweep_dir})")
    for col in ("arch", "variant", "source->target", "depth", "seed", "top-1", "reference", "relative"):
        table.add_column(col, justify="right" if col not in ("arch", "variant", "source->target") else "left")
    shown = [r for r in rows if r["stage"] == "transfer"] if len(rows) > PLAN_TABLE_MAX else rows
    for r in shown[:PLAN_TABLE_MAX * 4]:
        table.add_row(r["arch"], r["variant"] or "", f"{r['source']}->{r['target']}" if r["stage"] == "transfer"
                      else str(r["target"] or ""), "" if r["depth"] is None else str(r["depth"]), str(r["seed"]),
                      f"{r['top1']:.4f}", f"{r['reference_top1']:.4f}" if r["reference_top1"] else "",
                      f"{r['relative_top1']:.3f}" if r["relative_top1"] is not None else "")
    console.print(table)
    for f in files:
        console.print(f"wrote {f}")
    figure = next((f for f in files if f.suffix == ".png"), None)
    if figure is None:
        console.print("no figure yet: no transfer cell has finished with its reference base")
        return files
    import csv

    from launch.wandb_sync import log_report

    tables = {}
    for path in files:  # summary.csv and the kind's tables (matrix.csv, retention.csv)
        if path.suffix == ".csv" and path.name != "results.csv":
            with path.open(newline="") as f:
                tables[path.stem] = list(csv.DictReader(f))
    logged = log_report(Path(sweep_dir), figure, rows, key="figure", tables=tables)
    if logged:
        console.print(f"logged the figure to W&B ({logged})")
    return files
