"""`mkf sweep status`'s allocation line: elapsed x GPUs of the jobs a sweep's cells ran in, from sacct.

sacct needs Slurm's accounting database (slurmdbd), which the test cluster here does not run
(accounting_storage/none): sacct itself is what cannot exist here, so a stand-in on PATH answers in sacct's documented
``-P`` format (and refuses as sacct does without accounting storage); everything around it is the real code."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from launch.views.allocation import allocation, parse_sacct

# sacct -n -P -X -o JobID,ElapsedRaw,AllocTRES,State (a 4-GPU array task requeued once, a 1-GPU job, a CPU job)
SACCT = """\
812_0|3600|billing=32,cpu=32,gres/gpu=4,mem=256G,node=1|COMPLETED
812_1|1800|billing=32,cpu=32,gres/gpu=4,mem=256G,node=1|PREEMPTED
813|7200|billing=8,cpu=8,gres/gpu=1,mem=64G,node=1|COMPLETED
900|900|billing=2,cpu=2,mem=4G,node=1|FAILED
"""


def test_elapsed_times_gpus_is_summed_per_allocation() -> None:
    got = parse_sacct(SACCT, ["812_0", "812_1", "813", "900", "999"])
    assert got.jobs == 4
    assert got.gpu_hours == pytest.approx(1 * 4 + 0.5 * 4 + 2 * 1)
    assert got.cpu_hours == pytest.approx(0.25 * 2)  # no GPU: its CPUs
    assert got.missing == ["999"]
    assert "8.00 GPU-hours" in got.line() and "1 job ids unknown" in got.line()


def test_allocation_asks_sacct_once_for_every_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "calls"
    fake = tmp_path / "sacct"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\ncat <<'END'\n{SACCT}END\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    got = allocation(["813", "812_0", "812_1", "900", "813"])
    calls = log.read_text().splitlines()
    assert len(calls) == 1 and "-j 812_0,812_1,813,900" in calls[0] and "-X" in calls[0]
    assert got.gpu_hours == pytest.approx(8.0) and not got.missing


def test_without_accounting_storage_the_line_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "sacct"
    fake.write_text("#!/bin/sh\necho 'sacct: error: Slurm accounting storage is disabled' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    line = allocation(["1"]).line()
    assert "not available" in line and "accounting storage is disabled" in line and "slurmdbd" in line
    assert "no cell recorded a Slurm job" in allocation([]).line()
