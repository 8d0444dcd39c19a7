"""Sequential seeds: a point gets its second and third seed only while its comparison is still undecided.

**The rule: a two-sided group-sequential z-test with Pocock boundaries** (Pocock 1977; Jennison & Turnbull,
*Group Sequential Methods*, 2000, ch. 2), looks at seeds 1..K (K = the sweep's seeds, 3 in the catalog). At look
k the statistic is the mean paired difference of the first k seeds (AnB minus its control, same seed = same data
order) over its standard error, ``Z_k = mean(d_1..d_k) x sqrt(k) / sd``. The comparison is decided at the first
look where ``|Z_k| >= c_k`` (higher or lower, by the sign); after look K without a crossing it stays undecided
("no difference shown"). Pocock's boundary is one constant c for every look, chosen so that the chance of *any*
crossing under no difference is exactly alpha: 2.178 (K = 2), 2.289 (K = 3), 2.361 (K = 4) at alpha = 0.05,
computed here from the joint normal law of Z_1..Z_K (corr(Z_i, Z_j) = sqrt(i/j)). O'Brien-Fleming's boundary
(``c_k = c sqrt(K/k)``: 3.471, 2.454, 2.004 for K = 3) is the option that spends almost nothing early; Pocock's
is the default because the point of the rule is to stop early. Re-testing at 1.96 at every look instead gives
an error rate of 10.7% at K = 3 (what the simulation in tests/test_sequential.py shows).

**The variance is the crux.** The rule is exact when ``sd`` -- the standard deviation of one seed's paired
difference -- is known. It holds two parts: the validation set's binomial noise (known from top-1 and the
validation size) and the seed-to-seed spread of training, which one seed cannot show. **The binomial noise alone
is not conservative**: at n_val ~ 25k and top-1 ~ 0.7 it is about 0.6 points of relative top-1 for a
difference, and a seed-to-seed spread of a few tenths of a point of top-1 (what ImageNet CNNs show between
seeds) makes the real sd larger; simulated, the rule's error rate then rises from 5% to 6-73% as the spread grows
from 0.1 to 0.6 points (tests/test_sequential.py). :func:`seed_variance` therefore measures the spread where
several seeds exist: the base cells (every (arch, dataset) trains its reference for every seed anyway), whose
top-1 varies between seeds by training spread and binomial noise together. A paired difference of two such cells
varies at most twice as much (its two cells share the data order, which correlates them positively), so
``sd^2 = 2 x s^2`` (:func:`difference_sd`) with s^2 the pooled between-seed variance of base top-1 relative to
its mean. That s^2 is an estimate on few degrees of freedom (a catalog has tens of base groups), so each look's
boundary is a t quantile on its degrees of freedom (``df``; :func:`boundaries`): 2.54 instead of 2.29 at 16 df,
K = 3. The simulation in tests/test_sequential.py checks the error rate with the sd estimated exactly so.

The error rate is per comparison; a catalog makes hundreds, and about alpha of the true nulls will be called
different by any per-comparison rule, sequential or not.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections import defaultdict
from typing import Any

BOUNDARIES = ("pocock", "obrien-fleming")


@functools.lru_cache(maxsize=256)
def boundaries(looks: int, alpha: float = 0.05, kind: str = "pocock", df: int | None = None) -> tuple[float, ...]:
    """Two-sided critical values c_1..c_K with P(any |Z_k| >= c_k | no difference) = alpha (sd known).

    ``df``: the sd is an estimate on that many degrees of freedom. Each look then keeps the known-sd design's
    nominal level, as a t quantile on ``df`` (Jennison & Turnbull's significance-level approach, ch. 11): the
    error rate stays at most alpha (4.3% at 4 df, 4.8% at 16, 4.9% at 40 for Pocock, K = 3: multivariate t
    integration), a little conservative because one shared estimate makes the looks agree more."""
    from scipy.optimize import brentq
    from scipy.stats import norm, t

    if kind not in BOUNDARIES:
        raise ValueError(f"unknown boundary {kind!r}; use one of {', '.join(BOUNDARIES)}")
    if looks < 1:
        raise ValueError("looks must be >= 1")
    if df is not None and df < 1:
        raise ValueError("df must be >= 1 (or None for a known sd)")
    shape = [1.0] * looks if kind == "pocock" else [math.sqrt(looks / k) for k in range(1, looks + 1)]

    def excess(c: float) -> float:
        return 1.0 - _stay_probability(tuple(c * s for s in shape), 0.0) - alpha

    c = brentq(excess, 1.0, 6.0, xtol=1e-7)
    known = [c * s for s in shape]
    if df is None:
        return tuple(round(b, 5) for b in known)
    return tuple(round(float(t.ppf(norm.cdf(b), df)), 5) for b in known)


def _covariance(looks: int) -> list[list[float]]:
    return [[math.sqrt(min(i, j) / max(i, j)) for j in range(1, looks + 1)] for i in range(1, looks + 1)]


def _stay_probability(bounds: tuple[float, ...], drift: float) -> float:
    """P(|Z_k| < c_k for every look k) when Z_k has mean drift x sqrt(k) (drift = effect / sd), sd known."""
    from scipy.stats import multivariate_normal, norm

    k = len(bounds)
    mean = [drift * math.sqrt(i) for i in range(1, k + 1)]
    if k == 1:
        return float(norm.cdf(bounds[0] - mean[0]) - norm.cdf(-bounds[0] - mean[0]))
    law = multivariate_normal(mean=mean, cov=_covariance(k), allow_singular=True)
    lower = [-b for b in bounds]
    try:  # a fixed stream: Genz's integration is randomised (scipy >= 1.15 names it rng, earlier random_state)
        return float(law.cdf(list(bounds), lower_limit=lower, rng=0))
    except TypeError:
        return float(law.cdf(list(bounds), lower_limit=lower, random_state=0))


def stopping_probabilities(looks: int, drift: float, alpha: float = 0.05, kind: str = "pocock") -> list[float]:
    """P(decided at look k) for k = 1..K, and last P(undecided after K), for an effect of ``drift`` sds."""
    bounds = boundaries(looks, alpha, kind)
    stay = [1.0] + [_stay_probability(bounds[:k], drift) for k in range(1, looks + 1)]
    return [stay[k - 1] - stay[k] for k in range(1, looks + 1)] + [stay[looks]]


def expected_seeds(looks: int, drift: float, alpha: float = 0.05, kind: str = "pocock") -> dict[str, float]:
    """Seeds a point trains under the rule: expected (an effect of ``drift`` sds; 0 = no difference), best
    (decided at seed 1) and worst (all K), and the chance of a decision."""
    p = stopping_probabilities(looks, drift, alpha, kind)
    expected = sum(k * p[k - 1] for k in range(1, looks + 1)) + looks * p[looks]
    return {"expected": expected, "best": 1.0, "worst": float(looks), "decided": 1.0 - p[looks]}


# ---- the known sd ------------------------------------------------------------------------------------------------
def binomial_sd(top1_a: float, top1_b: float, n_val: int, reference_top1: float) -> float:
    """The validation set's binomial noise of one seed's difference of relative top-1 (both cells measured on
    ``n_val`` images, divided by the same reference): a lower bound of the real sd (see the module doc)."""
    return math.sqrt(max(top1_a * (1 - top1_a), 0.0) / n_val + max(top1_b * (1 - top1_b), 0.0) / n_val) / reference_top1


def seed_variance(base_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The between-seed variance of base-cell top-1 relative to its mean, pooled over the (arch, dataset) groups
    with two or more seeds, and its degrees of freedom (what :func:`boundaries` takes as ``df``).

    ``base_rows``: rows of ``tables.collect`` (stage ``base``); each row's ``top1`` and (arch, target or source).
    """
    groups: dict[tuple[Any, ...], list[float]] = defaultdict(list)
    for r in base_rows:
        if r.get("stage") == "base" and r.get("top1") is not None:
            groups[(r.get("arch"), r.get("target") or r.get("source"), r.get("variant"))].append(float(r["top1"]))
    ss, df = 0.0, 0
    for values in groups.values():
        if len(values) >= 2 and statistics.fmean(values) > 0:
            mean = statistics.fmean(values)
            ss += sum((v / mean - 1.0) ** 2 for v in values)
            df += len(values) - 1
    if df == 0:
        return {"variance": None, "df": 0, "groups": 0}
    return {"variance": ss / df, "df": df, "groups": sum(len(v) >= 2 for v in groups.values())}


def difference_sd(seed_var: float) -> float:
    """The sd of one seed's paired difference of relative top-1 from the base cells' between-seed variance
    (relative to their mean; it holds their binomial noise too): two cells' worth, which bounds the difference
    of two positively correlated cells (module doc)."""
    return math.sqrt(2.0 * seed_var)


# ---- the decision ------------------------------------------------------------------------------------------------
def decide(differences: list[float], sd: float, looks: int, alpha: float = 0.05, kind: str = "pocock",
           df: int | None = None) -> dict[str, Any]:
    """The rule on one comparison's per-seed paired differences (AnB minus control, seed order): decided
    ``higher`` / ``lower`` at the first look whose |Z| reaches its boundary, else ``undecided``; ``next_seed``
    says whether another seed should be trained (undecided and fewer than ``looks`` seeds). ``sd``: one seed's
    sd of a difference (:func:`difference_sd`), estimated on ``df`` degrees of freedom (None: known)."""
    if sd <= 0:
        raise ValueError("sd must be > 0: the seed-to-seed sd of a paired difference (difference_sd)")
    bounds = boundaries(looks, alpha, kind, df)
    out: dict[str, Any] = {"decision": "undecided", "look": None, "z": None, "boundary": None, "seeds": 0,
                           "next_seed": False,
                           "rule": f"{kind}, K = {looks}, alpha = {alpha}, sd {'known' if df is None else f'on {df} df'}",
                           "boundaries": list(bounds), "sd": sd, "df": df}
    for k in range(1, min(len(differences), looks) + 1):
        z = statistics.fmean(differences[:k]) * math.sqrt(k) / sd
        out.update(z=z, boundary=bounds[k - 1], seeds=k)
        if abs(z) >= bounds[k - 1]:
            out.update(decision="higher" if z > 0 else "lower", look=k)
            return out
    out["next_seed"] = len(differences) < looks
    return out


def plan_lines(points: int, looks: int, drift: float, alpha: float = 0.05, kind: str = "pocock") -> list[str]:
    """What the plan view prints for ``points`` comparisons: seeds in the best, expected and worst case."""
    null = expected_seeds(looks, 0.0, alpha, kind)
    effect = expected_seeds(looks, drift, alpha, kind)
    return [f"sequential seeds ({kind}, K = {looks}, alpha = {alpha}): best {points:,} cells (every point decided "
            f"at seed 1), worst {points * looks:,} (all {looks} seeds)",
            f"  expected {points * null['expected']:,.0f} if no comparison differs, {points * effect['expected']:,.0f} "
            f"if every one differs by {drift:g} sd ({effect['decided']:.0%} decided)"]
