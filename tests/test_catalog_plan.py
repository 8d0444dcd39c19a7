"""The catalog as one plan over a shared cell store (launch/planning/catalog.py, launch/store/claims.py): shared cells planned
once, reused by the next sweep without training, two concurrent runs training each cell once, and planning the
paper's whole catalog torch-free."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from launch.cli import main
from launch.core.plan import load_manifest
from launch.planning.catalog import plan_catalog, wandb_warnings
from pipeline.training.train import read_result

REPO = Path(__file__).resolve().parents[1]
SWEEP: dict[str, Any] = {
    "seeds": [0],
    "data": {"dataset": "fashion_mnist", "split": {"kind": "random_halves", "seed": 1}, "batch_size": 64,
             "max_train_samples": 256, "max_val_samples": 128},
    "archs": [{"arch": "convnext_demo", "unit_kind": "depthwise"}],
    "depths": [1],
    "train": {"trainer": {"max_epochs": 1, "progress_bar": False, "accelerator": "cpu"}},
}


def write(tmp_path: Path, name: str, **changes: Any) -> Path:
    path = tmp_path / "sweeps" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {**SWEEP, "name": name, "output_dir": str(tmp_path / "results" / name),
            "store": str(tmp_path / "results" / "cells"), **changes}
    path.write_text(yaml.safe_dump(body))
    return path


def two_sweeps(tmp_path: Path) -> tuple[Path, Path]:
    """first: AnB n=1 (bases A and B); second: AnB and BnB n=1 under another W&B project: shares 3 of its 4 cells."""
    first = write(tmp_path, "first", variants=["AnB"], wandb={"enabled": False, "project": "p1", "tags": ["x"]})
    second = write(tmp_path, "second", variants=["AnB", "BnB"], wandb={"enabled": False, "project": "p2"})
    return first, second


def test_catalog_plans_each_shared_cell_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = two_sweeps(tmp_path)
    plan = plan_catalog([first, second])
    assert len(plan.cells) == 4 and len({c.id for c in plan.cells}) == 4
    assert Counter(tuple(c.sweeps) for c in plan.cells) == {("first", "second"): 3, ("second",): 1}
    assert {Path(c.run_dir).parent for c in plan.cells} == {tmp_path / "results" / "cells"}
    assert [c.stage for c in plan.cells] == ["base", "base", "transfer", "transfer"]
    # different W&B projects and output dirs, same training runs: the W&B project is not part of the id, but the
    # shared cell logs where its first sweep says (and a folder of sweeps plans the same)
    bnb = next(c for c in plan.cells if c.variant == "BnB")
    assert plan.configs[bnb.id]["wandb"]["project"] == "p2" and plan.configs[bnb.id]["labels"]["sweep"] == "second"
    anb = next(c for c in plan.cells if c.variant == "AnB")
    assert plan.configs[anb.id]["wandb"]["project"] == "p1" and plan.configs[anb.id]["wandb"]["group"] == "first"
    assert plan.configs[anb.id]["transfer"]["base"] == str(tmp_path / "results" / "cells" / anb.depends_on[0])
    assert [c.id for c in plan_catalog([tmp_path / "sweeps"]).cells] == [c.id for c in plan.cells]

    assert main(["sweep", "plan", str(first), str(second)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"sum of the sweeps\s+7\b", out) and re.search(r"catalog, each cell once\s+4\b", out)
    assert re.search(r"the store saves\s+3\b.*\(\d+\.\d%\)", out)
    catalog = load_manifest(tmp_path / "results" / "catalog")
    assert catalog.kind == "catalog" and [s["name"] for s in catalog.sweeps] == ["first", "second"]
    assert len(load_manifest(tmp_path / "results" / "first").cells) == 3
    assert len(load_manifest(tmp_path / "results" / "second").cells) == 4


def test_a_shared_cell_in_two_stores_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = write(tmp_path, "first", variants=["AnB"])
    second = write(tmp_path, "second", variants=["AnB"], store=str(tmp_path / "elsewhere"))
    assert main(["sweep", "plan", str(first), str(second)]) == 2
    err = capsys.readouterr().err
    assert "different stores" in err and "give them one `store:`" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists(), "nothing half-written"


def test_plan_warns_when_a_wandb_project_passes_the_run_limit(tmp_path: Path) -> None:
    first, second = two_sweeps(tmp_path)
    shared = write(tmp_path, "third", variants=["AnB", "BnB", "random-frozen"], depths=[1, 2],
                   wandb={"enabled": True, "project": "one"})
    assert wandb_warnings(plan_catalog([first, second])) == []  # W&B off
    lines = wandb_warnings(plan_catalog([shared]), limit=5)
    assert len(lines) == 1 and "'one' would hold 8 runs" in lines[0]
    # without a project, each sweep gets its own: masterkey-filters-<name>
    own = write(tmp_path, "fourth", variants=["AnB"], wandb={"enabled": True})
    plan = plan_catalog([own])
    assert {plan.configs[c.id]["wandb"]["project"] for c in plan.cells} == {"masterkey-filters-fourth"}


PAPER_PLAN = """
import sys, time
t = time.perf_counter()
from launch.cli import main
rc = main(["sweep", "plan", sys.argv[1]])
took = time.perf_counter() - t
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "lightning", "timm", "torchvision"))
print("RESULT", rc, f"{took:.2f}", ",".join(heavy) or "-")
"""


def test_planning_the_paper_catalog_is_one_torch_free_plan(tmp_path: Path) -> None:
    """`mkf sweep plan configs/paper/`: one plan, 7,932 distinct cells of 9,102, no torch; times it."""
    proc = subprocess.run([sys.executable, "-c", PAPER_PLAN, str(REPO / "configs" / "paper")], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rc, took, heavy = proc.stdout.split("RESULT")[-1].split()
    assert rc == "0" and heavy == "-", heavy
    print(f"mkf sweep plan configs/paper/: {took} s in-process wall (this machine, shared)")
    catalog = json.loads((tmp_path / "results" / "paper" / "catalog" / "manifest.json").read_text())
    assert len(catalog["cells"]) == len({c["id"] for c in catalog["cells"]})
    per_sweep = sum(len(json.loads((tmp_path / s["output_dir"] / "manifest.json").read_text())["cells"])
                    for s in catalog["sweeps"])
    assert per_sweep > len(catalog["cells"]), "the catalog shares cells between experiments"
    assert re.search(r"the store saves\s+[\d,]+\s+~[\d,]+ GPU-hours", proc.stdout)


def stamps(plan: Any) -> dict[str, int]:
    return {c.id: (Path(c.run_dir) / "result.json").stat().st_mtime_ns for c in plan.cells
            if (Path(c.run_dir) / "result.json").is_file()}


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_root")
def test_the_second_sweep_reuses_the_first_ones_cells(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = two_sweeps(tmp_path)
    assert main(["sweep", "run", str(first), "--no-progress"]) == 0
    before = stamps(plan_catalog([first]))
    assert len(before) == 3
    capsys.readouterr()
    assert main(["sweep", "plan", str(second)]) == 0
    assert "3 of 4 cells already finished in the store" in capsys.readouterr().out
    assert main(["sweep", "run", str(second), "--no-progress"]) == 0
    assert "4 cells, 3 already finished, 1 to run" in capsys.readouterr().out
    plan = plan_catalog([second])
    after = stamps(plan)
    assert len(after) == 4 and all(after[cid] == t for cid, t in before.items()), "no shared cell retrained"
    # the second sweep's folder: a view of its cells (links into the store) that its report reads
    view = tmp_path / "results" / "second" / "cells"
    assert sorted(p.name for p in view.iterdir()) == sorted(c.id for c in plan.cells)
    assert all((view / c.id).is_symlink() and read_result(view / c.id) for c in plan.cells)
    assert main(["sweep", "status", str(first), str(second)]) == 0
    status = capsys.readouterr().out
    assert re.search(r"first\s+finished: 3 .* total: 3", status) and re.search(r"second\s+finished: 4", status)
    assert main(["report", str(tmp_path / "results" / "second")]) == 0
    rows = (tmp_path / "results" / "second" / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 4


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_root")
def test_two_concurrent_runs_over_one_store_train_each_cell_once(tmp_path: Path) -> None:
    """Two `mkf sweep run` processes, same three cells, one store: each cell trains once (the other waits)."""
    one = write(tmp_path, "one", variants=["AnB"], wandb={"project": "a"})
    two = write(tmp_path, "two", variants=["AnB"], wandb={"project": "b"})
    env = {**os.environ, "MKF_CLAIM_POLL": "0.5", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "launch.cli", "sweep", "run", str(s), "--no-progress"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for s in (one, two)]
    outputs = [p.communicate(timeout=900)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    plan = plan_catalog([one])
    assert all(read_result(c.run_dir) for c in plan.cells)
    # a training start opens a new Lightning log version in the run dir (a second start, even a resume, another)
    starts = {c.id: len(list((Path(c.run_dir) / "logs").glob("version_*"))) for c in plan.cells}
    assert starts == {c.id: 1 for c in plan.cells}, starts
    logs = "".join(p.read_text() for name in ("one", "two") for p in (tmp_path / "results" / name).rglob("*.log"))
    assert "being trained by" in logs or "finished by another sweep" in logs, "the runs overlapped on a cell"
    assert not list((tmp_path / "results" / "cells").glob("*.claim")), "every claim released"


def test_a_report_names_shared_cells_as_its_own_sweep_planned_them(tmp_path: Path) -> None:
    """A cell of the store was trained for the first sweep and carries its labels; the second sweep calls the same
    datasets by other role names (Fig. 3's ``manmade`` is reduced_sources' ``manmade_100``), and its report must
    use those, and only its own cells."""
    from launch.planning.catalog import parts, write_catalog
    from pipeline.results.tables import collect

    half = {key: value for key, value in SWEEP["data"].items()}
    roles = {"first": ("src", "tgt"), "second": ("manmade_100", "natural")}
    paths = [write(tmp_path, name, variants=["AnB"], data={}, transfers=[{"source": a, "target": b}],
                   datasets={a: {**half, "half": "A"}, b: {**half, "half": "B"}}) for name, (a, b) in roles.items()]
    catalog = plan_catalog(paths)
    write_catalog(catalog)
    first, second = parts(catalog)
    assert {c.id for c in first.cells} == {c.id for c in second.cells}  # the same three training runs
    for cell in first.cells:  # trained once, for the first sweep: its labels in result.json
        labels = first.configs[cell.id]["labels"]
        Path(cell.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(cell.run_dir) / "result.json").write_text(json.dumps(
            {"status": "finished", "arch": cell.arch, "seed": cell.seed, "top1": 0.5, "labels": labels}))
    stray = tmp_path / "results" / "second" / "cells" / "0123456789ab"  # in the folder, not in the plan
    stray.mkdir(parents=True)
    (stray / "result.json").write_text(json.dumps({"status": "finished", "arch": "convnext_demo", "top1": 0.1,
                                                   "labels": {"stage": "base", "variant": "base-x"}}))
    rows = collect(tmp_path / "results" / "second")
    assert sorted(r["cell_id"] for r in rows) == sorted(c.id for c in second.cells)
    assert {r["target"] for r in rows} == {"manmade_100", "natural"}
    transfer = next(r for r in rows if r["stage"] == "transfer")
    assert (transfer["source"], transfer["target"]) == ("manmade_100", "natural")
    assert {r["variant"] for r in rows} == {"AnB", "base-manmade_100", "base-natural"}
    assert transfer["relative_top1"] == 1.0  # its reference found by the second sweep's id
    # a catalog run's report job reports the catalog folder: every sweep gets its own tables, in its own names
    # the cells are fabricated (no evidence.json): the audit fails them, the reports are written all the same
    assert main(["report", str(tmp_path / "results" / "catalog")]) == 1
    for name, (source, target) in roles.items():
        table = (tmp_path / "results" / name / "results.csv").read_text()
        assert f",{source},{target}," in table.replace('"', "")
