"""Figure-1-style filter grids: kernels sampled from the first, middle and last depthwise units of each source.

Each kernel is scaled by its own largest magnitude (per-filter normalisation, as in the paper's Figure 1), and drawn
with a diverging colormap centred on 0, so the sign structure (on / off centre, edge polarity) reads at a glance
whatever a layer's weight scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.filters.kernel_set import KernelSet

CMAP = "RdBu_r"  # red positive, blue negative, white 0


def pick_units(num_units: int) -> list[int]:
    """1-based indices of the first, middle and last unit (fewer when the model has fewer units)."""
    return sorted({1, (num_units + 1) // 2, num_units}) if num_units else []


def sample_filters(kernel_set: KernelSet, per_unit: int, seed: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(unit, channels, kernels) per picked unit: ``per_unit`` channels drawn without replacement, seeded."""
    rng = np.random.default_rng(seed)
    rows = []
    for unit in pick_units(kernel_set.num_units):
        kernels = kernel_set.kernels[unit - 1]
        channels = np.sort(rng.choice(len(kernels), size=min(per_unit, len(kernels)), replace=False))
        rows.append((unit, channels, kernels[channels]))
    return rows


def normalise(kernel: np.ndarray) -> np.ndarray:
    peak = float(np.abs(kernel).max())
    return kernel / peak if peak > 0 else kernel


def draw_grid(sets: list[KernelSet], out: str | Path, per_unit: int = 8, seed: int = 0, dpi: int = 100,
              cell_inches: float = 0.5, title: str | None = None) -> list[Path]:
    """Write the grid as PNG and PDF next to each other (``out`` names the PNG); returns both paths.

    The figure size is fixed by the inputs (``cell_inches`` per kernel, no tight bounding box), so a figure for
    the same sources always has the same pixel size.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = [sample_filters(s, per_unit, seed) for s in sets]
    rows = max(len(s) for s in samples)
    width = len(sets) * (per_unit * cell_inches + 0.9)
    height = rows * cell_inches * 1.25 + 0.7
    fig = plt.figure(figsize=(width, height), dpi=dpi)
    subfigs = np.atleast_1d(fig.subfigures(1, len(sets), wspace=0.02))
    for subfig, kset, sample in zip(subfigs, sets, samples, strict=True):
        subfig.suptitle(f"{kset.source}\n{kset.arch}", fontsize=7)
        axes = np.atleast_2d(subfig.subplots(rows, per_unit, squeeze=False))
        top = 1 - 0.55 / height  # room for the two title lines
        subfig.subplots_adjust(left=0.1, right=0.98, top=top, bottom=0.02, wspace=0.1, hspace=0.35)
        for ax in axes.ravel():
            ax.set_axis_off()
        for r, (unit, channels, kernels) in enumerate(sample):
            for c, (channel, kernel) in enumerate(zip(channels, kernels, strict=True)):
                ax = axes[r, c]
                ax.imshow(normalise(kernel), cmap=CMAP, vmin=-1, vmax=1, interpolation="nearest")
                ax.set_title(f"c{channel}", fontsize=5, pad=1)
            axes[r, 0].text(-0.25, 0.5, f"unit {unit}", transform=axes[r, 0].transAxes, fontsize=6,
                            ha="right", va="center", rotation=90)
    if title:
        fig.suptitle(title, fontsize=8)
    png = Path(out)
    png.parent.mkdir(parents=True, exist_ok=True)
    pdf = png.with_suffix(".pdf")
    fig.savefig(png, dpi=dpi)
    fig.savefig(pdf)
    plt.close(fig)
    return [png, pdf]


def expected_size(num_sources: int, rows: int, per_unit: int = 8, dpi: int = 100,
                  cell_inches: float = 0.5) -> tuple[int, int]:
    """Pixel size (width, height) :func:`draw_grid` produces."""
    width = num_sources * (per_unit * cell_inches + 0.9)
    height = rows * cell_inches * 1.25 + 0.7
    return round(width * dpi), round(height * dpi)
