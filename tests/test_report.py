"""`mkf report`: summary statistics over seeds, the refusal to report half a sweep, and `--partial` while a sweep
runs, logged to a real offline W&B run (the dashboard's curve fills in).

The cells' results are written as a finished cell writes them (result.json with its labels, config.yaml), with
made-up accuracies: this tests the report, not training (tests/test_sweep.py trains a real sweep end to end).
"""

from __future__ import annotations

import csv
import json
import math
import random
import statistics
from pathlib import Path

import pytest
import yaml
from scipy import stats

from launch.cli import main
from launch.core.plan import write_plan
from launch.planning.planner import plan_sweep
from launch.planning.schema import load_sweep
from pipeline.config import dump_yaml

SWEEP = {
    "name": "report-test", "kind": "depth_curve", "seeds": [0, 1, 2],
    "data": {"image_size": 32},
    "datasets": {"A": {"dataset": "fashion_mnist", "split": {"kind": "random_halves", "seed": 0}, "half": "A"},
                 "B": {"dataset": "fashion_mnist", "split": {"kind": "random_halves", "seed": 0}, "half": "B"}},
    "transfers": [{"source": "A", "target": "B"}],
    "archs": [{"arch": "convnext_demo", "unit_kind": "depthwise"}],
    "depths": [1, 3, 5], "variants": ["AnB", "BnB", "random-frozen"],
}


# the cells here are fabricated (no evidence.json): the protocol audit cannot vouch for them, so the report is
# written with every point marked and exits 1 (tests/test_audit.py checks the audit on trained cells)
UNAUDITED = 1


def finish(plan, cells, rng: random.Random) -> None:  # type: ignore[no-untyped-def]
    """Write what `mkf train` leaves in a finished cell's run dir: config.yaml and result.json (no evidence)."""
    for cell in cells:
        run_dir = Path(cell.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        config = plan.configs[cell.id]
        dump_yaml(config, run_dir / "config.yaml")
        (run_dir / "result.json").write_text(json.dumps({
            "status": "finished", "arch": cell.arch, "seed": cell.seed, "top1": rng.uniform(0.5, 0.9),
            "top5": 1.0, "labels": config["labels"], "steps": 10, "wall_time_s": 1.0}))


@pytest.fixture
def sweep_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, "output_dir": str(tmp_path / "out"),
                                    "wandb": {"enabled": True, "project": "mkf-test"}}))
    plan = plan_sweep(load_sweep(path))
    write_plan(plan)
    return plan


def test_summary_is_mean_std_and_t_interval_over_seeds(sweep_dir, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    plan = sweep_dir
    finish(plan, plan.cells, random.Random(0))
    assert main(["report", str(plan.output_dir)]) == UNAUDITED
    with (plan.output_dir / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    with (plan.output_dir / "summary.csv").open() as f:
        summary = list(csv.DictReader(f))
    assert len(rows) == len(plan.cells) == 3 * (2 + 3 * 3)
    assert len(summary) == 3 * 3  # (AnB, BnB, random-frozen) x depths
    for s in summary:
        values = [float(r["relative_top1"]) for r in rows if (r["variant"], r["depth"]) == (s["variant"], s["depth"])]
        assert int(s["n"]) == len(values) == 3
        assert float(s["mean"]) == pytest.approx(statistics.fmean(values))
        assert float(s["std"]) == pytest.approx(statistics.stdev(values))
        low, high = stats.t.interval(0.95, 2, loc=statistics.fmean(values), scale=stats.sem(values))
        assert (float(s["ci95_low"]), float(s["ci95_high"])) == (pytest.approx(low), pytest.approx(high))
        expected_source = {"AnB": "A", "BnB": "B", "random-frozen": "none"}[s["variant"]]
        assert (s["source"], s["target"]) == (expected_source, "B")
    for r in rows:
        if r["stage"] == "transfer":
            ref = next(x for x in rows if x["cell_id"] == r["reference_id"])
            assert (ref["variant"], ref["seed"]) == ("base-B", r["seed"])
            assert math.isclose(float(r["relative_top1"]), float(r["top1"]) / float(ref["top1"]))


def test_partial_report_fills_in_the_logged_curve(sweep_dir, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    plan = sweep_dir
    out = plan.output_dir
    rng = random.Random(1)
    bases = [c for c in plan.cells if c.stage == "base"]
    first = [c for c in plan.cells if c.stage == "transfer" and c.depth == 1]
    finish(plan, bases + first, rng)

    assert main(["report", str(out)]) == 2, "a report of an unfinished sweep is refused without --partial"
    assert f"{len(bases) + len(first)} of {len(plan.cells)} cells have finished" in capsys.readouterr().err

    assert main(["report", str(out), "--partial"]) == UNAUDITED
    assert "logged the figure to W&B" in capsys.readouterr().out
    assert (out / "figure.png").stat().st_size > 1000
    finish(plan, [c for c in plan.cells if c.stage == "transfer" and c.depth == 3], rng)
    assert main(["report", str(out), "--partial"]) == UNAUDITED

    runs = sorted(out.glob("wandb/offline-run-*"), key=lambda p: p.stat().st_mtime)
    # the run id is in each attempt's `run-<id>.wandb` (directory names get a -1 suffix within the same second)
    ids = {next(r.glob("run-*.wandb")).stem for r in runs}
    assert len(runs) == 2 and len(ids) == 1, f"one W&B run id, logged twice: {ids}"
    logged = []
    for run in runs:
        (table,) = run.glob("files/media/table/summary_*.table.json")
        logged.append(json.loads(table.read_text()))
        assert len(list(run.glob("files/media/images/figure_*.png"))) == 1
    depth = [logged[0]["columns"].index("depth")]
    assert sorted({row[depth[0]] for row in logged[0]["data"]}) == ["1"]
    assert sorted({row[depth[0]] for row in logged[1]["data"]}) == ["1", "3"]
    (results,) = runs[1].glob("files/media/table/results_*.table.json")
    assert len(json.loads(results.read_text())["data"]) == len(bases) + 2 * len(first)


def test_matrix_report_writes_tables_and_logs_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """kind matrix: source x target as CSV, Markdown and heatmap; the matrix table is logged to W&B too."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    roles = {"A": {"dataset": "fashion_mnist", "split": {"kind": "random_halves", "seed": 0}, "half": "A"},
             "B": {"dataset": "fashion_mnist", "split": {"kind": "random_halves", "seed": 0}, "half": "B"},
             "C": {"dataset": "mnist_5k"}}
    pairs = [{"source": s, "target": t} for s in roles for t in roles if s != t]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, "kind": "matrix", "datasets": roles, "transfers": pairs, "depths": [2],
                                    "variants": ["AnB"], "seeds": [0, 1], "output_dir": str(tmp_path / "out"),
                                    "wandb": {"enabled": True, "project": "mkf-test"}}))
    plan = plan_sweep(load_sweep(path))
    write_plan(plan)
    finish(plan, plan.cells, random.Random(2))
    assert main(["report", str(plan.output_dir)]) == UNAUDITED
    out = plan.output_dir
    with (out / "matrix.csv").open() as f:
        matrix = list(csv.DictReader(f))
    assert {(m["row"], m["col"]) for m in matrix} == {(p["source"], p["target"]) for p in pairs}
    assert all(m["n"] == "2" for m in matrix)
    md = (out / "matrix.md").read_text()
    assert "| source \\ target | A | B | C |" in md and md.count("(n=2)") == 6
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (run,) = out.glob("wandb/offline-run-*")
    (table,) = run.glob("files/media/table/matrix_*.table.json")
    assert len(json.loads(table.read_text())["data"]) == 6


def finish_relative(plan, relative: dict[tuple[str, str], list[float]], base_top1: float = 0.5) -> None:  # type: ignore[no-untyped-def]
    """Finished cells whose relative top-1 is known: a transfer cell (source, target, seed i) scores
    ``base_top1 * relative[(source, target)][i]``, every base ``base_top1``."""
    for cell in plan.cells:
        run_dir = Path(cell.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        config = plan.configs[cell.id]
        dump_yaml(config, run_dir / "config.yaml")
        top1 = base_top1 if cell.stage == "base" else base_top1 * relative[(cell.source, cell.target)][cell.seed]
        (run_dir / "result.json").write_text(json.dumps({
            "status": "finished", "arch": cell.arch, "seed": cell.seed, "top1": top1, "top5": 1.0,
            "labels": config["labels"], "steps": 10, "wall_time_s": 1.0}))


@pytest.mark.parametrize(("low", "high", "clim"), [(0.996, 1.008, (0.95, 1.05)), (0.8, 1.1, (0.8, 1.2))])
def test_heatmap_keeps_its_scale_centred_on_one(tmp_path: Path, low: float, high: float,
                                                clim: tuple[float, float]) -> None:
    """A 3x3 source x target heatmap: a diverging map centred on 1.0, never narrower than +-0.05, symmetric
    around 1.0 when the data are wider; each cell annotated with its mean and 95% CI over the seeds."""
    from matplotlib.colors import Colormap

    from pipeline.results.figures import matrices, matrix_figure
    from pipeline.results.report import write_report
    from pipeline.results.tables import collect, summarize

    roles = {r: {"dataset": "fashion_mnist", "split": {"kind": "random_halves", "seed": i}, "half": "A"}
             for i, r in enumerate("ABC")}
    pairs = [(s, t) for s in roles for t in roles if s != t]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, "kind": "matrix", "datasets": roles, "depths": [2], "variants": ["AnB"],
                                    "transfers": [{"source": s, "target": t} for s, t in pairs], "seeds": [0, 1],
                                    "output_dir": str(tmp_path / "out")}))
    plan = plan_sweep(load_sweep(path))
    write_plan(plan)
    means = [low + (high - low) * i / (len(pairs) - 1) for i in range(len(pairs))]  # the extremes are in the data
    finish_relative(plan, {p: [m - 0.001, m + 0.001] for p, m in zip(pairs, means, strict=True)})
    _, files = write_report(plan.output_dir)
    assert plan.output_dir / "figure.png" in files

    axes_kind, panels = matrices(summarize(collect(plan.output_dir)))
    fig = matrix_figure(panels, axes_kind, "t")
    (ax, bar) = fig.axes
    (image,) = ax.images
    assert image.get_clim() == pytest.approx(clim, abs=1e-9)
    assert image.norm.vmin == pytest.approx(clim[0]) and image.norm.vmax == pytest.approx(clim[1])
    assert isinstance(image.cmap, Colormap) and image.cmap.name == "RdBu"
    assert image.cmap(0.5)[:3] == pytest.approx((0.97, 0.97, 0.97), abs=0.03), "1.0 is the map's neutral centre"
    assert "centred on 1.0" in bar.get_ylabel() and "0.05 at least" in bar.get_ylabel()
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == len(pairs)
    for (source, target), mean in zip(pairs, means, strict=True):
        s = panels[next(iter(panels))][(source, target)]
        assert s["mean"] == pytest.approx(mean)
        assert f"{s['mean']:.3f}\n[{s['ci95_low']:.3f}, {s['ci95_high']:.3f}]" in texts
        assert s["ci95_low"] < s["mean"] < s["ci95_high"]


def test_a_one_seed_report_claims_no_interval_and_reads_plainly(tmp_path: Path) -> None:
    """Issue 26: with one seed, summary.md printed '95% CI [1.0000, 1.0000]', the title claimed a band that was
    not drawn, and relative top-1 near 1.0 got matplotlib's '+1' offset with 0.0001 ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.results.figures import band_title, readable_axis
    from pipeline.results.report import write_report

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, "seeds": [0], "output_dir": str(tmp_path / "out")}))
    plan = plan_sweep(load_sweep(path))
    write_plan(plan)
    finish(plan, plan.cells, random.Random(1))
    write_report(plan.output_dir)
    md = (plan.output_dir / "summary.md").read_text()
    assert "no confidence interval" in md and "n/a (n = 1)" in md and "[" not in md.split("|---|")[-1]
    with (plan.output_dir / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["n"] == "1" and r["ci95_low"] == r["ci95_high"] == r["std"] == "" for r in rows)
    assert band_title([{"n": 1}], "ci95") == "one seed per point: no band (n = 1)"
    assert band_title([{"n": 3}, {"n": 3}], "ci95") == "mean over n = 3 seeds, band = 95% CI"
    assert "n at each point" in band_title([{"n": 1}, {"n": 3}], "ci95")
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [1.00001, 1.00003, 1.00002])
    readable_axis(ax, [1.00001, 1.00003])
    fig.canvas.draw()
    assert ax.yaxis.get_offset_text().get_text() == ""
    low, high = ax.get_ylim()
    assert high - low >= 0.02, "a spread of noise is not blown up to fill the axis"
    plt.close(fig)
