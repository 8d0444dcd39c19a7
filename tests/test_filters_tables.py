"""The CLI tables fit a plain 80-column terminal with no header cut (issue 24: Rich cut them to ``…``).

Built from small fake reports, the widest each can be (every family reported apart, several sources, five-digit
counts and rates), without running a benchmark or a clustering.
"""

from __future__ import annotations

import io

from rich.console import Console

from launch.commands.filters import family_table
from pipeline.bench.loader import LOADER_COLUMNS, loader_table
from pipeline.filters.families import NAMES
from pipeline.filters.separability import Separability, merge_groups


def _render(renderable: object) -> list[str]:
    console = Console(width=80, record=True, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text().splitlines()


def _assert_fits(lines: list[str], headers: list[str]) -> None:
    text = "\n".join(lines)
    assert "…" not in text, text
    assert all(len(line.rstrip()) <= 80 for line in lines), text
    header = next(line for line in lines if line.split()[:1] == headers[:1])
    for name in headers:
        assert f" {name} " in f" {header} ", (name, header)


def test_loader_table_fits_80_columns() -> None:
    rate = 12345.6
    row = {"size": 224, "imagefolder": rate, "webdataset": rate, "wids": rate, "ffcv": rate,
           "decode_limit_wds": rate, "decode_limit_imagefolder": rate, "wds_vs_imagefolder": 1.29,
           "wds_vs_decode_limit": 0.95, "wds_vs_wids": 1.1}
    report = {"images": 20000, "workers": 16, "batch_size": 256, "cpu_count": 16,
              "rows": [row, {k: v for k, v in row.items() if k not in ("wids", "ffcv", "wds_vs_wids")}]}
    lines = _render(loader_table(report))
    _assert_fits(lines, [header for _, header in LOADER_COLUMNS])
    assert "12346" in lines[3] and "n/a" in lines[4] and "1.10" in lines[3]
    assert any("ImageFolder" in line for line in lines)  # the legend says what the short headers mean


def test_family_table_fits_80_columns_with_every_family_apart() -> None:
    groups = {n: n for n in NAMES}
    names = [*NAMES, "dog_like"]
    rows = [{"source": source, "unit": unit, "kernels": 12345, **{f"reported_{k}": 1.0 for k in names}}
            for source in ("palm_detection_full_a_long_name", "palm_detection_lite_a_long_name")
            for unit in (1, 28)]
    lines = _render(family_table(rows, {k: 1.0 for k in names}, groups, None, "bic", 0.5))
    _assert_fits(lines, ["src", "unit", "n", "delta", "gauss", "dog+", "dog-", "d1", "LoG", "d2", "other",
                         "DoG-like"])
    text = " ".join(lines)
    assert "palm_detection_full_a_long_name" in text.replace(" ", "") and "100%" in text


def test_family_table_with_merged_families_names_them_in_the_legend() -> None:
    counts = {f: {f: 50, "laplacian": 50} for f in ("dog_on", "dog_off")}
    counts.update({"laplacian": {"laplacian": 100}, "delta": {"delta": 100}, "gauss": {"gauss": 100}})
    groups, _ = merge_groups(counts)
    names = [*dict.fromkeys(groups.values()), "dog_like"]
    rows = [{"source": "run", "unit": 1, "kernels": 304, **{f"reported_{k}": 0.5 for k in names}}]
    lines = _render(family_table(rows, {k: 0.5 for k in names}, groups, {"centre_surround": ["dog_on", "dog_off",
                                                                                           "laplacian"]}))
    _assert_fits(lines, ["unit", "n", "delta", "gauss", "c-s", "d1", "d2", "other", "DoG-like"])
    assert "c-s = dog+ + dog- + LoG" in " ".join(" ".join(lines).split())


def test_confusion_matrix_lines_fit_80_columns() -> None:
    counts = {f: {n: 100 for n in NAMES} for f in NAMES if f != "other"}
    groups, pairs = merge_groups(counts)
    lines = Separability((7, 7), 0.196, 700, 0, counts, groups, pairs).lines()
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[2].split() == ["planted", "delta", "gauss", "dog+", "dog-", "d1", "LoG", "d2", "other", "recall",
                                "merged"]
