"""Sweeps end to end on real data: plan -> run (local executor) -> skip finished -> resume -> status -> report."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from launch.cli import main
from launch.core.plan import load_manifest, materialize_configs
from launch.core.variants import VARIANTS
from launch.planning.cost import estimate, load_costs
from launch.planning.planner import plan_sweep
from launch.planning.schema import load_sweep
from pipeline.models.unit_counts import CATALOG_ARCHS, generate_table, load_table
from pipeline.training.train import read_result

SWEEP = {
    "name": "mini",
    "seeds": [0],
    "data": {"dataset": "fashion_mnist", "split": {"kind": "random_halves", "seed": 1}, "batch_size": 64,
             "max_train_samples": 512, "max_val_samples": 256},
    "archs": [{"arch": "convnext_demo", "unit_kind": "depthwise"}],
    "depths": [1, 5],
    "variants": ["AnB", "BnB"],
    "train": {"trainer": {"max_epochs": 1, "progress_bar": False, "accelerator": "cpu"}},
}


def write_sweep(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, "output_dir": str(tmp_path / "out"), **changes}))
    return path


def test_plan_is_deterministic_and_ordered(tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path, archs=[{"arch": "convnext_demo"}, {"arch": "resnet_demo",
                                                                                "unit_kind": "block"}],
                                   depths="all", variants=["AnB", "BnB", "AnB+", "BnB+", "reverse"], seeds=[0, 1]))
    first, second = plan_sweep(sweep), plan_sweep(sweep)
    assert [c.id for c in first.cells] == [c.id for c in second.cells]
    assert len({c.id for c in first.cells}) == len(first.cells) == 2 * 2 * (2 + 5 * 5)
    by_id = first.by_id()
    seen_transfer = False
    for cell in first.cells:
        if cell.stage == "base":
            assert not seen_transfer, "base cells come first"
            assert not cell.depends_on
            continue
        seen_transfer = True
        (dep,) = cell.depends_on
        base = by_id[dep]
        assert (base.stage, base.arch, base.seed) == ("base", cell.arch, cell.seed)
        assert base.variant == ("base-B" if cell.variant.startswith("BnB") else "base-A")
        assert first.configs[cell.id]["transfer"]["base"] == base.run_dir
        reference = by_id[cell.reference]  # type: ignore[index]
        assert (reference.variant, reference.arch, reference.seed) == ("base-B", cell.arch, cell.seed)
    cfg = first.configs[next(c.id for c in first.cells if c.variant == "reverse" and c.depth == 2)]
    assert cfg["transfer"]["direction"] == "last" and cfg["transfer"]["mode"] == "frozen"
    cfg = first.configs[next(c.id for c in first.cells if c.variant == "AnB+")]
    assert cfg["transfer"]["mode"] == "finetune" and cfg["data"]["half"] == "B"


def test_one_arch_with_two_unit_kinds_plans_each_base_once(tmp_path: Path) -> None:
    """The bug this fixes: two unit kinds of one arch planned the same base twice into one run directory."""
    sweep = load_sweep(write_sweep(tmp_path, archs=[{"arch": "convnext_demo", "unit_kind": "depthwise"},
                                                    {"arch": "convnext_demo", "unit_kind": "pointwise"},
                                                    {"arch": "convnext_demo", "unit_kind": "both"}],
                                   depths=[1, 2], variants=["AnB", "random-frozen", "dog"], seeds=[0, 1]))
    plan = plan_sweep(sweep)
    assert len({c.run_dir for c in plan.cells}) == len(plan.cells), "no two cells share a run directory"
    assert len({c.config_path for c in plan.cells}) == len(plan.cells)
    bases = [c for c in plan.cells if c.stage == "base"]
    assert len(bases) == 2 * 2  # (A, B) x seeds, shared by the three unit kinds
    # per seed: 3 kinds x 2 depths x (AnB + random-frozen) + 1 dog cell (no unit kind: shared by the three entries)
    assert len(plan.cells) - len(bases) == 2 * (3 * 2 * 2 + 1)
    kinds = {plan.configs[c.id]["transfer"]["unit_kind"] for c in plan.cells if c.variant == "AnB"}
    assert kinds == {"depthwise", "pointwise", "both"}


def test_variants_become_cell_configs(tmp_path: Path) -> None:
    """Each registered variant's entry shows up in its cells: source, init, freeze, direction, model.init."""
    plan = plan_sweep(load_sweep(write_sweep(tmp_path, depths=[2], variants=list(VARIANTS))))
    by_id = plan.by_id()
    for cell in plan.cells:
        if cell.stage == "base":
            continue
        v = VARIANTS[cell.variant]
        cfg = plan.configs[cell.id]
        assert cfg["data"]["half"] == "B" and cfg["labels"]["reference"] == cell.reference
        if v.depthless:
            assert cfg["transfer"] is None and cfg["model"]["init"]["kind"] == v.model_init["kind"]  # type: ignore[index]
            assert cell.depth is None and not cell.depends_on
            continue
        t = cfg["transfer"]
        assert (t["init"], t["mode"], t["direction"], t["depth"]) == (v.init, v.mode, v.direction, 2)
        if v.source == "none":
            assert t["base"] == "" and not cell.depends_on, "random-frozen copies nothing and waits for nothing"
        else:
            (dep,) = cell.depends_on
            assert by_id[dep].target == ("A" if v.source == "source" else "B") and t["base"] == by_id[dep].run_dir


def test_datasets_by_role_external_sources_and_cross_arch(tmp_path: Path) -> None:
    """Roles: a target is trained on, its base is the reference; an external timm source trains nothing; a
    cross-arch entry copies from a base of its source arch with the mapping policy; BnB is shared by sources."""
    data = {"dataset": "fashion_mnist", "split": {"kind": "random_halves", "seed": 0}}
    path = write_sweep(tmp_path, data={"image_size": 32}, datasets={
        "A": {**data, "half": "A"}, "B": {**data, "half": "B"}, "C": {"dataset": "mnist_5k"}},
        sources={"in1k": {"weights": "timm:convnext_tiny.fb_in1k", "file": "/w/convnext_tiny.safetensors"}},
        transfers=[{"source": "A", "target": "C"}, {"source": "B", "target": "C"}, {"source": "in1k", "target": "C"}],
        archs=[{"arch": "hornet_demo", "source_arch": "convnext_demo", "mapping": {"units": "proportional"}}],
        depths=[1], variants=["AnB", "BnB"], seeds=[0])
    plan = plan_sweep(load_sweep(path))
    by_id = plan.by_id()
    bases = {(c.arch, c.target) for c in plan.cells if c.stage == "base"}
    assert bases == {("hornet_demo", "C"), ("convnext_demo", "A"), ("convnext_demo", "B"), ("convnext_demo", "C")}
    anb = {c.source: c for c in plan.cells if c.variant == "AnB"}
    assert set(anb) == {"A", "B", "in1k"}
    ext = plan.configs[anb["in1k"].id]["transfer"]
    assert ext["base"] == "timm:convnext_tiny.fb_in1k" and ext["base_file"] == "/w/convnext_tiny.safetensors"
    assert not anb["in1k"].depends_on
    t = plan.configs[anb["A"].id]["transfer"]
    assert t["mapping"]["units"] == "proportional" and t["mapping"]["channels"] == "tile"
    assert by_id[anb["A"].depends_on[0]].arch == "convnext_demo"
    assert by_id[anb["A"].reference].arch == "hornet_demo"  # type: ignore[index]
    assert plan.configs[anb["A"].id]["data"]["dataset"] == "mnist_5k"
    assert [c.source for c in plan.cells if c.variant == "BnB"] == ["C"], "BnB depends on the target only: one cell"


@pytest.mark.parametrize(("changes", "message"), [
    ({"datasets": {"A": {"dataset": "fashion_mnist", "hlaf": "A"}}, "transfers": [{"source": "A", "target": "A"}]},
     "unknown key datasets.A.hlaf; valid keys here: dataset, root"),
    ({"archs": [{"arch": "convnext_demo", "unit_knd": "depthwise"}]},
     "unknown key archs.0.unit_knd; valid keys here: arch, unit_kind, source_arch, mapping"),
    ({"archs": [{"arch": "convnext_demo", "unit_kind": "depthwize"}]}, "archs.0.unit_kind = 'depthwize'"),
    ({"kind": "heatmap"}, "kind = 'heatmap' is not valid"),
    ({"depths": "some"}, "depths = 'some' is not valid; use 'all' or 'sample' or a list of int"),
    ({"variants": ["AnB", "CnB"]}, "unknown variant 'CnB'"),
    ({"stages": {"final": {}}}, "unknown key stages.final; valid keys here: base, transfer"),
    ({"datasets": {"A": {"dataset": "fashion_mnist"}}, "transfers": [{"source": "X", "target": "A"}]},
     "transfers[0].source 'X' is neither a dataset nor a source"),
    ({"datasets": {"A": {"dataset": "fashion_mnist"}}}, "declares datasets but no transfers"),
    ({"archs": [{"arch": "resnet_demo", "unit_kind": "depthwise"}]}, "resnet_demo has no depthwise units"),
    ({"depths": [9]}, "depth 9 is outside convnext_demo's depthwise units 1..5"),
    ({"slurm": {"profile": {"base": "x"}}}, "slurm.profile"),
])
def test_bad_sweeps_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict[str, Any],
                                        message: str) -> None:
    assert main(["sweep", "plan", str(write_sweep(tmp_path, **changes))]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists(), "nothing written"


def test_plan_cli_writes_only_the_manifest_and_prints_costs(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "plan", str(write_sweep(tmp_path))]) == 0
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["cells"]) == 6 and manifest["kind"] == "depth_curve"
    printed = capsys.readouterr().out
    for cell in manifest["cells"]:
        assert cell["id"] in printed
    assert "base: 2 cells" in printed and "transfer: 4 cells" in printed and "GPU-seconds (a100)" in printed
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"], "plan writes one file and trains nothing"
    plan = load_manifest(out)
    fresh = plan_sweep(load_sweep(tmp_path / "sweep.yaml"))
    assert [plan.configs[c.id] for c in plan.cells] == [fresh.configs[c.id] for c in fresh.cells]
    assert materialize_configs(plan, plan.cells[:2]) == 2
    assert yaml.safe_load(Path(plan.cells[0].config_path).read_text()) == plan.configs[plan.cells[0].id]
    assert not Path(plan.cells[2].config_path).exists()


def test_cost_names_what_the_table_lacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An arch or dataset the cost table does not know is a line in the estimate, not a crash; known ones add up."""
    path = write_sweep(tmp_path, archs=[{"arch": "convnext_demo"}, {"arch": "convnext_atto"}],
                       data={**SWEEP["data"], "dataset": "fashion_mnist"})  # type: ignore[dict-item]
    plan = plan_sweep(load_sweep(path))
    est = estimate(plan)
    assert est.cells == {"base": 4, "transfer": 8}
    assert est.unknown == {"arch convnext_atto (throughput.a100)": 6}
    table = load_costs()
    rate = table["throughput"]["a100"]["convnext_demo"]["train"]
    # convnext_demo at 32 px: 512 images (max_train_samples) x 1 epoch, scaled by (32 / 224)^2 (the table's k = 2),
    # per stage; the table has no validation rate for the demo arch
    per_cell = 512 * (32 / 224) ** 2 / rate / 3600
    assert est.gpu_hours["base"] == pytest.approx(2 * per_cell) and est.gpu_hours["transfer"] == pytest.approx(4 * per_cell)
    assert any("convnext_atto" in line and "not in configs/costs.yaml; add it" in line for line in est.lines())


def test_unit_count_table_is_torch_free_and_covers_the_catalog() -> None:
    """Planning reads unit counts from the checked-in table; `python -m pipeline.models.unit_counts` regenerates it."""
    code = ("import sys; from pipeline.models.unit_counts import unit_count; "
            "print(unit_count('convnext_base', 'depthwise'), unit_count('resnet152', 'block'), "
            "unit_count('hornet_tiny_7x7', 'both')); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["36", "51", "25", "False"]


TORCH_FREE_PLAN = """
import importlib.abc, importlib.util, sys, types
from pathlib import Path

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "timm", "lightning", "torchvision", "torchmetrics"):
            raise ImportError(f"planning imported {name}")
        return None

# datamodules/__init__.py belongs to the data side; load only its errors module, as the CLI's lazy package does
package = types.ModuleType("datamodules")
package.__path__ = [str(Path("datamodules").resolve())]
sys.modules["datamodules"] = package
spec = importlib.util.spec_from_file_location("datamodules.errors", "datamodules/errors.py")
errors = importlib.util.module_from_spec(spec)
sys.modules["datamodules.errors"] = errors
spec.loader.exec_module(errors)
sys.meta_path.insert(0, Block())
from launch.planning.cost import estimate
from launch.planning.schema import load_sweep
from launch.planning.planner import plan_sweep
plan = plan_sweep(load_sweep(sys.argv[1]))
print(len(plan.cells), estimate(plan).lines()[-1])
"""


@pytest.mark.parametrize("config", ["configs/demo.yaml", "configs/paper/cross_domain.yaml"])
def test_planning_imports_no_torch(config: str) -> None:
    """Planning and costing a sweep of catalog archs never imports torch, timm or lightning (login nodes)."""
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE_PLAN, config], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[0] == str(len(plan_sweep(load_sweep(repo / config)).cells))


def test_unit_count_table_equals_the_layer_plans() -> None:
    """Every entry of pipeline/models/unit_counts.json is what the real layer plan of that model counts (meta device)."""
    table = load_table()
    assert set(CATALOG_ARCHS) <= set(table)
    assert generate_table(tuple(table)) == table


@pytest.mark.usefixtures("fashion_root")
def test_run_skip_resume_status_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # checkpoints kept (trainer.keep_checkpoints): the resume below needs one of a finished cell
    sweep = write_sweep(tmp_path, train={"trainer": {**SWEEP["train"]["trainer"], "keep_checkpoints": True}})
    out = tmp_path / "out"
    assert main(["sweep", "run", str(sweep), "--slots", "2", "--no-progress"]) == 0
    plan = plan_sweep(load_sweep(sweep))
    results = {c.id: read_result(c.run_dir) for c in plan.cells}
    assert all(results.values()), "every cell finished"
    stamps = {c.id: (Path(c.run_dir) / "result.json").stat().st_mtime_ns for c in plan.cells}

    # a rerun skips all six
    capsys.readouterr()
    assert main(["sweep", "run", str(sweep), "--no-progress"]) == 0
    assert "6 already finished, 0 to run" in capsys.readouterr().out
    assert stamps == {c.id: (Path(c.run_dir) / "result.json").stat().st_mtime_ns for c in plan.cells}

    # a cell that lost its result but kept its checkpoint is 'interrupted' and is resumed, not restarted
    victim = next(c for c in plan.cells if c.variant == "AnB" and c.depth == 5)
    (Path(victim.run_dir) / "result.json").unlink()
    shutil.rmtree(Path(victim.run_dir) / "logs")
    assert main(["sweep", "status", str(out)]) == 0
    status = capsys.readouterr().out
    assert "finished: 5" in status and "interrupted: 1" in status
    assert main(["sweep", "run", str(sweep), "--no-progress"]) == 0
    assert "5 already finished, 1 to run (1 resume from a checkpoint)" in capsys.readouterr().out
    resumed = read_result(victim.run_dir)
    assert resumed is not None and resumed["resumed"] is True

    # the report: a row per cell, relative top-1 against base B of the same arch and seed, figure files
    assert main(["report", str(out)]) == 0
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    base_b = next(float(r["top1"]) for r in rows if r["variant"] == "base-B")
    for r in rows:
        if r["stage"] == "transfer":
            assert (r["source"], r["target"]) == (("A" if r["variant"] == "AnB" else "B"), "B")
            assert float(r["relative_top1"]) == pytest.approx(float(r["top1"]) / base_b)
    with (out / "summary.csv").open() as f:
        summary = list(csv.DictReader(f))
    assert len(summary) == 4 and all(s["n"] == "1" for s in summary)  # (AnB, BnB) x depths (1, 5), one seed
    for name in ("figure.png", "figure.pdf"):
        assert (out / name).stat().st_size > 1000
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_output_dir_with_a_newline_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Cell lists and scripts are line-based: a control character in output_dir is a clear error, not a broken job."""
    assert main(["sweep", "plan", str(write_sweep(tmp_path, output_dir=str(tmp_path / "a\nb")))]) == 2
    assert "control character" in capsys.readouterr().err
    assert not (tmp_path / "a\nb").exists()


@pytest.mark.usefixtures("fashion_root")
def test_wandb_groups_cells_logs_the_figure_and_syncs_offline_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """W&B (offline, as on compute nodes): one run per cell in the sweep's group, the report figure logged as an
    image, `mkf sweep sync` hands every offline run to `wandb sync`, and the API key is stored nowhere."""
    secret = "fedcba9876543210fedcba9876543210fedcba98"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sweep = write_sweep(tmp_path, depths=[1], variants=["AnB"], wandb={"enabled": True, "project": "mkf-test"})
    out = tmp_path / "out"
    assert main(["sweep", "run", str(sweep), "--no-progress"]) == 0
    plan = plan_sweep(load_sweep(sweep))
    for cell in plan.cells:
        runs = list(Path(cell.run_dir).glob("wandb/offline-run-*"))
        assert len(runs) == 1 and runs[0].name.endswith(cell.id)
        config = yaml.safe_load((Path(cell.run_dir) / "config.yaml").read_text())["wandb"]
        assert config["group"] == "mini" and config["job_type"] == cell.stage
        assert cell.arch in config["tags"] and f"depth={cell.depth}" in config["tags"]
    assert main(["report", str(out)]) == 0
    assert "logged the figure to W&B" in capsys.readouterr().out
    images = list(out.glob("wandb/offline-run-*/files/media/images/figure_*.png"))
    assert len(images) == 1 and images[0].stat().st_size > 1000

    calls: list[list[str]] = []

    class Done:
        returncode = 0

    monkeypatch.setattr("launch.views.wandb_sync.subprocess.run", lambda cmd, **kw: calls.append(cmd) or Done())
    assert main(["sweep", "sync", str(out)]) == 0
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "wandb", "sync"] and len(cmd[4:]) == 4  # 3 cells + the report
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"API key leaked into {path}"
