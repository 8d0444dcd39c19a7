"""Every figure the README and the docs quote in more than one place is checked against one source: the planner
(`mkf sweep plan`), or docs/costs.md §8 (itself checked against the planner by
tests/test_budget_sweep.py::test_the_cost_table_of_docs_costs_md_is_what_plan_computes), or the measurement page
it was moved to. Torch-free and a few seconds: planning the catalog is what `mkf sweep plan configs/paper/` does.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

from configs import config_path
from launch.planning.catalog import cost_lines, parts, plan_catalog
from launch.planning.cost import budget_lines, estimate, sequential_lines
from launch.planning.planner import plan_sweep
from launch.planning.schema import load_sweep
from tests.conftest import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"


def number(text: str) -> int:
    return int(text.replace(",", ""))


def section(text: str, heading: str) -> str:
    """The body of the markdown section whose heading starts with ``heading``, up to the next heading of its
    level or above (lines inside fenced code blocks are never headings)."""
    lines, level, body, fenced = text.splitlines(), None, [], False  # type: ignore[var-annotated]
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        heading_level = len(line) - len(line.lstrip("#")) if not fenced and re.match(r"#+ ", line) else 0
        if level is None:
            if heading_level and line[heading_level + 1:].startswith(heading):
                level = heading_level
            continue
        if heading_level and heading_level <= level:
            break
        body.append(line)
    assert level is not None, f"no section {heading!r}"
    return "\n".join(body)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced code block of a markdown text, in order."""
    blocks, info, body = [], None, []  # type: ignore[var-annotated]
    for line in text.splitlines():
        if line.startswith("```"):
            if info is None:
                info, body = line[3:].strip(), []
            else:
                blocks.append((info, "\n".join(body)))
                info = None
        elif info is not None:
            body.append(line)
    return blocks


@functools.lru_cache(maxsize=1)
def catalog():  # type: ignore[no-untyped-def]
    return plan_catalog(config_path("paper"))


@functools.lru_cache(maxsize=1)
def per_sweep() -> dict[str, tuple[int, int]]:
    """Sweep name -> (cells, A100-hours rounded), as the plan's cost table prints them."""
    return {p.name: (len(p.cells), round(estimate(p).total_hours)) for p in parts(catalog())}


def costs_section_8() -> str:
    text = (DOCS / "costs.md").read_text()
    return text[text.index("## 8."):text.index("## 9.")]


def costs_row(label: str) -> list[int]:
    line = next(x for x in costs_section_8().splitlines() if x.startswith(f"| {label}"))
    return [number(n) for n in re.findall(r"\d[\d,]*", line.split("|")[2])]


def readme_plan_block() -> list[str]:
    """The fenced block of the README's "Reproduce the paper" that shows what `plan configs/paper/` prints."""
    body = section(README.read_text(), "Reproduce the paper")
    block = next(b for info, b in fenced_blocks(body) if b.startswith("cost (a100)"))
    return [line.rstrip() for line in block.splitlines()]


def test_the_readme_prints_what_plan_prints_for_the_paper() -> None:
    plan = catalog()
    printed = cost_lines(plan) + budget_lines(plan) + sequential_lines(plan)
    assert readme_plan_block() == [line.rstrip() for line in printed]


def test_the_readme_catalog_figures_are_those_of_docs_costs_md() -> None:
    """Cells and A100-hours of the catalog, at 16 and 40 epochs and under sequential seeds: one set of figures."""
    block = "\n".join(readme_plan_block())
    cells, hours = (number(x) for x in re.search(r"catalog, each cell once\s+([\d,]+)\s+~([\d,]+)", block).groups())
    assert hours == costs_row("new model")[0]
    assert f"{cells:,} cells each trained once" in costs_section_8()
    budgets = {int(e): number(h) for e, h in re.findall(r"(\d+) epochs ~([\d,]+) GPU-hours", block)}
    assert budgets[16] == costs_row("budget 16 epochs")[0] and budgets[40] == costs_row("budget 40 epochs")[0]
    best, worst = (number(x) for x in re.search(r"best ~([\d,]+) GPU-hours.*worst ~([\d,]+) GPU-hours", block).groups())
    null, effect = (number(x) for x in re.search(r"expected ~([\d,]+) GPU-hours.*~([\d,]+) GPU-hours if", block).groups())
    assert costs_row("sequential seeds at 90 epochs") == [best, null, effect, worst]
    # §9 quotes plan's output lines too
    text = (DOCS / "costs.md").read_text()
    quoted = text[text.index("## 9."):]
    assert f"catalog, each cell once     {cells:,}  ~{hours:,} GPU-hours" in quoted


def test_the_catalog_table_of_docs_sweeps_md_is_the_planners() -> None:
    text = section((DOCS / "sweeps.md").read_text(), "The catalog (`configs/paper/`)")
    rows = {m.group(1): (number(m.group(2)), number(m.group(3)))
            for m in re.finditer(r"^\| `(\w+)\.yaml` \|.*\| ([\d,]+) \| ([\d,]+) \|$", text, re.M)}
    assert rows == per_sweep()
    total = re.search(r"^\| the catalog, each cell once \|.*\| ([\d,]+) \| ([\d,]+) \|$", text, re.M)
    assert total and (number(total.group(1)), number(total.group(2))) == (
        len(catalog().cells), round(estimate(catalog()).total_hours))


def test_the_table_of_docs_adaptive_md_is_the_planners() -> None:
    """Each paper config as written, with depths: all, and made adaptive (start grid, worst case)."""
    from launch.planning.adaptive import grid_costs
    from launch.planning.depths import AdaptiveDepths, AdaptiveSpec

    text = section((DOCS / "adaptive.md").read_text(), "The catalog's cost")
    pair = r"([\d,]+) / ([\d,]+) h"
    rows = {m.group(1): [number(x) for x in m.groups()[1:9]]
            for m in re.finditer(rf"^\| (\w+) \| {pair} \| {pair} \| {pair} \| {pair} \|", text, re.M)}
    expected, totals = {}, [0.0] * 8
    for p in parts(catalog()):
        sweep = load_sweep(config_path("paper") / f"{p.name}.yaml")
        c = grid_costs(sweep.model_copy(update={"depths": AdaptiveDepths(adaptive=AdaptiveSpec())}))
        row = [len(p.cells), estimate(p).total_hours, *c.full, *c.start, *c.worst]
        totals = [x + y for x, y in zip(totals, row, strict=True)]
        expected[p.name] = [round(x) for x in row]
    assert rows == expected
    total = re.search(rf"^\| \*\*total\*\* \| {pair} \| {pair} \| {pair} \| {pair} \|", text, re.M)
    assert total and [number(x) for x in total.groups()] == [round(x) for x in totals]
    catalog_once = re.search(r"([\d,]+) cells / ([\d,]+) h as written", text)
    assert catalog_once and (number(catalog_once.group(1)), number(catalog_once.group(2))) == (
        len(catalog().cells), round(estimate(catalog()).total_hours))


def test_fig3_costs_one_number_everywhere() -> None:
    """Fig. 3's A100-hours, wherever a page quotes them, are the planner's."""
    cells, hours = per_sweep()["fig3_manmade_natural"]
    found = 0
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        for line in page.read_text().splitlines():
            if "fig3_manmade_natural" not in line:
                continue
            m = re.search(r"([\d,]{4,})\s*[/|]?\s*~?([\d,]{3,})(?: h| GPU-hours| \|)", line)  # the first: as written
            if m:
                found += 1
                assert (number(m.group(1)), number(m.group(2))) == (cells, hours), (page.name, line)
    assert found >= 3  # the README's plan block, sweeps.md's catalog table, adaptive.md's table


def test_the_readme_first_pass_is_what_plan_computes(tmp_path: Path) -> None:
    """The README's first pass (one seed, four depths: a sed over copies of the paper configs) costs what it says."""
    body = section(README.read_text(), "Reproduce the paper")
    claim = re.search(r"first pass\*\* .*? costs ([\d,]+) cells, ~([\d,]+) A100-hours \((\d+)% of the\s+whole\)",
                      body, re.S)
    assert claim, "the README's first-pass sentence moved; update this test"
    for path in sorted(config_path("paper").glob("*.yaml")):  # the README's sed, line by line
        text = re.sub(r"^seeds: .*", "seeds: [0]", path.read_text(), flags=re.M)
        text = re.sub(r"^depths: all$", "depths: [1, 3, 6, 9]", text, flags=re.M)
        text = re.sub(r"^output_dir: results/paper/", "output_dir: results/paper-first-pass/", text, flags=re.M)
        (tmp_path / path.name).write_text(text)
    plan = plan_catalog(tmp_path)
    hours = estimate(plan).total_hours
    assert (number(claim.group(1)), number(claim.group(2))) == (len(plan.cells), round(hours))
    assert int(claim.group(3)) == round(100 * hours / estimate(catalog()).total_hours)


STUDIES = sorted((config_path("studies")).glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_study_cell_counts_are_the_planners(path: Path) -> None:
    """Every page that gives a study's cell count gives the planner's."""
    cells = len(plan_sweep(load_sweep(path)).cells)
    seen = 0
    sweeps = (DOCS / "sweeps.md").read_text()
    for m in re.finditer(rf"configs/studies/{path.stem}\.yaml.*# (\d+) cells", sweeps):
        seen += 1
        assert int(m.group(1)) == cells, f"docs/sweeps.md: {path.stem}"
    for page in (DOCS / "studies.md", DOCS / "demo.md"):  # summary tables: | `name` ... | cells | ...
        for m in re.finditer(rf"^\| `{path.stem}`[^|]*\| (\d+) \|", page.read_text(), re.M):
            seen += 1
            assert int(m.group(1)) == cells, f"{page.name}: {path.stem}"
    assert seen >= 2, f"{path.stem}: its cell count is quoted nowhere"


def test_the_demo_figures_the_readme_quotes_are_those_of_docs_demo_md() -> None:
    """The README's "Two commands" keeps its measured figures in bold; each is stated in docs/demo.md, where the
    measurement is described. The demo's cell count is the planner's."""
    body = section(README.read_text(), "Two commands")
    demo = (DOCS / "demo.md").read_text()
    bold = re.findall(r"\*\*([^*]*\d[^*]*)\*\*", body)
    assert len(bold) >= 3
    for figure in bold:
        assert figure in demo, f"README quotes {figure!r}, docs/demo.md does not"
    cells = len(plan_sweep(load_sweep(config_path("demo.yaml"))).cells)
    assert f"trains {cells} cells" in body and f"{cells} cells" in demo


def test_every_relative_link_of_the_readme_and_the_docs_resolves() -> None:
    """Content moved between the README and docs/: no link may point at a page or figure that is not there."""
    broken = []
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken
    listed = set(re.findall(r"^- \[docs/(\w+\.md)\]", README.read_text(), re.M))
    assert listed == {p.name for p in DOCS.glob("*.md")}, "the README's 'Where to read more' lists every page"


def test_the_shard_sets_the_docs_name_are_those_the_paper_configs_read() -> None:
    import yaml

    read = set()
    for path in config_path("paper").glob("*.yaml"):
        raw = yaml.safe_load(path.read_text())
        for role in (raw.get("datasets") or {}).values():
            shards = {**(raw.get("data") or {}), **role}.get("shards")
            if shards:
                read.add(Path(shards).name)
    body = section(README.read_text(), "Reproduce the paper")
    named = re.search(r"Which shard sets each experiment reads \(([^)]*)\)", body)
    assert named and set(re.findall(r"`([\w-]+)`", named.group(1))) == read
    table = section((DOCS / "data.md").read_text(), "Writing shards")
    assert set(re.findall(r"^\| `([\w-]+)` \|", table, re.M)) == read


def test_bench_adaptive_spans_every_unit_of_a_config_that_lists_its_depths() -> None:
    """`mkf bench adaptive`'s "depths: all" of cross_arch (depths listed by hand) is every unit, as adaptive.md says:
    it used to cost only the listed depths."""
    from launch.bench.catalog_costs import catalog_costs

    (row,) = catalog_costs([REPO / "configs" / "paper" / "cross_arch.yaml"])
    assert row["all"][0] > row["written"][0] and row["start"][0] < row["all"][0] <= row["worst"][0] * 1.1
    text = section((DOCS / "adaptive.md").read_text(), "The catalog's cost")
    assert f"| cross_arch | {row['written'][0]:,} / {row['written'][1]:,.0f} h | {row['all'][0]:,} / " \
           f"{row['all'][1]:,.0f} h |" in text
