"""Families chosen by evidence (issue 17): planted kernels of known family are named by BIC, not by best fit."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.filters.cluster import ClusterOptions, cluster_kernels
from pipeline.filters.extract import KernelSet
from pipeline.filters.families import FORMS, classify, fit_form
from pipeline.filters.planted import PLANTED_FAMILIES, bench_planted, planted_kernels

DOGS = ("dog_on", "dog_off")


@pytest.mark.parametrize("gaussian", ["discrete", "sampled"])
def test_5x5_gaussians_and_deltas_are_not_dogs_at_5_percent_noise(gaussian: str) -> None:
    kernels, truth = planted_kernels(per_family=100, size=5, noise=0.05, seed=2, gaussian=gaussian)
    result = classify(kernels)
    for family in ("gauss", "delta"):
        assert np.isin(result.family[truth == family], DOGS).mean() <= 0.05, family


def test_with_discrete_forms_only_sampled_gaussians_were_dogs() -> None:
    """Guards the reason for the second kind: with the discrete Gaussian alone, sampled Gaussians are named by a
    richer family that absorbs the difference (DoG, Laplacian), and sampled DoGs often Laplacians."""
    import pipeline.filters.families as fam

    kernels, truth = planted_kernels(per_family=60, size=7, noise=0.015, seed=4, gaussian="sampled",
                                     families=("gauss", "dog_on"))
    both = classify(kernels)
    kinds = fam.KINDS
    try:
        fam.KINDS = ("discrete",)
        fam._grid_basis.cache_clear()
        discrete_only = classify(kernels)
    finally:
        fam.KINDS = kinds
        fam._grid_basis.cache_clear()
    for family in ("gauss", "dog_on"):
        assert (both.family[truth == family] == family).mean() >= 0.9
    assert (discrete_only.family[truth == "gauss"] == "gauss").mean() < 0.5  # measured 7 %
    assert (discrete_only.family[truth == "dog_on"] == "dog_on").mean() < 0.85  # measured 60-77 %


def test_planted_dogs_are_dogs_at_their_size() -> None:
    """The generator draws DoGs whose surround lies between a Laplacian's and the support's edge; the old range
    (centre 0.7-1.0 x size / 7, ratio 2-3) left many 5x5 DoGs within 0.3 % of a Laplacian or a Gaussian."""
    from pipeline.filters.planted import dog_scales

    rng = np.random.default_rng(0)
    for size in (5, 7):
        for _ in range(50):
            s, r = dog_scales(size, rng)
            assert 1.4 <= s * r <= 0.9 * (size - 1) / 2 and 2.5 <= r <= 3.5
    clean, truth = planted_kernels(per_family=40, size=5, noise=0.0, seed=5, families=DOGS)
    fits = classify(clean)
    simpler = np.maximum(fits.form_r2[:, FORMS.index("laplacian")], fits.form_r2[:, FORMS.index("gauss")])
    assert np.median(simpler) < 0.997 and (fits.family == truth).all()


def test_unexplained_kernels_are_other_and_flat_ones_too() -> None:
    noise = np.random.default_rng(0).normal(size=(50, 7, 7))
    result = classify(np.concatenate([noise, np.zeros((1, 7, 7))]))
    assert (result.family[:50] == "other").mean() >= 0.9 and result.family[50] == "other"
    assert result.shares()["other"] >= 0.9


def test_refined_fit_recovers_scales_amplitude_and_offset() -> None:
    from pipeline.filters.families import atoms

    k = -1.5 * atoms("dog", (7, 7), np.array([0.9]), np.array([2.2]))[0, 0].reshape(7, 7) + 0.02
    result = classify(k[None], refine=True)
    assert result.family[0] == "dog_off" and result.r2[0] > 0.9999
    assert result.sigma[0] == pytest.approx(0.9, rel=1e-3)
    assert result.sigma_surround[0] == pytest.approx(0.9 * 2.2, rel=1e-3)
    assert result.offset[0] == pytest.approx(0.02, abs=1e-6)
    one = classify(atoms("gauss", (5, 5), np.array([0.8]), kind="sampled")[0, 0].reshape(1, 5, 5), refine=True)
    assert one.family[0] == "gauss" and one.kind[0] == "sampled" and one.sigma[0] == pytest.approx(0.8, rel=1e-3)
    grid_only = fit_form("dog", k[None] / np.linalg.norm(k - k.mean()), refine=False)
    refined = fit_form("dog", k[None] / np.linalg.norm(k - k.mean()), refine=True)
    assert refined.rss[0] <= grid_only.rss[0]


def test_clusters_of_gaussians_and_deltas_are_named_so() -> None:
    kernels, truth = planted_kernels(per_family=40, size=7, noise=0.015, seed=3,
                                     families=("delta", "gauss", "dog_on"))
    result = cluster_kernels([KernelSet("planted", "planted", ["u"], [kernels])],
                             ClusterOptions(clusters=4, epochs=100, seed=0, sign="canonical"))
    # (k = 4, not 3: k-means on this set puts the narrow-centre DoGs with the deltas at k = 3, a property of
    # the clustering, not of the naming tested here)
    named = {}
    for c in range(len(result.names)):
        members = truth[result.labels == c]
        if len(members):
            majority = max(set(members.tolist()), key=members.tolist().count)
            named.setdefault(majority, set()).add(str(result.fits.family[c]))
    # the centroids' own families; a DoG cluster is *reported* as centre_surround_on where the kernels' noise
    # leaves DoGs and Laplacians apart less than 80 % of the time (issue 24)
    assert "delta" in named["delta"] and "gauss" in named["gauss"] and "dog_on" in named["dog_on"]
    rows = result.layer_shares()
    assert rows[0]["family_dog"] == pytest.approx(rows[0]["family_dog_on"] + rows[0]["family_dog_off"])
    assert rows[0]["family_delta"] >= 0.2 and rows[0]["family_gauss"] >= 0.2


def test_bench_reports_accuracy_ari_and_speed() -> None:
    report = bench_planted(per_family=40, size=7, noise=0.02, clusters=6, seed=0)
    assert set(report["accuracy"]) == set(PLANTED_FAMILIES)
    assert report["ari"]["new_kernel_families"] > 0.85 > report["ari"]["old_cluster_names"]
    assert report["dog_like_old"]["gauss"] > 0.9 and report["named_dog_new"]["gauss"] <= 0.05
    assert report["kernels_per_second"] > 50
