"""Issue 24: family names that hold on kernels nobody tuned them to (pipeline/filters/analytic.py, separability.py).

The planted kernels here come from continuous profiles averaged over each pixel, at sub-pixel centres, written
apart from the atoms the families fit, at the noise measured on trained kernels (BlazePalm's 5x5: 7 % of the peak,
the least noisy source; the demo ConvNeXt's 7x7: 19 %; docs/filters.md), not at a noise lowered until the naming
passes.
"""

from __future__ import annotations

import ast
import io
from pathlib import Path

import numpy as np
import pytest

from pipeline.filters.analytic import ANALYTIC_FAMILIES, Ranges, analytic_kernels
from pipeline.filters.cluster import ClusterOptions, cluster_kernels, normalise_kernels
from pipeline.filters.families import classify
from pipeline.filters.kernel_set import KernelSet
from pipeline.filters.separability import estimate_noise, measure, merge_groups

REAL_NOISE = 0.07  # median relative residual of BlazePalm's 4,192 trained 5x5 kernels (the least noisy source)
TRAINED_7X7_NOISE = 0.19  # the same on the filter demo ConvNeXt's trained 7x7 kernels (seeds 0 / 1: 19.6 / 18.3 %)


def test_the_analytic_generator_is_written_apart_from_the_fitted_atoms() -> None:
    import pipeline.filters.analytic as analytic

    tree = ast.parse(Path(analytic.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.startswith("pipeline")}
    kernels, truth = analytic_kernels(per_family=5, size=7, noise=0.0, seed=0)
    assert set(truth) == set(ANALYTIC_FAMILIES) and "d2" in truth


def test_sub_pixel_centres_are_fitted_and_the_noise_is_read_back() -> None:
    """A centred model leaves 4-13 % of a half-pixel-off kernel's peak unexplained: the noise read from such
    kernels was twice the planted one, and shifted DoGs were named DoG 9 % of the time noise-free."""
    from pipeline.filters.analytic import profile

    rng = np.random.default_rng(1)
    drawn = [profile("gauss", 7, rng, Ranges(gauss_sigma=(0.6, 1.2))) for _ in range(30)]
    fits = classify(np.stack([k for k, _ in drawn]))
    assert (fits.family == "gauss").all()
    error = np.abs(np.r_[fits.cx - [p["cx"] for _, p in drawn], fits.cy - [p["cy"] for _, p in drawn]])
    assert np.median(error) < 0.02 and error.max() < 0.15  # the grid's parabola; the edge of +-0.5 px is coarser
    for size, noise in ((5, 0.03), (7, 0.03), (7, 0.08)):
        kernels, _ = analytic_kernels(per_family=30, size=size, noise=noise, seed=2)
        measured, used = estimate_noise(classify(kernels))
        assert used >= 150 and noise * 0.9 <= measured <= noise * 1.35, (size, noise, measured)
    clean, truth = analytic_kernels(per_family=40, size=7, noise=0.0, seed=3, families=("dog_on", "dog_off"))
    assert (classify(clean).family == truth).mean() >= 0.6  # measured 76-78 %; 9 % with centred fits only


def test_confusion_matrix_merges_what_the_data_cannot_separate() -> None:
    sep = measure((7, 7), REAL_NOISE, per_family=60, seed=0)
    assert sep.groups["dog_on"] == sep.groups["dog_off"] == sep.groups["laplacian"] == "centre_surround"
    for family in ("gauss", "d1", "d2"):  # told apart at this size and noise: reported on their own
        assert sep.groups[family] == family and sep.recall(family) >= 0.6, family
    for family in ("dog_on", "dog_off", "laplacian"):
        assert sep.group_recall(family) >= 0.6, family
    assert sep.recall("d2") >= 0.8  # planted, not only fitted
    text = "\n".join(sep.lines())
    assert all(len(line) <= 80 for line in sep.lines()) and "centre_surround = dog_on + dog_off + laplacian" in text


def test_at_the_noise_of_trained_7x7_kernels_only_what_holds_is_reported() -> None:
    """The bench's default: the noise read on the only trained 7x7 DS-CNN measured (not BlazePalm's 5x5 best case).
    There DoG and LoG are one family, no blob is named a DoG, and the derivatives still hold; most deltas fall
    below R2 0.5 (other), which is what 19 % noise on 48 of 49 pixels does to a one-pixel kernel."""
    from pipeline.filters.separability import DEFAULT_NOISE

    assert DEFAULT_NOISE == TRAINED_7X7_NOISE
    kernels, _ = analytic_kernels(per_family=30, size=7, noise=TRAINED_7X7_NOISE, seed=2)
    measured, used = estimate_noise(classify(kernels))
    assert used >= 120 and 0.85 * TRAINED_7X7_NOISE <= measured <= 1.1 * TRAINED_7X7_NOISE, measured
    sep = measure((7, 7), TRAINED_7X7_NOISE, per_family=60, seed=0)
    assert sep.merged == {"centre_surround": ["dog_on", "dog_off", "laplacian"]}
    assert sep.recall("d1") >= 0.9 and sep.recall("d2") >= 0.65  # measured 95-97 %, 72-90 % (seeds 0, 1)
    for family in ("delta", "gauss"):
        row = sep.counts[family]
        assert (row.get("dog_on", 0) + row.get("dog_off", 0)) <= 0.05 * sum(row.values()), (family, row)


def test_a_gaussian_is_never_merged_with_a_dog() -> None:
    """Even where the matrix confuses them both ways, a blob is not reported as centre-surround."""
    counts = {"gauss": {"gauss": 40, "dog_on": 60}, "dog_on": {"dog_on": 30, "gauss": 70},
              "laplacian": {"laplacian": 100}, "delta": {"delta": 100}}
    groups, _ = merge_groups(counts)
    assert groups["gauss"] == "gauss" and groups["dog_on"] == "dog_on" and groups["laplacian"] == "laplacian"


def test_centroids_are_named_by_effect_size_not_a_likelihood_without_bound() -> None:
    """A cluster's centroid averages hundreds of kernels, so it is nearly noiseless, and BIC names the mean of
    Gaussians, DoGs and Laplacians a DoG for a 0.08 % better fit (issue 24's Gaussian cluster named dog_on)."""
    parts = [analytic_kernels(100, 7, 0.03, seed=s, families=(f,))[0] for s, f in enumerate(("gauss", "laplacian"))]
    parts = [p * np.sign(p[:, 3, 3] - np.median(p, axis=(1, 2)))[:, None, None] for p in parts]  # centre up
    parts.append(analytic_kernels(200, 7, 0.03, seed=5, families=("dog_on",))[0])
    mixed = normalise_kernels(np.concatenate(parts)).mean(axis=0).reshape(1, 7, 7)
    assert not classify(mixed, refine=True, criterion="effect").family[0].startswith("dog")
    dogs = normalise_kernels(analytic_kernels(200, 7, 0.03, seed=6, families=("dog_on",))[0]).mean(axis=0)
    assert classify(dogs.reshape(1, 7, 7), refine=True, criterion="effect").family[0] == "dog_on"


def test_the_cluster_holding_the_gaussians_is_not_named_a_dog() -> None:
    """Issue 24's table: a ConvNeXt's 7x7 kernels planted from six families, clustered in six; the Gaussians'
    clusters were named dog_on / dog_off (and the Laplacians' too)."""
    fams = ("dog_on", "dog_off", "gauss", "d1", "laplacian")
    kernels, truth = analytic_kernels(60, 7, 0.03, seed=0, families=fams, ranges=Ranges(axis_aligned=True))
    result = cluster_kernels([KernelSet("planted", "planted", ["u"], [kernels])],
                             ClusterOptions(clusters=6, epochs=100, seed=0))
    for c, name in enumerate(result.names):
        members = truth[result.labels == c]
        if (members == "gauss").mean() >= 0.2:
            assert not name.startswith("dog"), (name, dict(zip(*np.unique(members, return_counts=True), strict=True)))
        if len(members) and (members == "laplacian").mean() >= 0.2:
            assert not name.startswith("dog"), name  # merged as centre_surround at this noise, or named laplacian
    summary = result.summary()
    assert summary["separability"]["merged"] == {"centre_surround": ["dog_on", "dog_off", "laplacian"]}
    assert 0.02 <= summary["noise"]["relative_sd"] <= 0.045
    shares = summary["reported_shares"]
    assert shares["dog_like"] == pytest.approx(shares["centre_surround"] + shares["d1"] + shares["d2"])


def test_cluster_and_bench_output_fit_an_80_column_terminal(tmp_path: Path, monkeypatch) -> None:
    from rich.console import Console

    import launch.commands.filters as filters_cli
    from launch.cli import main

    kernels, _ = analytic_kernels(20, 7, REAL_NOISE, seed=0)
    npz, _ = KernelSet("a_long_source_name", "a_long_source_name", ["u1", "u2"],
                       [kernels[:70], kernels[70:]]).save(tmp_path)
    buf = io.StringIO()
    monkeypatch.setattr(filters_cli, "console", Console(file=buf, width=80, color_system=None))
    assert main(["filters", "cluster", str(npz), "--clusters", "3", "--epochs", "20",
                 "--out", str(tmp_path / "c")]) == 0
    assert main(["filters", "bench", "--like", str(npz), "--per-family", "20"]) == 0
    text = buf.getvalue()
    assert "…" not in text and all(len(line) <= 80 for line in text.splitlines())
    assert "c-s" in text and "DoG-like" in text and "recall" in text


def test_bench_rejects_bad_input_with_one_line() -> None:
    from datamodules.errors import UserError
    from pipeline.filters.separability import bench_analytic

    with pytest.raises(UserError, match=r"--noise 1.5 is not a share"):
        bench_analytic(noise=1.5)
    with pytest.raises(UserError, match=r"--size 2 is too small"):
        bench_analytic(size=2)
