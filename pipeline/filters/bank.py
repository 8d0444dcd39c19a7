"""Filter banks in the published master-key text format: ``Filter k:`` lines, each followed by its rows.

The format is the one of the 8 filters published with *The Quest for Universal Master Key Filters*
(``data/master_key_8_filters.txt``, shipped as package data), so `mkf filters masterkey` writes what
``model.init.filters`` reads, and the published file works as is.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from datamodules.errors import UserError

PUBLISHED = Path(__file__).parent / "data" / "master_key_8_filters.txt"
_HEADER = re.compile(r"^Filter\s+(\d+)\s*:\s*$")


def resolve_bank_path(filters: str) -> Path:
    """``published`` -> the shipped 8 filters; anything else is a path that must exist."""
    if filters == "published":
        return PUBLISHED
    path = Path(filters)
    if not path.is_file():
        raise UserError(f"filter bank {path} does not exist; use 'published' or a file from `mkf filters masterkey`")
    return path


def read_filter_bank(filters: str | Path) -> np.ndarray:
    """The bank as an array (K, h, w); a malformed file is a one-line error naming the line."""
    path = resolve_bank_path(str(filters))
    bank: list[list[list[float]]] = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if _HEADER.match(line):
            bank.append([])
            continue
        if not bank:
            raise UserError(f"{path}:{number}: numbers before the first 'Filter k:' line; not a filter bank file")
        try:
            bank[-1].append([float(v) for v in line.split()])
        except ValueError:
            raise UserError(f"{path}:{number}: {line[:40]!r} is not a row of numbers; fix the filter bank file") from None
    if not bank:
        raise UserError(f"{path} holds no 'Filter k:' blocks; not a filter bank file")
    shapes = {(len(rows), *{len(r) for r in rows}) for rows in bank}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise UserError(f"{path}: filters have ragged or differing shapes {sorted(shapes)}; every filter must be h x w")
    return np.asarray(bank, dtype=np.float64)


def write_filter_bank(path: str | Path, filters: np.ndarray, header: list[str] | None = None) -> Path:
    """Write ``filters`` (K, h, w) in the published format, with ``#`` header lines saying where they came from."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {h}" for h in header or []]
    h, w = filters.shape[1:]
    lines.append(f"# Format: a \"Filter k:\" line, then {h} rows of {w} numbers; blank line between filters.")
    for k, f in enumerate(filters, 1):
        lines.append(f"Filter {k}:")
        lines.extend(" ".join(f"{v:.6f}" for v in row) for row in f)
        lines.append("")
    path.write_text("\n".join(lines))
    return path
