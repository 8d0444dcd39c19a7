"""Data preparation and reports as stages on the real test cluster (slurm/testcluster).

One sweep: role A (Fashion-MNIST half A), role B read from wds shards its ``prepare:`` section writes, role C
with a value that fails only at train time (``half: C``). Submitted held, so Slurm's dependency fields can be
read before anything runs, then released: the prepare job runs before base B (and only base B's array waits for
it), base C fails, and the report job (afterany) still draws every other cell. A second submission finds the
write complete and submits no prepare job.

The sweep schema (launch/planning/schema.py) is not yet wired to ``prepare:``, so the write is given to the
executor the way `mkf sweep run` will: ``prepare_jobs`` over the role sections.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from launch.core.plan import materialize_configs, write_plan
from launch.execution.slurm.commands import JobBook, StageBook, query_plain_jobs
from launch.execution.slurm.executor import SlurmExecutor, cancel_sweep
from launch.planning.planner import plan_sweep
from launch.planning.prepare import MARKER, prepare_jobs
from launch.planning.schema import load_sweep
from launch.views.report import report_state
from pipeline.results.run_folder import read_attempts, read_result
from tests.test_slurm import job_state, wait_for, write_profiles, write_sweep

pytestmark = [pytest.mark.usefixtures("slurm_cluster", "fashion_root"), pytest.mark.slow]


def _show(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "--oneliner", job], capture_output=True, text=True).stdout
    return dict(kv.split("=", 1) for kv in out.splitlines()[0].split() if "=" in kv) if out.strip() else {}


@pytest.mark.timeout(900)
def test_prepare_precedes_its_bases_and_the_report_draws_around_a_failed_cell(tmp_path: Path,
                                                                              fashion_root: Path) -> None:
    shards = tmp_path / "shards-b"
    b_section = {"dataset": "image_folder", "loader": "wds", "shards": str(shards), "split": None}
    datasets = {"A": {"dataset": "fashion_mnist", "half": "A"}, "B": b_section,
                "C": {"dataset": "fashion_mnist", "half": "C"}}  # plans; fails when the data is built
    sweep = write_sweep(tmp_path, datasets=datasets, variants=["AnB"],
                        transfers=[{"source": "A", "target": "B"}, {"source": "C", "target": "B"}])
    prepare = {"source": f"fashion_mnist:{fashion_root}", "format": "wds", "shard_size": 100,
               "max_per_class": 30}
    sections = {**datasets, "B": {**b_section, "prepare": prepare}}
    profiles = write_profiles(tmp_path)
    plan = plan_sweep(load_sweep(sweep))
    write_plan(plan)
    materialize_configs(plan, plan.cells)
    bases = {c.target: c for c in plan.cells if c.stage == "base"}
    base_a, base_b, base_c = bases["A"], bases["B"], bases["C"]
    anb_a = next(c for c in plan.cells if c.stage == "transfer" and c.source == "A")
    jobs = prepare_jobs(sections)
    assert len(jobs) == 1 and not jobs[0].complete()
    executor = SlurmExecutor(profile="test", profiles_file=str(profiles), prepare=jobs, hold=True)
    try:
        outcome = executor.run(plan, plan.cells)
        assert set(outcome.states.values()) == {"submitted"}
        stages = StageBook.load(plan.output_dir)
        (prep,) = [e["job_id"] for e in stages.prepare.values()]
        book = JobBook.load(plan.output_dir).cells
        dep_b = _show(book[base_b.id]["array"]).get("Dependency", "")
        dep_a = _show(book[base_a.id]["array"]).get("Dependency", "")
        assert f"afterok:{prep}" in dep_b, dep_b  # base B waits for the write of its shards
        assert prep not in dep_a, dep_a  # base A reads other data: it does not wait
        reports = stages.reports
        assert [r["scope"] for r in reports] == ["base", "all"]
        for r in reports:
            dep = _show(r["job_id"]).get("Dependency", "")
            assert dep.startswith("afterany:") and all(a in dep for a in r["after"]), dep
        every = {e["array"] for e in book.values()}
        assert set(reports[1]["after"]) == every
        release = [prep, *every, *(r["job_id"] for r in reports)]
        subprocess.run(["scontrol", "release", ",".join(release)], check=True, capture_output=True)
        final = reports[1]["job_id"]
        wait_for(lambda: query_plain_jobs([final]).get(final) in ("COMPLETED", "FAILED"), 600,
                 f"the final report job {final}")
        assert query_plain_jobs([final])[final] == "COMPLETED", (plan.output_dir / "slurm" / "logs").iterdir()
        assert query_plain_jobs([reports[0]["job_id"]]).get(reports[0]["job_id"]) == "COMPLETED"
    finally:
        cancel_sweep(plan)
    # the write came first: its marker (written last) predates base B's first attempt
    marker = json.loads((shards / MARKER).read_text())
    started_b = read_attempts(base_b.run_dir)["history"][0]
    assert started_b["outcome"] == "started" and marker["time"] < started_b["time"]
    assert marker["job"] == prep
    # base C failed at train time, its transfer was never run; everything else finished and was drawn
    assert read_result(base_c.run_dir) is None and read_attempts(base_c.run_dir)["failures"] == 0  # bad input
    assert read_attempts(base_c.run_dir)["history"][-1]["outcome"] == "bad_input"
    assert job_state(book[base_c.id]["job_id"]) == "FAILED"
    finished = {c.id for c in plan.cells if read_result(c.run_dir)}
    assert finished == {base_a.id, base_b.id, anb_a.id}
    rows = (plan.output_dir / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 and any(anb_a.id in row for row in rows)
    assert (plan.output_dir / "figure.png").is_file()
    state = json.loads((plan.output_dir / "report.json").read_text())
    assert set(state["cells"]) == finished and state["job"] == final
    lines = report_state(plan)
    assert lines[0].startswith("report: current (3 of 5 cells"), lines
    # a second submission finds the write complete: no prepare job, base B's cells wait for nothing new
    again = prepare_jobs(sections)
    assert again[0].complete()
    second = SlurmExecutor(profile="test", profiles_file=str(profiles), prepare=again, hold=True, reports=False)
    try:
        second.run(plan, [base_b])
        assert second.sbatch_calls == 1
        assert [e["job_id"] for e in StageBook.load(plan.output_dir).prepare.values()] == [prep]
        array = JobBook.load(plan.output_dir).cells[base_b.id]["array"]
        assert _show(array).get("Dependency") in (None, "(null)", ""), _show(array)
    finally:
        cancel_sweep(plan)
