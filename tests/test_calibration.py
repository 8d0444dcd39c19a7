"""Calibration of a short budget against the full one: rank correlation, largest difference, verdicts."""

from __future__ import annotations

import random
from typing import Any

import pytest

from pipeline.results.calibration import THRESHOLDS, calibrate, lines, verdict

KEY = {"arch": "convnext_demo", "source_arch": "convnext_demo", "unit_kind": "depthwise", "target": "B",
       "stage": "transfer"}
SOURCE = {"AnB": "A", "BnB": "B", "random-frozen": "none"}  # as tables.collect names them


def rows(curves: dict[str, list[float]], seeds: int = 3, noise: float = 0.002, seed: int = 0,
         depths: tuple[int, ...] = (1, 3, 5, 7)) -> list[dict[str, Any]]:
    """Rows as tables.collect gives them: relative top-1 per (variant, depth, seed) around each curve's value."""
    rng = random.Random(seed)
    out = []
    for variant, values in curves.items():
        for depth, value in zip(depths, values, strict=True):
            for s in range(seeds):
                rel = value + rng.gauss(0, noise)
                out.append({**KEY, "variant": variant, "source": SOURCE[variant], "depth": depth, "seed": s,
                            "relative_top1": rel,
                            "top1": 0.8 * rel, "reference_top1": 0.8, "val_samples": 5000})
    return out


FULL = {"AnB": [0.99, 0.95, 0.90, 0.84], "BnB": [1.0, 0.99, 0.98, 0.97], "random-frozen": [0.93, 0.85, 0.76, 0.66]}


def test_a_short_budget_that_reproduces_the_full_one_is_faithful() -> None:
    short = {v: [x - 0.01 for x in values] for v, values in FULL.items()}  # everything a point lower
    report = calibrate(rows(short, seed=1), rows(FULL, seed=2))
    (group,) = report["groups"]
    assert report["faithful"] and group["faithful"] and group["reasons"] == []
    assert group["spearman"] > 0.95 and group["spearman_informative"]
    assert group["max_abs_diff"] == pytest.approx(0.01, abs=0.006)
    assert len(group["verdicts"]) == 8 and group["verdicts_changed_beyond_noise"] == 0  # 2 comparisons x 4 depths
    assert {v["full"] for v in group["verdicts"] if v["comparison"] == "AnB vs random-frozen"} == {"higher"}
    assert report["thresholds"] == THRESHOLDS and "faithful" in lines(report)[-1]


def test_a_short_budget_that_loses_anbs_fall_with_depth_is_not_faithful() -> None:
    """Too short to learn: every variant near the same value, so AnB no longer beats random-frozen and BnB no
    longer beats AnB at depth -- the paper's two verdicts change."""
    short = {"AnB": [0.80, 0.80, 0.79, 0.80], "BnB": [0.80, 0.79, 0.80, 0.80], "random-frozen": [0.80, 0.80, 0.80, 0.79]}
    report = calibrate(rows(short, seed=3), rows(FULL, seed=4))
    (group,) = report["groups"]
    assert not report["faithful"] and group["verdicts_changed_beyond_noise"] >= 4
    assert any("change beyond noise" in r for r in group["reasons"]) and any("largest difference" in r
                                                                             for r in group["reasons"])
    assert "NOT faithful" in lines(report)[0]


def test_a_reversed_verdict_alone_makes_a_budget_unfaithful() -> None:
    short = {**FULL, "random-frozen": [0.999, 0.97, 0.92, 0.86]}  # random-frozen now above AnB at every depth
    report = calibrate(rows(short, seed=5), rows(FULL, seed=6), thresholds={"max_abs_diff": 0.5,
                                                                            "max_changed_share": 1.0})
    (group,) = report["groups"]
    assert group["verdicts_reversed"] >= 3 and not group["faithful"]
    assert any("reverse" in r for r in group["reasons"])


def test_a_flat_curve_is_judged_on_its_differences_and_verdicts_not_its_rank_correlation() -> None:
    """ConvNeXt's depthwise units: every variant at 1.0 within noise. The ranks are noise (Spearman near 0),
    which must not call a faithful budget unfaithful."""
    flat = {"AnB": [1.0] * 4, "BnB": [1.0] * 4, "random-frozen": [1.0] * 4}
    report = calibrate(rows(flat, seed=7, noise=0.003), rows(flat, seed=8, noise=0.003))
    (group,) = report["groups"]
    assert not group["spearman_informative"] and group["faithful"]
    assert group["full_spread"] <= group["noise_band"]


def test_verdicts_that_flip_by_chance_do_not_call_a_faithful_budget_unfaithful() -> None:
    """The same curves at both budgets, 3 seeds of realistic noise, 200 times: single verdicts near the line
    gain or lose significance now and then, but the group is called unfaithful in at most about alpha of the
    repeats (the Bonferroni rule), not in the third of them that counting every flip would give."""
    near = {"AnB": [0.99, 0.985, 0.98, 0.975], "BnB": [1.0, 0.99, 0.985, 0.98], "random-frozen": [0.99, 0.98, 0.98,
                                                                                                0.97]}
    calls = [calibrate(rows(near, seed=2 * i, noise=0.004), rows(near, seed=2 * i + 1, noise=0.004))
             for i in range(200)]
    flipped = sum(c["groups"][0]["verdicts_changed"] > 0 for c in calls)
    unfaithful = sum(not c["faithful"] for c in calls)
    assert flipped > 40  # flips happen (a rule that counted them would reject a faithful budget this often)
    assert unfaithful <= 0.05 * 200 + 3 * (0.05 * 0.95 * 200) ** 0.5  # alpha, within Monte-Carlo error


def test_a_one_seed_verdict_uses_the_validation_sets_binomial_noise() -> None:
    a = {0: {"relative_top1": 0.95, "top1": 0.76, "reference_top1": 0.8, "val_samples": 10000}}
    b = {0: {"relative_top1": 0.90, "top1": 0.72, "reference_top1": 0.8, "val_samples": 10000}}
    result = verdict(a, b)
    se = ((0.76 * 0.24 + 0.72 * 0.28) / 10000) ** 0.5 / 0.8
    assert result["verdict"] == "higher" and result["noise"] == "binomial (one seed)"
    assert result["high"] - result["diff"] == pytest.approx(1.959964 * se, rel=1e-4)
    close = {0: {**b[0], "relative_top1": 0.945, "top1": 0.756}}
    assert verdict(a, close)["verdict"] == "no difference"
