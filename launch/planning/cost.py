"""Cost before submit: cells per stage and estimated GPU-hours, from an editable table (``configs/costs.yaml``).

A user should see what a config costs before spending it. Each cell's cost is
:func:`pipeline.results.costs.cell_cost` of its resolved config: training (the budget's epochs, each at its
progressive-resizing resolution, the arch's images/s scaled by the table's resolution exponent and capped by the
loader's ceiling) plus one validation pass per epoch (twice with an EMA); a class-split half counts its share of
the classes (the man-made half 551 of 1,000). A dataset the table does not list is sized by the ``index.json`` of
its local ``data.shards`` (a set written per half counts that half's own images). Anything else the table does not
know becomes one "not in configs/costs.yaml; add it" line in the estimate, never a crash; every arch's figures say
where they come from.
"""

from __future__ import annotations

import copy
import functools
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configs import config_path
from datamodules.errors import UserError

COSTS_FILE = config_path("costs.yaml")


@dataclass
class Estimate:
    gpu: str
    cells: Counter[str] = field(default_factory=Counter)  # stage -> cells
    gpu_hours: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # stage -> hours
    unknown: Counter[str] = field(default_factory=Counter)  # "what is missing" -> cells affected
    sources: dict[str, str] = field(default_factory=dict)  # arch -> where its figures come from

    @property
    def total_hours(self) -> float:
        return sum(self.gpu_hours.values())

    def lines(self) -> list[str]:
        out = []
        for stage, n in self.cells.items():
            out.append(f"{stage:>8}: {n:,} cells, ~{_hours(self.gpu_hours.get(stage, 0.0))} ({self.gpu})")
        out.append(f"   total: {sum(self.cells.values()):,} cells, ~{_hours(self.total_hours)} ({self.gpu})"
                   + (" (cells with unknown costs not counted)" if self.unknown else ""))
        out += [f"  cost unknown for {n:,} cells: {what} {_fix(what)}" for what, n in sorted(self.unknown.items())]
        out += [f"  {line}" for _, line in sorted(self.sources.items())]
        return out


def _fix(what: str) -> str:
    """What to do about a figure the table lacks: a dataset may also be sized by its shards' index.json."""
    if what.startswith("dataset "):
        return "not in configs/costs.yaml and no index.json at data.shards; add it or write the shards"
    return "not in configs/costs.yaml; add it"


def _hours(hours: float) -> str:
    if hours >= 100:
        return f"{hours:,.0f} GPU-hours"
    if hours >= 0.1:
        return f"{hours:.1f} GPU-hours"
    if hours * 60 >= 1:
        return f"{hours * 60:.1f} GPU-minutes"
    return f"{hours * 3600:.2g} GPU-seconds"


def load_costs(path: str | Path | None = None) -> dict[str, Any]:
    """The cost table (a fresh copy: callers may edit it), parsed once per file version.

    `sweep plan` of the catalog asks for it once per arch and stage; parsing the YAML each time was most of the
    plan's 2 s."""
    path = Path(path) if path else COSTS_FILE
    if not path.is_file():
        raise UserError(f"cost table {path} does not exist; restore configs/costs.yaml")
    stat = path.stat()
    return copy.deepcopy(_parse_costs(str(path.resolve()), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _parse_costs(path_name: str, mtime_ns: int, size: int) -> dict[str, Any]:
    from pipeline.results.costs import load_table

    return load_table(path_name)  # checked, every entry with its provenance (pipeline/results/costs.py)


def _dataset(data: dict[str, Any], table: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    names = [data.get("shards"), data.get("root"), data.get("dataset")]
    known = table.get("datasets") or {}
    for name in names:
        if name and name in known:
            return name, known[name]
    for name in names[:2]:  # a shards folder named like a table entry, under any data_root
        if name and Path(str(name)).name in known:
            return str(name), known[Path(str(name)).name]
    from pipeline.results.costs import index_entry

    from_index = index_entry(data)  # a local shard set whose index.json knows its size
    if from_index is not None:
        return from_index
    return f"dataset {next(n for n in names if n)!r}", None


def train_images(data: dict[str, Any], entry: dict[str, Any]) -> float:
    """Training images one epoch of a cell reads."""
    from pipeline.results.costs import half_share

    images = float(entry["train_images"])
    if data.get("split") and not entry.get("per_set"):  # a half of a class split: its share (man-made: 551 of 1,000)
        images *= half_share(data["split"], data.get("half", "B"), int(entry.get("classes") or 0))
    subset = data.get("subset") or {}
    if subset.get("fraction") is not None:
        images *= subset["fraction"]
    elif subset.get("per_class") is not None:
        classes = entry.get("classes") or 0
        images = min(images, subset["per_class"] * classes / (2 if data.get("split") and not entry.get("per_set")
                                                              else 1))
    if data.get("max_train_samples"):
        images = min(images, data["max_train_samples"])
    return images


def cell_gpu_hours(config: dict[str, Any], table: dict[str, Any], gpu: str,
                   budget_epochs: int | None = None) -> tuple[float | None, str | None]:
    """(GPU-hours, None) for a cell, or (None, what the table is missing): pipeline.results.costs.cell_cost.

    ``budget_epochs``: the cost the cell would have under ``trainer.budget: {epochs: N}`` (at most its own
    length; a cell stated in steps, or already under a budget, keeps its own length)."""
    from pipeline.results.costs import cell_cost

    if budget_epochs is not None:
        config = with_budget(config, budget_epochs)
    cost = cell_cost(config, table, gpu)
    return (None, cost.missing) if cost.missing else (cost.hours, None)


def with_budget(config: dict[str, Any], epochs: int) -> dict[str, Any]:
    """``config`` trained for ``epochs`` of its ``max_epochs`` (trainer.budget), when it can be: a shallow copy."""
    trainer = config.get("trainer") or {}
    full = int(trainer.get("max_epochs") or 0)
    if trainer.get("budget") or int(trainer.get("max_steps") or -1) > 0 or full <= 0 or epochs >= full:
        return config
    return {**config, "trainer": {**trainer, "budget": {"epochs": int(epochs)}}}


def estimate(plan: Any, costs_file: str | Path | None = None, gpu: str | None = None,
             budget_epochs: int | None = None, cells: Any = None) -> Estimate:
    """The cost of every cell of ``plan`` (a :class:`launch.core.plan.SweepPlan`; or of ``cells`` of it), per
    stage; ``budget_epochs``: as if every cell trained that many epochs (:func:`with_budget`)."""
    table = load_costs(costs_file)
    gpu = gpu or table.get("gpu", "a100")
    est = Estimate(gpu)
    per_template: dict[str, tuple[float | None, str | None]] = {}  # cost depends only on the shared template
    from pipeline.results.costs import source_line

    for cell in plan.cells if cells is None else cells:
        est.cells[cell.stage] += 1
        arch = (plan.templates.get(cell.template) if cell.template is not None else None) or plan.configs.get(cell.id)
        arch = ((arch or {}).get("model") or {}).get("arch")
        if arch and arch not in est.sources:
            est.sources[arch] = source_line(table, gpu, arch)
        if cell.template is not None and cell.template in plan.templates:
            if cell.template not in per_template:
                per_template[cell.template] = cell_gpu_hours(plan.templates[cell.template], table, gpu, budget_epochs)
            hours, missing = per_template[cell.template]
        else:
            hours, missing = cell_gpu_hours(plan.configs[cell.id], table, gpu, budget_epochs)
        if missing:
            est.unknown[missing] += 1
        else:
            est.gpu_hours[cell.stage] += hours or 0.0
    return est


# ---- what shorter budgets and sequential seeds would cost (docs/costs.md §5, §7) --------------------------------
PUBLISHED_BUDGETS = (16, 40)  # FFCV's ResNet-50 schedules: 73.8 / 77.2% top-1 at 16 / 40 epochs (78.4% at 88)


def _full_epochs(plan: Any) -> list[int]:
    """The full lengths (epochs) the plan's cells train, ignoring cells under a budget or stated in steps."""
    out = set()
    configs = list(plan.templates.values()) or [plan.configs[c.id] for c in plan.cells[:1]]
    for config in configs:
        trainer = config.get("trainer") or {}
        if not trainer.get("budget") and int(trainer.get("max_steps") or -1) <= 0 and trainer.get("max_epochs"):
            out.add(int(trainer["max_epochs"]))
    return sorted(out)


def budgets_for(plan: Any) -> list[int]:
    """The budgets `plan` prints: FFCV's 16 and 40 epochs where cells train longer; else a quarter and a half."""
    lengths = _full_epochs(plan)
    if not lengths:
        return []
    longest = lengths[-1]
    shown = [b for b in PUBLISHED_BUDGETS if b < longest]
    return shown or sorted({b for b in (longest // 4, longest // 2) if 1 <= b < longest})


def budget_lines(plan: Any, costs_file: str | Path | None = None, gpu: str | None = None,
                 full: Estimate | None = None) -> list[str]:
    """One line per budget: the plan's cost if every cell trained that many epochs (`budget: {epochs: N}`)."""
    budgets = budgets_for(plan)
    if not budgets:
        return []
    full = full or estimate(plan, costs_file, gpu)
    parts = []
    for b in budgets:
        est = estimate(plan, costs_file, gpu, budget_epochs=b)
        share = f" ({est.total_hours / full.total_hours:.0%})" if full.total_hours else ""
        parts.append(f"{b} epochs ~{_hours(est.total_hours)}{share}")
    return ["at a budget (sweep key `budget: {epochs: N}`; calibrate it first, docs/costs.md §6): "
            + "; ".join(parts) + f"; full length ~{_hours(full.total_hours)}"]


MAX_EXPECTED_LOOKS = 8  # the expected cost integrates a K-dimensional normal per look; beyond this it takes minutes


def sequential_lines(plan: Any, costs_file: str | Path | None = None, gpu: str | None = None,
                     budget_epochs: int | None = None, alpha: float = 0.05, kind: str = "pocock",
                     drift: float = 2.0) -> list[str]:
    """The plan's cost under sequential seeds (pipeline.results.sequential): base cells train every seed (they
    give the rule its sd); a transfer point trains seed 2.. only while its comparison is undecided. Best case:
    every point decided at its first seed; worst: every seed; expected with no difference anywhere, and with
    every comparison differing by ``drift`` sd."""
    from pipeline.results.sequential import expected_seeds

    seeds = sorted({c.seed for c in plan.cells})
    if len(seeds) < 2:
        return []
    looks = len(seeds)
    transfer = [c for c in plan.cells if c.stage != "base"]
    first = [c for c in transfer if c.seed == seeds[0]]
    later = [c for c in transfer if c.seed != seeds[0]]
    base = [c for c in plan.cells if c.stage == "base"]

    def hours(cells: list[Any]) -> float:
        return estimate(plan, costs_file, gpu, budget_epochs, cells=cells).total_hours if cells else 0.0

    h_base, h_first, h_later = hours(base), hours(first), hours(later)
    best, worst = h_base + h_first, h_base + h_first + h_later
    at = f" at {budget_epochs} epochs" if budget_epochs else ""
    lines = [f"sequential seeds{at} ({kind}, K = {looks}, alpha = {alpha}; docs/costs.md §7): best ~{_hours(best)} "
             f"({len(base) + len(first):,} cells: every point decided at its first seed), worst ~{_hours(worst)} "
             f"({len(plan.cells):,} cells)"]
    if looks > MAX_EXPECTED_LOOKS:  # a K-dimensional normal integral per look: seconds at 8, minutes at 45
        return [*lines, f"  expected: not computed for more than {MAX_EXPECTED_LOOKS} seeds (a sequential design "
                        "rarely looks that often)"]
    null = (expected_seeds(looks, 0.0, alpha, kind)["expected"] - 1) / (looks - 1)
    effect = expected_seeds(looks, drift, alpha, kind)
    shift = (effect["expected"] - 1) / (looks - 1)
    return [*lines,
            f"  expected ~{_hours(best + null * h_later)} if no comparison differs, ~{_hours(best + shift * h_later)} "
            f"if every one differs by {drift:g} sd ({effect['decided']:.0%} decided)"]
