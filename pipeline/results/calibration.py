"""Is a short budget faithful? The same comparisons trained at a short and at the full budget, compared.

A cheaper schedule is worth using only if the paper's comparisons come out the same. Given the rows of a
short-budget and a full-budget results table (``pipeline.results.tables.collect``), per comparison group -- one
(arch, source arch, unit kind, target): every variant, source and depth of one panel (AnB's source is the transfer's,
BnB's the target, random-frozen's none) -- this reports:

* **rank correlation** (Spearman, scipy) between the short and the full budget's mean relative top-1 (over seeds)
  at every (variant, source, depth) the two share: does the short budget order the points as the full one does? Pooled
  over the group's variants, and per variant over depths. Where the full budget's points do not spread beyond
  their own noise (a flat curve, e.g. ConvNeXt's depthwise units), a rank correlation measures noise: it is
  reported with ``informative: false`` and not used for the decision.
* **largest absolute difference** of mean relative top-1 between the budgets, and where.
* **verdicts** per depth, at each budget: AnB vs random-frozen and AnB vs BnB (:func:`verdict`): the paired
  difference over seeds (same seed = same data order) and its 95% confidence interval -- Student-t over seeds
  from two seeds up; with one seed, the validation set's binomial noise of the difference (a lower bound of the
  real noise, which also holds the seed-to-seed spread, so a one-seed verdict errs towards "different"). The
  verdict is "higher" / "lower" when the interval excludes 0, else "no difference". A verdict *reverses* when it
  goes from higher to lower (or back). A verdict that only gains or loses significance is *changed* -- which
  happens by chance to a comparison near the line (two 5% tests on a true null differ about 10% of the time) --
  and counts as *changed beyond noise* only when the two budgets' paired differences themselves differ by more
  than their combined noise (Welch's t) at the Bonferroni level alpha / m (m = the group's verdicts): then a
  budget that reproduces the full one is called unfaithful in at most about alpha of groups.

**Decision** (:data:`THRESHOLDS`, stated in every report): a group is faithful when no verdict reverses, at most
``max_changed_share`` of its verdicts change beyond noise (default none), the largest absolute difference is at
most ``max_abs_diff``, and -- where informative -- the pooled rank correlation is at least ``min_spearman``. The
calibration is faithful when every group is. Plain dicts throughout, so a view prints them and a test reads them.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

GROUP = ("arch", "source_arch", "unit_kind", "target")
Point = tuple[str, str, int]  # (variant, source, depth)
COMPARISONS = (("AnB", "random-frozen"), ("AnB", "BnB"))
THRESHOLDS = {
    "min_spearman": 0.8,  # the short budget orders the points as the full one (where the full one spreads)
    "max_abs_diff": 0.05,  # 5 points of relative top-1: more changes how a panel reads
    "max_changed_share": 0.0,  # verdicts that may change beyond noise (none may reverse)
    "alpha": 0.05,  # each verdict's interval is a (1 - alpha) one
}


def _value(row: dict[str, Any], key: str) -> float | None:
    value = row.get(key)
    return float(value) if value is not None else None


def _index(rows: list[dict[str, Any]], key: str) -> dict[tuple[Any, ...], dict[Point, dict[int, dict]]]:
    """group -> (variant, source, depth) -> seed -> row, transfer rows with a value only."""
    out: dict[tuple[Any, ...], dict[Point, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r.get("stage", "transfer") != "transfer" or _value(r, key) is None:
            continue
        point = (str(r.get("variant")), str(r.get("source")), int(r.get("depth") or 0))
        out[tuple(r.get(k) for k in GROUP)][point][r.get("seed")] = r
    return out


def _control(points: list[Point], variant: str, depth: int, target: Any) -> Point | None:
    """The control point of ``variant`` at ``depth``: the one trained from the target (BnB) if several."""
    found = sorted(p for p in points if p[0] == variant and p[2] == depth)
    return next((p for p in found if p[1] == str(target)), found[0] if found else None)


def _binomial_sd(row: dict[str, Any]) -> float | None:
    """The validation set's binomial standard error of a cell's relative top-1 (top-1 / its reference's)."""
    p, ref, n = row.get("top1"), row.get("reference_top1"), row.get("val_samples")
    if p is None or not ref or not n:
        return None
    return math.sqrt(max(p * (1 - p), 0.0) / n) / ref


def verdict(a: dict[int, dict], b: dict[int, dict], key: str = "relative_top1",
            alpha: float = 0.05) -> dict[str, Any]:
    """AnB (``a``: seed -> row) against a control (``b``) at one depth: the paired difference over the seeds
    both have, its (1 - alpha) interval and the verdict (see the module doc)."""
    from scipy.stats import norm, t

    seeds = sorted(set(a) & set(b), key=str)
    diffs = [_value(a[s], key) - _value(b[s], key) for s in seeds]  # type: ignore[operator]
    if not diffs:
        return {"n": 0, "diff": None, "low": None, "high": None, "se": None, "df": None, "verdict": None,
                "noise": None}
    mean = statistics.fmean(diffs)
    if len(diffs) >= 2:
        se = statistics.stdev(diffs) / math.sqrt(len(diffs))
        half = t.ppf(1 - alpha / 2, len(diffs) - 1) * se
        noise = "t over seeds"
    else:
        sds = [_binomial_sd(a[seeds[0]]), _binomial_sd(b[seeds[0]])]
        se = math.sqrt(sum(s * s for s in sds)) if None not in sds else math.inf  # type: ignore[operator]
        half = norm.ppf(1 - alpha / 2) * se
        noise = "binomial (one seed)" if None not in sds else "unknown (one seed, no validation size)"
    low, high = mean - half, mean + half
    call = "higher" if low > 0 else "lower" if high < 0 else "no difference"
    return {"n": len(diffs), "diff": mean, "low": low, "high": high, "se": se,
            "df": len(diffs) - 1 if len(diffs) >= 2 else None, "verdict": call, "noise": noise}


def _welch_quantile(level: float, s: dict[str, Any], f: dict[str, Any]) -> float:
    """The t quantile for the difference of two verdicts' differences, on Welch-Satterthwaite degrees of freedom
    (a one-seed side's binomial noise is known: infinite degrees of freedom)."""
    from scipy.stats import norm, t

    parts = [(x["se"] ** 2, x["df"]) for x in (s, f)]
    known = [v for v, df in parts if df is None]
    estimated = [(v, df) for v, df in parts if df is not None]
    if not estimated:
        return float(norm.ppf(level))
    total = sum(v for v, _ in parts)
    denominator = sum(v * v / df for v, df in estimated)
    df = total * total / denominator if denominator > 0 else math.inf
    return float(t.ppf(level, df)) if math.isfinite(df) and not (known and df > 1e6) else float(norm.ppf(level))


def _spearman(xs: list[float], ys: list[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    rho = spearmanr(xs, ys).statistic
    return None if rho is None or math.isnan(rho) else float(rho)


def calibrate_group(short: dict[Point, dict[int, dict]], full: dict[Point, dict[int, dict]],
                    key: str = "relative_top1", thresholds: dict[str, float] | None = None,
                    target: Any = None) -> dict[str, Any]:
    """One group's report: rank correlation, largest difference, verdicts, and its decision with reasons."""
    th = {**THRESHOLDS, **(thresholds or {})}
    points = sorted(set(short) & set(full))
    means = {p: (statistics.fmean(_value(r, key) for r in short[p].values()),  # type: ignore[misc]
                 statistics.fmean(_value(r, key) for r in full[p].values()))  # type: ignore[misc]
             for p in points}
    spread = max((m[1] for m in means.values()), default=0.0) - min((m[1] for m in means.values()), default=0.0)
    # the noise band of one full-budget point: 1.96 x its standard error (over seeds, else binomial)
    errors = []
    for p in points:
        values = [_value(r, key) for r in full[p].values()]
        if len(values) >= 2:
            errors.append(statistics.stdev(values) / math.sqrt(len(values)))  # type: ignore[arg-type]
        else:
            sd = _binomial_sd(next(iter(full[p].values())))
            if sd is not None:
                errors.append(sd)
    band = 2 * 1.96 * statistics.median(errors) if errors else 0.0  # two points' bands: apart beyond noise
    pooled = _spearman([means[p][0] for p in points], [means[p][1] for p in points])
    by_variant = {}
    for variant in sorted({p[0] for p in points}):
        mine = [p for p in points if p[0] == variant]
        by_variant[variant] = _spearman([means[p][0] for p in mine], [means[p][1] for p in mine])
    worst = max(points, key=lambda p: abs(means[p][0] - means[p][1]), default=None)
    diff = abs(means[worst][0] - means[worst][1]) if worst else None

    pairs = []
    for first, control in COMPARISONS:
        sources = sorted({p[1] for p in points if p[0] == first})
        for point in [p for p in points if p[0] == first]:
            other = _control(points, control, point[2], target)
            if other is None:
                continue
            name = f"{first}{f' ({point[1]})' if len(sources) > 1 else ''} vs {control}"
            pairs.append((name, point[2], verdict(short[point], short[other], key, th["alpha"]),
                          verdict(full[point], full[other], key, th["alpha"])))
    level = 1 - th["alpha"] / (2 * max(1, len(pairs)))  # Bonferroni over the group's verdicts
    verdicts = []
    for name, depth, s, f in pairs:
        reversed_ = {s["verdict"], f["verdict"]} == {"higher", "lower"}
        apart = False
        if s["diff"] is not None and f["diff"] is not None:
            apart = abs(s["diff"] - f["diff"]) > _welch_quantile(level, s, f) * math.hypot(s["se"], f["se"])
        verdicts.append({"comparison": name, "depth": depth, "short": s["verdict"],
                         "full": f["verdict"], "same": s["verdict"] == f["verdict"], "reversed": reversed_,
                         "beyond_noise": s["verdict"] != f["verdict"] and apart,
                         "short_diff": s["diff"], "full_diff": f["diff"], "short_n": s["n"], "full_n": f["n"],
                         "noise": f["noise"]})
    changed = sum(not v["same"] for v in verdicts)
    beyond = sum(v["beyond_noise"] for v in verdicts)
    reversed_n = sum(v["reversed"] for v in verdicts)
    informative = spread > band and pooled is not None
    reasons = []
    if reversed_n:
        reasons.append(f"{reversed_n} verdict(s) reverse")
    if verdicts and beyond / len(verdicts) > th["max_changed_share"]:
        reasons.append(f"{beyond} of {len(verdicts)} verdicts change beyond noise (> {th['max_changed_share']:.0%})")
    if diff is not None and diff > th["max_abs_diff"]:
        reasons.append(f"largest difference {diff:.4f} > {th['max_abs_diff']}")
    if informative and pooled < th["min_spearman"]:  # type: ignore[operator]
        reasons.append(f"rank correlation {pooled:.2f} < {th['min_spearman']}")
    if not points:
        reasons.append("no (variant, depth) point trained at both budgets")
    return {"points": len(points), "spearman": pooled, "spearman_informative": informative,
            "spearman_by_variant": by_variant, "full_spread": spread, "noise_band": band,
            "max_abs_diff": diff,
            "max_abs_diff_at": {"variant": worst[0], "source": worst[1], "depth": worst[2]} if worst else None,
            "verdicts": verdicts, "verdicts_changed": changed, "verdicts_changed_beyond_noise": beyond,
            "verdicts_reversed": reversed_n,
            "faithful": not reasons, "reasons": reasons}


def calibrate(short_rows: list[dict[str, Any]], full_rows: list[dict[str, Any]], key: str = "relative_top1",
              thresholds: dict[str, float] | None = None) -> dict[str, Any]:
    """Every comparison group both tables hold: its report, and whether the short budget is faithful overall."""
    th = {**THRESHOLDS, **(thresholds or {})}
    short, full = _index(short_rows, key), _index(full_rows, key)
    groups = []
    for group in sorted(set(short) & set(full), key=str):
        report = calibrate_group(short[group], full[group], key, th, target=group[GROUP.index("target")])
        groups.append({"group": dict(zip(GROUP, group, strict=True)), **report})
    missing = sorted(set(full) ^ set(short), key=str)
    return {"faithful": bool(groups) and all(g["faithful"] for g in groups), "groups": groups,
            "unmatched_groups": [dict(zip(GROUP, g, strict=True)) for g in missing], "thresholds": th,
            "value": key,
            "rule": ("faithful: no verdict reverses, at most max_changed_share of verdicts change beyond noise "
                     "(Bonferroni alpha / m), largest |short - full| <= max_abs_diff, Spearman >= min_spearman "
                     "where the full curve spreads beyond its noise; verdict: the paired difference over seeds, "
                     "its (1 - alpha) interval excludes 0")}


def lines(report: dict[str, Any]) -> list[str]:
    """One line per group and a last line with the decision, for a terminal."""
    out = []
    for g in report["groups"]:
        key = g["group"]
        name = f"{key['arch']}{' <- ' + key['source_arch'] if key['source_arch'] not in (None, key['arch']) else ''}" \
               f" {key['unit_kind'] or ''} -> {key['target']}"
        rho = "n/a" if g["spearman"] is None else f"{g['spearman']:.2f}{'' if g['spearman_informative'] else ' (flat)'}"
        diff = "n/a" if g["max_abs_diff"] is None else f"{g['max_abs_diff']:.4f}"
        out.append(f"{name}: {g['points']} points, Spearman {rho}, max |diff| {diff}, verdicts "
                   f"{len(g['verdicts']) - g['verdicts_changed']}/{len(g['verdicts'])} same "
                   f"({g['verdicts_changed_beyond_noise']} changed beyond noise), "
                   f"{'faithful' if g['faithful'] else 'NOT faithful: ' + '; '.join(g['reasons'])}")
    out.append(("short budget is FAITHFUL" if report["faithful"] else "short budget is NOT faithful")
               + f" ({report['rule']})")
    return out
