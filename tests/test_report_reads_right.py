"""Issue 26, reports that read right: no 95% CI from fewer than two seeds, no band claimed where none is drawn,
plain y axes (no matplotlib '+1' offset over 0.0001 ticks) and every drawn point's n visible, on the figures a
report really writes. The cells are fabricated (tests/test_report.py's way): this tests the report, not training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

import pipeline.results.figures as figures
from launch.core.plan import write_plan
from launch.planning.planner import plan_sweep
from launch.planning.schema import load_sweep
from pipeline.config import dump_yaml
from pipeline.results.report import write_report
from tests.test_report import SWEEP


def _finish(plan: Any, seeds: dict[tuple[str, int | None], int] | None = None) -> None:
    """Every base scores 0.5; a transfer cell 0.5 x (1 + a few 1e-5): relative top-1 within 1e-4 of 1.0, where
    matplotlib's default axis shows a '+1' offset. ``seeds``: (variant, depth) -> how many seeds finish (all)."""
    for cell in plan.cells:
        if seeds is not None and cell.stage == "transfer" and cell.seed >= seeds.get((cell.variant, cell.depth), 99):
            continue
        run_dir = Path(cell.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        config = plan.configs[cell.id]
        dump_yaml(config, run_dir / "config.yaml")
        top1 = 0.5 if cell.stage == "base" else 0.5 * (1 + 1e-5 * ((cell.depth or 0) + cell.seed))
        (run_dir / "result.json").write_text(json.dumps({
            "status": "finished", "arch": cell.arch, "seed": cell.seed, "top1": top1, "top5": 1.0,
            "labels": config["labels"], "steps": 10, "wall_time_s": 1.0}))


def _plan(tmp_path: Path, **changes: Any) -> Any:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, "output_dir": str(tmp_path / "out"), **changes}))
    plan = plan_sweep(load_sweep(path))
    write_plan(plan)
    return plan


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What each figure a report saves shows once drawn: its title, every axis' offset text, its texts and
    whether any band (a filled area) was drawn."""
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Polygon, Rectangle

    seen: list[dict[str, Any]] = []
    save = figures._save

    def capture(fig: Any, root: Path) -> list[Path]:
        fig.canvas.draw()
        seen.append({
            "title": fig._suptitle.get_text() if fig._suptitle else "",
            "titles": [ax.get_title() for ax in fig.axes],
            "offsets": [ax.yaxis.get_offset_text().get_text() for ax in fig.axes if ax.get_visible()],
            "texts": [t.get_text() for ax in fig.axes for t in ax.texts],
            "legend": [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()],
            "bands": sum(isinstance(c, PolyCollection) for ax in fig.axes for c in ax.collections)
            + sum(isinstance(p, Polygon | Rectangle) and p is not ax.patch and p.get_alpha() is not None
                  for ax in fig.axes for p in ax.patches),
        })
        return save(fig, root)

    monkeypatch.setattr(figures, "_save", capture)
    return seen


def test_a_one_seed_depth_curve_has_no_interval_no_band_and_a_plain_axis(
        tmp_path: Path, drawn: list[dict[str, Any]]) -> None:
    plan = _plan(tmp_path, seeds=[0])
    _finish(plan)
    write_report(plan.output_dir)
    md = (plan.output_dir / "summary.md").read_text()
    assert "n = 1" in md and "[1.0000, 1.0000]" not in md and "95% CI [" not in md
    (fig,) = drawn
    assert fig["offsets"] and all(text == "" for text in fig["offsets"]), fig["offsets"]
    assert "band" in fig["title"] and "no band" in fig["title"] and "95% CI" not in fig["title"], fig["title"]
    assert "n = 1" in fig["title"], "every point's n is said"
    assert fig["bands"] == 0, "one seed: nothing is drawn as a band"


def test_points_of_different_n_each_show_their_n(tmp_path: Path, drawn: list[dict[str, Any]]) -> None:
    """Three seeds planned, some points finished with fewer (a partial report): each point is annotated."""
    plan = _plan(tmp_path, seeds=[0, 1, 2])
    _finish(plan, seeds={("AnB", 1): 1, ("AnB", 3): 2})
    write_report(plan.output_dir, partial=True)
    (fig,) = drawn
    assert "n at each point" in fig["title"] and "where n >= 2" in fig["title"], fig["title"]
    for n in (1, 2, 3):
        assert f"n={n}" in fig["texts"], fig["texts"]
    assert all(text == "" for text in fig["offsets"])
    assert fig["bands"] > 0, "points with seeds have their band"


def test_a_three_seed_depth_curve_claims_the_band_it_draws(tmp_path: Path, drawn: list[dict[str, Any]]) -> None:
    plan = _plan(tmp_path, seeds=[0, 1, 2])
    _finish(plan)
    write_report(plan.output_dir)
    (fig,) = drawn
    assert "mean over n = 3 seeds, band = 95% CI" in fig["title"] and fig["bands"] > 0
    assert all(text == "" for text in fig["offsets"])


def test_one_seed_matrix_and_retention_say_n_and_claim_no_interval(tmp_path: Path,
                                                                   drawn: list[dict[str, Any]]) -> None:
    plan = _plan(tmp_path / "matrix", kind="matrix", seeds=[0], depths=[2], variants=["AnB"])
    _finish(plan)
    write_report(plan.output_dir)
    (fig,) = drawn
    assert "one seed per cell (n = 1)" in fig["title"] and "CI" not in fig["title"], fig["title"]
    assert all(text == "" for text in fig["offsets"]), fig["offsets"]  # the colour bar's too
    assert not any("[" in text for text in fig["texts"]), fig["texts"]

    drawn.clear()
    plan = _plan(tmp_path / "retention", kind="retention", seeds=[0, 1], depths=[2],
                 archs=[{"arch": "resnet_demo", "unit_kind": "block"}, {"arch": "convnext_demo",
                                                                          "unit_kind": "depthwise"}])
    _finish(plan, seeds={("AnB", 2): 2})
    for cell in plan.cells:  # resnet_demo's AnB: one seed finished, convnext_demo's: two
        if cell.arch == "resnet_demo" and cell.stage == "transfer" and cell.seed == 1:
            (Path(cell.run_dir) / "result.json").unlink()
    write_report(plan.output_dir, partial=True)
    (fig,) = drawn
    assert "n at each point" in " ".join(fig["titles"]), fig["titles"]  # one panel: the axes' own title
    assert {"n=1", "n=2"} <= set(fig["texts"]), fig["texts"]
    assert all(text == "" for text in fig["offsets"])
