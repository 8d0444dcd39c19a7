"""Sequential seeds: the group-sequential rule's error rate under repeated looks, checked by simulating sweeps
with realistic noise, against a naive re-test at every look; and the seeds it spends."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from pipeline.results.sequential import (
    binomial_sd,
    boundaries,
    decide,
    difference_sd,
    expected_seeds,
    plan_lines,
    seed_variance,
)

ALPHA, LOOKS, SWEEPS = 0.05, 3, 20_000
MC = 3 * (ALPHA * (1 - ALPHA) / SWEEPS) ** 0.5  # three Monte-Carlo standard errors at alpha


def simulate(n_val: int, tau: float, rho: float, rng: np.random.Generator, delta: float = 0.0,
             base_groups: int = 8, seeds: int = 3, p: float = 0.70) -> dict[str, np.ndarray]:
    """SWEEPS independent sweeps of one comparison (AnB vs a control, paired by seed) at LOOKS seeds.

    Realistic noise, not the rule's own model: each cell's top-1 has a seed-to-seed spread ``tau`` (the two cells
    of a seed correlate by ``rho``: they share the data order) and is then measured on ``n_val`` validation images
    (binomial); relative top-1 divides by the seed's own base cell, itself noisy. The rule's sd is estimated as a
    sweep would: from ``base_groups`` (arch, dataset) base cells with ``seeds`` seeds each, their own means
    drawn between 0.6 and 0.8.
    """
    shape = (SWEEPS, base_groups, seeds)
    means = rng.uniform(0.6, 0.8, size=(SWEEPS, base_groups, 1))
    base = rng.binomial(n_val, np.clip(means + tau * rng.standard_normal(shape), 0, 1)) / n_val
    relative = base / base.mean(axis=2, keepdims=True)
    df = base_groups * (seeds - 1)
    variance = ((relative - 1) ** 2).sum(axis=(1, 2)) / df
    reference = rng.binomial(n_val, np.clip(p + tau * rng.standard_normal((SWEEPS, LOOKS)), 0, 1)) / n_val
    e = rng.standard_normal((SWEEPS, LOOKS, 2))
    ea, eb = e[..., 0], rho * e[..., 0] + np.sqrt(1 - rho**2) * e[..., 1]
    a = rng.binomial(n_val, np.clip(p * (1 + delta) + tau * ea, 0, 1)) / n_val
    b = rng.binomial(n_val, np.clip(p + tau * eb, 0, 1)) / n_val
    return {"d": (a - b) / reference, "sd": np.sqrt(2 * variance), "df": df,
            "binomial": np.full(SWEEPS, binomial_sd(p, p, n_val, p)),
            "true": np.full(SWEEPS, np.sqrt(2 * tau**2 * (1 - rho) + 2 * p * (1 - p) / n_val) / p)}


def run(d: np.ndarray, sd: np.ndarray, bounds: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(decided, seeds used) of every simulated sweep under boundaries ``bounds``."""
    k = np.arange(1, LOOKS + 1)
    z = np.cumsum(d, axis=1) / k * np.sqrt(k) / sd[:, None]
    cross = np.abs(z) >= np.asarray(bounds)
    decided = cross.any(axis=1)
    return decided, np.where(decided, cross.argmax(axis=1) + 1, LOOKS)


# n_val 10k-50k; seed-to-seed spread of top-1 0.1-0.6 points; the two cells of a seed uncorrelated or correlated
SCENARIOS = [(10_000, 0.003, 0.0), (25_000, 0.001, 0.0), (50_000, 0.006, 0.0), (25_000, 0.003, 0.5)]


@pytest.mark.parametrize("n_val, tau, rho", SCENARIOS)
def test_the_rule_keeps_its_error_rate_under_repeated_looks_and_a_naive_retest_does_not(
        n_val: int, tau: float, rho: float) -> None:
    sim = simulate(n_val, tau, rho, np.random.default_rng(n_val + int(tau * 1e4) + int(rho * 10)))
    rule, _ = run(sim["d"], sim["sd"], boundaries(LOOKS, ALPHA, "pocock", sim["df"]))
    assert rule.mean() <= ALPHA + MC, rule.mean()  # the rule as the sweep runs it, sd estimated
    naive, _ = run(sim["d"], sim["true"], (norm.ppf(1 - ALPHA / 2),) * LOOKS)
    assert naive.mean() > ALPHA + 5 * MC, naive.mean()  # 1.96 at every look, even with the true sd: ~10.7%
    if rho == 0.0:  # the bound 2 x s^2 is exact here: re-testing the sweep's own sd at 1.96 inflates too
        estimated_naive, _ = run(sim["d"], sim["sd"], (norm.ppf(1 - ALPHA / 2),) * LOOKS)
        assert estimated_naive.mean() > ALPHA + 5 * MC
    if tau >= 0.003:  # the validation set's binomial noise alone as the known sd: not conservative
        binomial, _ = run(sim["d"], sim["binomial"], boundaries(LOOKS, ALPHA, "pocock"))
        assert binomial.mean() > ALPHA + 5 * MC, binomial.mean()


def test_o_brien_fleming_keeps_it_too() -> None:
    sim = simulate(25_000, 0.003, 0.0, np.random.default_rng(7))
    decided, _ = run(sim["d"], sim["sd"], boundaries(LOOKS, ALPHA, "obrien-fleming", sim["df"]))
    assert decided.mean() <= ALPHA + MC


def test_expected_seeds_match_simulated_sweeps_under_no_difference_and_a_real_one() -> None:
    for drift in (0.0, 2.0):
        sim = simulate(25_000, 0.003, 0.0, np.random.default_rng(11), delta=0.0)
        sd = sim["true"]
        d = sim["d"] + drift * sd[:, None]  # an effect of `drift` sds of one seed's difference
        decided, seeds = run(d, sd, boundaries(LOOKS, ALPHA, "pocock"))
        expected = expected_seeds(LOOKS, drift, ALPHA, "pocock")
        assert seeds.mean() == pytest.approx(expected["expected"], abs=0.02)
        assert decided.mean() == pytest.approx(expected["decided"], abs=0.01)
    assert expected_seeds(LOOKS, 0.0)["expected"] > 2.9 and expected_seeds(LOOKS, 3.0)["expected"] < 1.3


def test_pocock_and_o_brien_fleming_constants_are_the_published_ones() -> None:
    # Jennison & Turnbull (2000) Tables 2.1 / 2.3: two-sided alpha = 0.05
    assert boundaries(2) == pytest.approx((2.178, 2.178), abs=2e-3)
    assert boundaries(3) == pytest.approx((2.289,) * 3, abs=2e-3)
    assert boundaries(4) == pytest.approx((2.361,) * 4, abs=2e-3)
    assert boundaries(3, kind="obrien-fleming") == pytest.approx((3.471, 2.454, 2.004), abs=3e-3)
    assert boundaries(3, df=16)[0] > boundaries(3)[0]  # an estimated sd widens every look's boundary


def test_decide_stops_at_the_first_crossing_and_asks_for_a_seed_while_undecided() -> None:
    sd = 0.01
    first = decide([0.03], sd, LOOKS)
    assert (first["decision"], first["look"], first["next_seed"]) == ("higher", 1, False)
    assert first["boundary"] == pytest.approx(2.289, abs=2e-3) and "pocock" in first["rule"]
    pending = decide([0.01], sd, LOOKS)
    assert (pending["decision"], pending["next_seed"], pending["seeds"]) == ("undecided", True, 1)
    second = decide([0.01, -0.035], sd, LOOKS)  # mean -0.0125 x sqrt(2) / 0.01 = -1.77: still open
    assert second["decision"] == "undecided" and second["next_seed"]
    last = decide([0.01, -0.01, 0.0], sd, LOOKS)
    assert (last["decision"], last["next_seed"], last["seeds"]) == ("undecided", False, 3)
    assert decide([-0.02, -0.03], sd, LOOKS)["decision"] == "lower"
    with pytest.raises(ValueError, match="sd must be > 0"):
        decide([0.1], 0.0, LOOKS)


def test_the_sd_comes_from_the_base_cells_seed_spread() -> None:
    rows = [{"stage": "base", "arch": a, "target": t, "variant": "base-B", "top1": v}
            for a, t, values in (("r18", "B", (0.70, 0.72, 0.71)), ("r50", "B", (0.80, 0.79, 0.81)))
            for v in values] + [{"stage": "base", "arch": "c", "target": "B", "variant": "base-B", "top1": 0.5}]
    spread = seed_variance(rows)
    expected = (sum((v / 0.71 - 1) ** 2 for v in (0.70, 0.72, 0.71)) + sum((v / 0.80 - 1) ** 2 for v in
                                                                            (0.80, 0.79, 0.81))) / 4
    assert spread["df"] == 4 and spread["groups"] == 2 and spread["variance"] == pytest.approx(expected)
    assert difference_sd(spread["variance"]) == pytest.approx((2 * expected) ** 0.5)
    assert seed_variance(rows[-1:])["variance"] is None


def test_the_plan_view_gets_best_expected_and_worst_case_seeds() -> None:
    best, expected = plan_lines(100, LOOKS, drift=2.0)
    assert "best 100 cells" in best and "worst 300" in best
    assert "expected 294 if no comparison differs" in expected and "189 if every one differs by 2 sd" in expected
