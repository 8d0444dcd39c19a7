"""The protocol audit: is every finished cell the experiment it claims to be? (``mkf sweep audit``, every report)

A transfer curve is evidence only if its cells were trained as the protocol says. This module reads what each
cell recorded while training (``evidence.json``, :mod:`pipeline.training.evidence`) next to the sweep's manifest
and checks five invariants, torch-free:

* **transferred units** -- each copied tensor was read from its source cell's final weights (the content hash the
  transfer recorded equals the source's), starts equal to it (same-arch copies), and, when frozen, ends equal to
  how it started. Fine-tuned units only need the equal start;
* **re-initialised tensors** -- every drawn tensor that was not copied differs from the reference base's initial
  tensor (and from the source's for a same-arch copy), unless the cell asked for ``transfer.reinit: paired``, in
  which case it must equal the reference's;
* **control units** -- random-frozen and shuffled units end as they started and are functionally non-trivial: the
  probe (:mod:`pipeline.transfer.probe`) measured each one away from an identity by at least its margin;
* **comparison** -- the cells of one comparison (every transfer cell of one arch, unit kind, target, depth and
  seed -- AnB from each source, BnB, the + variants, the controls -- with their source bases and the reference
  base) trained alike: the same world size, global batch,
  peak LR, warmup share, minimum LR, resolution and recipe (cells of one arch), the same optimizer steps among
  the cells trained on the target, the same data seed, and init seeds paired or fresh as each cell says;
* **split** -- each cell trained on the classes its dataset declares, a class-split pair's halves are disjoint,
  and no validation source of the target is a training source of any cell of the comparison.

A cell without evidence fails every invariant that needs it ("no evidence recorded"). Every failure names the
cell (and, for a comparison, every cell of it), so a report can mark exactly the points it affects.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.results.run_folder import read_evidence, read_result

INVARIANTS = ("transferred units", "re-initialised tensors", "control units", "comparison", "split")
SCHEDULE_KEYS = ("world_size", "global_batch", "peak_lr", "min_lr_ratio")


@dataclass
class Finding:
    """One invariant checked on one subject (a cell, or a comparison): passed, or the first thing wrong."""

    invariant: str
    subject: str
    cells: list[str]
    ok: bool
    detail: str = ""


@dataclass
class AuditReport:
    findings: list[Finding] = field(default_factory=list)
    unfinished: int = 0

    def add(self, invariant: str, subject: str, cells: list[str], problem: str | None) -> None:
        self.findings.append(Finding(invariant, subject, cells, problem is None, problem or ""))

    @property
    def passed(self) -> bool:
        return all(f.ok for f in self.findings)

    def failed_cells(self) -> dict[str, list[str]]:
        """Cell id -> the invariants it failed (a comparison's failure counts for each of its cells)."""
        out: dict[str, list[str]] = defaultdict(list)
        for f in self.findings:
            if not f.ok:
                for cid in f.cells:
                    if f.invariant not in out[cid]:
                        out[cid].append(f.invariant)
        return dict(out)

    def rows(self) -> list[dict[str, Any]]:
        """One row per invariant: checked, passed, failed, and the first failure named."""
        rows = []
        for invariant in INVARIANTS:
            mine = [f for f in self.findings if f.invariant == invariant]
            bad = [f for f in mine if not f.ok]
            rows.append({"invariant": invariant, "checked": len(mine), "passed": len(mine) - len(bad),
                         "failed": len(bad), "first_failure": f"{bad[0].subject}: {bad[0].detail}" if bad else ""})
        return rows

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "unfinished": self.unfinished, "invariants": self.rows(),
                "failures": [f.__dict__ for f in self.findings if not f.ok]}


@dataclass
class _Cell:
    id: str
    entry: dict[str, Any]  # the manifest's cell
    run_dir: Path
    evidence: dict[str, Any] | None

    @property
    def tensors(self) -> tuple[dict[str, str], dict[str, str]]:
        t = (self.evidence or {}).get("tensors") or {}
        return t.get("start") or {}, t.get("end") or {}

    def label(self) -> str:
        e = self.entry
        depth = "" if e.get("depth") is None else f" n={e['depth']}"
        pair = f" {e.get('source')}->{e.get('target')}" if e.get("stage") == "transfer" else f" on {e.get('target')}"
        return f"{self.id} ({e.get('arch')} {e.get('variant')}{depth}{pair} s{e.get('seed')})"


NO_EVIDENCE = "no evidence recorded (evidence.json missing: trained before the audit existed, or not by mkf train)"


def _load(sweep_dir: Path) -> tuple[dict[str, Any], dict[str, _Cell], int]:
    manifest = json.loads((sweep_dir / "manifest.json").read_text())
    cells: dict[str, _Cell] = {}
    unfinished = 0
    for entry in manifest.get("cells") or []:
        run_dir = sweep_dir / "cells" / entry["id"]
        if not run_dir.is_dir():
            run_dir = Path(entry.get("run_dir") or run_dir)
        if read_result(run_dir) is None:
            unfinished += 1
            continue
        cells[entry["id"]] = _Cell(entry["id"], entry, run_dir, read_evidence(run_dir))
    return manifest, cells, unfinished


def _first(items: list[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _check_transferred(cell: _Cell, source: _Cell | None) -> str | None:
    transfer = cell.evidence["transfer"]  # type: ignore[index]
    start, end = cell.tensors
    copied: dict[str, dict[str, str]] = transfer.get("copied") or {}
    if not copied:
        return f"depth {transfer.get('depth')} but no tensor was copied"
    if source is not None:
        if source.evidence is None:
            return f"source {source.label()}: {NO_EVIDENCE}"
        _, source_end = source.tensors
        wrong = [k for k, p in copied.items() if source_end.get(p["src"]) != p["src_digest"]]
        if wrong:
            return f"{_first(wrong)} not read from the source cell's final weights ({source.id})"
    if transfer.get("init") == "copy" and not transfer.get("mapped"):
        moved = [k for k, p in copied.items() if start.get(k) != p["src_digest"]]
        if moved:
            return f"{_first(moved)} did not start equal to the source's tensor"
    if transfer.get("mode") == "frozen":
        changed = [k for k in transfer.get("frozen") or [] if start.get(k) != end.get(k)]
        if changed:
            return f"frozen {_first(changed)} changed during training"
    return None


def _check_reinit(cell: _Cell, reference: _Cell | None, source: _Cell | None) -> str | None:
    if reference is None or reference.evidence is None:
        return "reference base " + ("not finished" if reference is None else f"{reference.id}: {NO_EVIDENCE}")
    evidence = cell.evidence or {}
    transfer = evidence.get("transfer") or {}
    copied = set(transfer.get("copied") or {})
    start, _ = cell.tensors
    ref_start, _ = reference.tensors
    drawn = [k for k in evidence.get("random_init") or [] if k not in copied and k in ref_start]
    if not drawn:
        return None
    reinit = (evidence.get("seeds") or {}).get("reinit") or "fresh"
    same = [k for k in drawn if start.get(k) == ref_start.get(k)]
    if reinit == "paired":
        differ = [k for k in drawn if k not in same]
        return f"paired init asked, but {_first(differ)} differ from the reference's init" if differ else None
    if same:
        return (f"{len(same)} of {len(drawn)} re-initialised tensors are the reference base's initial tensors "
                f"({_first(same)}): the cell reused base B's init instead of a fresh draw")
    if source is not None and source.evidence is not None and not transfer.get("mapped"):
        _, source_end = source.tensors
        stale = [k for k in drawn if start.get(k) == source_end.get(k)]
        if stale:
            return f"{_first(stale)} start equal to the source's weights but were not meant to be copied"
    return None


def _check_control(cell: _Cell) -> str | None:
    evidence = cell.evidence or {}
    transfer = evidence.get("transfer") or {}
    start, end = cell.tensors
    changed = [k for k in transfer.get("frozen") or [] if start.get(k) != end.get(k)]
    if changed:
        return f"frozen control tensors changed during training: {_first(changed)}"
    probe = evidence.get("probe")
    if not probe or not probe.get("units"):
        return "no probe of the frozen units recorded"
    trivial = [r for r in probe["units"] if r.get("trivial")]
    if trivial:
        r = trivial[0]
        return (f"{len(trivial)} of {len(probe['units'])} frozen units are an identity map: unit {r['unit']} "
                f"({r['module']}) changes its {r['identity']} by {r['change']:.3g} < margin {probe['margin']}")
    return None


def _schedule(cell: _Cell) -> dict[str, Any]:
    return dict((cell.evidence or {}).get("schedule") or {})


def _warmup_apart(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two runs warm up over different shares of their steps (by more than one step's rounding)."""
    ta, tb = a.get("total_steps"), b.get("total_steps")
    wa, wb = a.get("warmup_steps"), b.get("warmup_steps")
    if not ta or not tb or wa is None or wb is None:
        return (wa is None) != (wb is None)
    return abs(wa / ta - wb / tb) > 1.0 / min(ta, tb) + 1e-9


def _diff(a: Any, b: Any, path: str = "") -> str | None:
    """The first key path where two recipe dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _diff(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    if isinstance(a, float) and isinstance(b, float):
        return None if math.isclose(a, b, rel_tol=1e-9) else f"{path} ({a} vs {b})"
    return None if a == b else f"{path} ({a!r} vs {b!r})"


def _check_comparison(members: list[_Cell], transfers: list[_Cell], reference: _Cell | None) -> str | None:
    missing = [m.id for m in members if m.evidence is None or not (m.evidence.get("schedule"))]
    if missing:
        return f"{_first(missing)}: {NO_EVIDENCE}"
    first = members[0]
    for key in SCHEDULE_KEYS:  # the batch for every member; the LR rule within one arch (its recipe's)
        for arch_members in ([members] if key in ("world_size", "global_batch") else
                             [[m for m in members if m.entry.get("arch") == a]
                              for a in dict.fromkeys(m.entry.get("arch") for m in members)]):
            values = {m.id: _schedule(m).get(key) for m in arch_members}
            if len({json.dumps(v) for v in values.values()}) > 1:
                return f"{key} differs: " + ", ".join(f"{cid} {v}" for cid, v in values.items())
    for m in members[1:]:
        if _warmup_apart(_schedule(first), _schedule(m)):
            a, b = _schedule(first), _schedule(m)
            return (f"warmup share differs: {first.id} {a.get('warmup_steps')} of {a.get('total_steps')} steps, "
                    f"{m.id} {b.get('warmup_steps')} of {b.get('total_steps')}")
        if m.evidence["resolution"] != first.evidence["resolution"]:  # type: ignore[index]
            return f"resolution differs: {first.id} {first.evidence['resolution']} vs {m.id} {m.evidence['resolution']}"  # type: ignore[index]
        if m.entry.get("arch") == first.entry.get("arch"):
            diff = _diff(first.evidence.get("recipe"), m.evidence.get("recipe"))  # type: ignore[union-attr]
            if diff:
                return f"recipe differs between {first.id} and {m.id}: {diff}"
    on_target = [m for m in members if m.entry.get("target") == (reference.entry.get("target") if reference else None)]
    steps = {m.id: m.evidence.get("steps") for m in on_target}  # type: ignore[union-attr]
    if len(set(steps.values())) > 1:
        return "optimizer steps differ among cells trained on the target: " + ", ".join(
            f"{cid} {v}" for cid, v in steps.items())
    seeds = {m.id: (m.evidence.get("seeds") or {}).get("data") for m in members}  # type: ignore[union-attr]
    if len(set(seeds.values())) > 1:
        return "data seeds differ: " + ", ".join(f"{cid} {v}" for cid, v in seeds.items())
    if reference is not None:
        ref_seed = reference.evidence["seeds"]["init"]  # type: ignore[index]
        fresh_seeds: dict[Any, str] = {}
        for cell in transfers:
            seeds_of = cell.evidence["seeds"]  # type: ignore[index]
            if seeds_of.get("reinit") == "paired" and seeds_of.get("init") != ref_seed:
                return f"{cell.id} asks for paired init but was built from seed {seeds_of.get('init')}, " \
                       f"the reference from {ref_seed}"
            if seeds_of.get("reinit") == "fresh":
                if seeds_of.get("init") == ref_seed:
                    return f"{cell.id} asks for a fresh init but was built from the reference's seed {ref_seed}"
                if seeds_of.get("init") in fresh_seeds:
                    return f"{cell.id} and {fresh_seeds[seeds_of.get('init')]} share one 'fresh' init seed"
                fresh_seeds[seeds_of.get("init")] = cell.id
    return None


def _declared(manifest: dict[str, Any], cell: _Cell) -> dict[str, Any]:
    template = (manifest.get("templates") or {}).get(cell.entry.get("template") or "") or {}
    return template.get("data") or {}


def _check_split(manifest: dict[str, Any], members: list[_Cell], reference: _Cell | None) -> str | None:
    missing = [m.id for m in members if m.evidence is None]
    if missing:
        return f"{_first(missing)}: {NO_EVIDENCE}"
    for m in members:
        data, declared = m.evidence["data"], _declared(manifest, m)  # type: ignore[index]
        split = data.get("split") or {}
        if declared and declared.get("half") is not None and split.get("kind") not in (None, "all"):
            if data.get("half") != declared.get("half"):
                return f"{m.id} trained on half {data.get('half')}, its dataset declares {declared.get('half')}"
            want = split.get("a" if data.get("half") == "A" else "b") or []
            if sorted(want) != sorted(data.get("classes") or []):
                return f"{m.id} trained on classes other than its half's"
        overlap = set(data.get("train") or []) & set(data.get("val") or [])
        if overlap:
            return f"{m.id} reads {_first(sorted(overlap))} as training and validation data"
    if reference is not None:
        target = reference.evidence["data"]  # type: ignore[index]
        val = set(target.get("val") or [])
        for m in members:
            leaked = val & set(m.evidence["data"].get("train") or [])  # type: ignore[index]
            if leaked:
                return f"{m.id} trains on the target's validation data {_first(sorted(leaked))}"
        for m in members:
            data = m.evidence["data"]  # type: ignore[index]
            same_split = (data.get("split") or {}).get("kind") not in (None, "all") and \
                data.get("split") == target.get("split") and data.get("shards") == target.get("shards")
            if same_split and data.get("half") != target.get("half"):
                shared = set(data.get("classes") or []) & set(target.get("classes") or [])
                if shared:
                    return f"{m.id}'s half and the target's share classes {_first(sorted(shared))}"
    return None


def audit(sweep_dir: str | Path) -> AuditReport:
    """Check every finished cell of the sweep in ``sweep_dir`` (its manifest and cells/), see the module doc."""
    root = Path(sweep_dir)
    manifest, cells, unfinished = _load(root)
    report = AuditReport(unfinished=unfinished)
    comparisons: dict[tuple[Any, ...], list[_Cell]] = defaultdict(list)
    for cell in cells.values():
        e = cell.entry
        if e.get("stage") != "transfer":
            continue
        comparisons[(e.get("arch"), e.get("unit_kind"), e.get("target"), e.get("depth"), e.get("seed"))].append(cell)
        evidence = cell.evidence
        reference = cells.get(e.get("reference") or "")
        # the base the units were copied from: AnB's source base, BnB's own target base (of the source arch in a
        # cross-arch entry); None for the controls that copy nothing
        source = next((cells[d] for d in e.get("depends_on") or [] if d in cells), None)
        transfer = (evidence or {}).get("transfer")
        if evidence is None:
            for invariant in INVARIANTS[:3]:
                report.add(invariant, cell.label(), [cell.id], NO_EVIDENCE)
            continue
        init = (transfer or {}).get("init")
        if transfer and init in ("copy", "shuffle") and transfer.get("units"):
            report.add("transferred units", cell.label(), [cell.id], _check_transferred(cell, source))
        if transfer or (evidence.get("seeds") or {}).get("reinit"):
            report.add("re-initialised tensors", cell.label(), [cell.id, e.get("reference") or ""],
                       _check_reinit(cell, reference, source if init != "random" else None))
        if transfer and transfer.get("mode") == "frozen" and init in ("random", "shuffle") and transfer.get("units"):
            report.add("control units", cell.label(), [cell.id], _check_control(cell))
    for key, transfers in comparisons.items():
        reference = cells.get(transfers[0].entry.get("reference") or "")
        members: dict[str, _Cell] = {t.id: t for t in transfers}
        for t in transfers:
            for dep in t.entry.get("depends_on") or []:
                if dep in cells:
                    members[dep] = cells[dep]
        if reference is not None:
            members[reference.id] = reference
        arch, kind, target, depth, seed = key
        name = f"{arch} {kind or 'depthless'} on {target}{'' if depth is None else f' n={depth}'} s{seed}"
        group = list(members.values())
        ids = [m.id for m in group]
        report.add("comparison", name, ids, _check_comparison(group, transfers, reference))
        report.add("split", name, ids, _check_split(manifest, group, reference))
    return report


def failing_groups(report: AuditReport, rows: list[dict[str, Any]], group: tuple[str, ...]) -> dict[tuple[Any, ...],
                                                                                                   list[str]]:
    """Summary group key -> the invariants failed by any of its cells or their reference base (a results row
    of a figure point is marked when any cell it averages over failed)."""
    failed = report.failed_cells()
    out: dict[tuple[Any, ...], list[str]] = {}
    for r in rows:
        if r.get("stage") != "transfer":
            continue
        bad = failed.get(str(r["cell_id"]), []) + failed.get(str(r.get("reference_id")), [])
        if bad:
            key = tuple(r.get(k) for k in group)
            out.setdefault(key, [])
            out[key] += [b for b in bad if b not in out[key]]
    return out
