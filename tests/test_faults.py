"""Fault injection on the test cluster (issue 23, "Deliver 3"): for each transition of a cell's lifecycle, the
fault a real cluster throws, injected on real cells (4-rank gloo cells included), then the invariants: every cell
finished and trained to completion exactly once, weights bit-identical to an uninterrupted run, no preemption
counted as a failure, no dependant before its base, no unbounded wait. See tests/faults/ (black-box: the project
is driven through its CLI, Slurm's commands, files and signals; nothing imports ``launch``).

All rows run at once on one test cluster (2 nodes x 6 CPUs), sharing this machine's cores; each is a test of its
own here, and the fault x outcome table is printed at the end of the session and written to $MKF_FAULT_TABLE
(JSON) when set. A row stops at its first failure; MKF_FAULT_ALL=1 carries on past its own checks to the shared
invariants (slower; the table lists the later failures too). Scenario folders are kept when MKF_FAULT_KEEP=1.

    PYTHONPATH=<code under test> OMP_NUM_THREADS=1 python -m pytest -q -s tests/test_faults.py
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import Cluster, Outcome, markdown_table, run_rows
from tests.faults.rows import ROWS

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fashion_root")]
ROW_KEYS = [row.key for row in ROWS]


class _TablePrinter:
    """Prints the table in pytest's terminal summary (after every test, whatever the capture mode)."""

    def __init__(self, table: str) -> None:
        self.table = table

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.write_sep("=", "fault x outcome (tests/test_faults.py)")
        terminalreporter.write_line(self.table)


def _needs_cluster() -> None:
    missing = [b for b in ("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "scancel")
               if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if os.geteuid() != 0 or missing:
        pytest.skip(f"needs root and Debian's slurm-wlm + munge (missing: {missing or 'root'}); `make test` "
                    "installs them when run as root")


@pytest.fixture(scope="module")
def fault_table(request: pytest.FixtureRequest) -> Iterator[dict[str, Outcome]]:
    """Runs the selected rows (all at once) and yields their outcomes by row key."""
    selected = {item.callspec.params["row"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec") and "row" in item.callspec.params}
    rows = [row for row in ROWS if row.key in selected]
    if any(row.cluster for row in rows):
        _needs_cluster()
    root = Path(tempfile.mkdtemp(prefix="mkf-faults-"))
    root.chmod(0o755)
    cluster = Cluster.start() if any(row.cluster for row in rows) else None
    start = time.monotonic()
    try:
        outcomes = run_rows(rows, root, cluster)
    finally:
        if cluster is not None:
            cluster.stop()
    total = time.monotonic() - start
    table = markdown_table(outcomes, total)
    print(f"\n{table}\n", flush=True)
    request.config.pluginmanager.register(_TablePrinter(table), "mkf-fault-table")
    out = os.environ.get("MKF_FAULT_TABLE")
    if out:
        Path(out).write_text(json.dumps({"seconds": round(total, 1), "rows": [o.to_json() for o in outcomes]},
                                        indent=2) + "\n")
    yield {o.key: o for o in outcomes}
    if os.environ.get("MKF_FAULT_KEEP") != "1":
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.timeout(1500)  # the first row's test also runs every selected row (at once): ~10 minutes here
@pytest.mark.parametrize("row", ROW_KEYS)
def test_fault(row: str, fault_table: dict[str, Outcome]) -> None:
    outcome = fault_table[row]
    assert outcome.result == "PASS", (f"{outcome.fault} ({outcome.transition}): {outcome.invariant}: "
                                      f"{outcome.reason} [scenario {outcome.folder}]")
