"""Planted kernels of known family, for tests and the ``mkf filters bench`` demo of the family naming.

``gaussian="discrete"`` (default) draws the shapes from the idealised models the fits use (Lindeberg's discrete
analogue of the Gaussian and its central differences, :mod:`pipeline.filters.families`), at scales and surround
ratios that are not on the fit's grid; ``gaussian="sampled"`` draws them from sampled continuous Gaussians
(``exp(-r^2 / 2 sigma^2)`` and its analytic derivatives), which differ from the discrete analogue at the small
scales of a 5x5 or 7x7 kernel (R^2 of a sampled sigma = 0.8 Gaussian under the discrete Gaussian: 0.990); the
families fit both kinds, and the two sets check that either is named alike. Every kernel gets a random
scale, amplitude (and sign where the family has none of its own), offset and i.i.d. Gaussian noise of ``noise``
times its peak magnitude. DoGs are drawn where they are DoGs at the kernel's size (:func:`dog_scales`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

PLANTED_FAMILIES = ("delta", "gauss", "dog_on", "dog_off", "d1", "laplacian")


def _gauss(y: np.ndarray, x: np.ndarray, s: float) -> np.ndarray:
    return np.exp(-(x**2 + y**2) / (2 * s * s))


DOG_RATIO = (2.5, 3.5)  # surround / centre scale of the planted DoGs
DOG_SURROUND_MIN = 1.4  # px: a narrower surround makes a DoG a Laplacian on any support
DOG_SURROUND_SUPPORT = 0.9  # the widest surround, times the support's half-width (size - 1) / 2
DOG_CENTRE_MIN = 0.6  # px: a narrower centre is nearly one pixel, a delta minus a Gaussian, which k-means puts with deltas


def dog_scales(size: int, rng: np.random.Generator) -> tuple[float, float]:
    """Centre scale and surround ratio of a planted DoG that is a DoG on a ``size`` grid.

    Why not a fixed range: a DoG is caught between two simpler families. With a surround narrower than ~1.4 px it
    is a Laplacian (a noise-free 5x5 DoG of centre 0.5, ratio 2, keeps R^2 0.9998 under the Laplacian family), and
    with a surround wider than the support it is flat there, so a Gaussian plus offset explains it (centre 0.6,
    ratio 4 on 5x5: R^2 0.9995). So the surround is drawn between 1.4 px and 0.9 of the half-width (5x5: 1.4-1.8,
    7x7: 1.4-2.7), the ratio in 2.5-3.5 (less where the centre would fall below 0.6 px), and the centre is
    surround / ratio. On 3x3 no DoG is told apart.
    """
    hi = DOG_SURROUND_SUPPORT * (size - 1) / 2
    surround = rng.uniform(min(DOG_SURROUND_MIN, hi), hi)
    r = rng.uniform(DOG_RATIO[0], max(DOG_RATIO[0], min(DOG_RATIO[1], surround / DOG_CENTRE_MIN)))
    return surround / r, r


def _discrete(family: str, size: int, rng: np.random.Generator) -> np.ndarray:
    from pipeline.filters.families import atoms

    u, shape = size / 7.0, (size, size)
    if family == "delta":
        return atoms("delta", shape, np.ones(1))[0, 0].reshape(shape)
    if family == "gauss":
        return atoms("gauss", shape, np.array([rng.uniform(0.7, 1.6) * u]))[0, 0].reshape(shape)
    if family in ("dog_on", "dog_off"):
        s, r = dog_scales(size, rng)
        k = atoms("dog", shape, np.array([s]), np.array([r]))
        return k[0, 0].reshape(shape) * (1 if family == "dog_on" else -1)
    if family == "d1":
        theta = rng.uniform(0, 2 * np.pi)
        k = atoms("d1", shape, np.array([rng.uniform(0.8, 1.5) * u]))[0]
        return (np.cos(theta) * k[0] + np.sin(theta) * k[1]).reshape(shape)
    if family == "laplacian":
        return atoms("laplacian", shape, np.array([rng.uniform(0.8, 1.3) * u]))[0, 0].reshape(shape)
    raise ValueError(f"unknown planted family {family!r}; use one of {', '.join(PLANTED_FAMILIES)}")


def planted_shape(family: str, size: int, rng: np.random.Generator, gaussian: str = "discrete") -> np.ndarray:
    """One noise-free kernel of ``family`` on a ``size`` x ``size`` grid, peak magnitude 1, random scale."""
    if gaussian == "discrete":
        k = _discrete(family, size, rng)
        return k / np.abs(k).max()
    if gaussian != "sampled":
        raise ValueError(f"unknown gaussian {gaussian!r}; use discrete or sampled")
    c = (size - 1) // 2
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) - c
    u = size / 7.0  # scales are drawn for 7x7 and shrunk with the grid
    if family == "delta":
        k = np.zeros((size, size))
        k[c, c] = 1.0
    elif family == "gauss":
        k = _gauss(y, x, rng.uniform(0.7, 1.6) * u)
    elif family in ("dog_on", "dog_off"):
        s, r = dog_scales(size, rng)
        k = _gauss(y, x, s) / s**2 - _gauss(y, x, s * r) / (s * r) ** 2
        k = k if family == "dog_on" else -k
    elif family == "d1":
        s, theta = rng.uniform(0.8, 1.5) * u, rng.uniform(0, 2 * np.pi)
        k = -(np.cos(theta) * x + np.sin(theta) * y) * _gauss(y, x, s)
    elif family == "laplacian":
        s = rng.uniform(0.8, 1.3) * u
        k = ((x**2 + y**2) / s**2 - 2.0) * _gauss(y, x, s)
    else:
        raise ValueError(f"unknown planted family {family!r}; use one of {', '.join(PLANTED_FAMILIES)}")
    return k / np.abs(k).max()


def planted_kernels(per_family: int = 100, size: int = 7, noise: float = 0.05, seed: int = 0,
                    families: tuple[str, ...] = PLANTED_FAMILIES,
                    gaussian: str = "discrete") -> tuple[np.ndarray, np.ndarray]:
    """(kernels (N, size, size), truth (N,) family names), ``per_family`` of each, in family order."""
    rng = np.random.default_rng(seed)
    kernels, truth = [], []
    signed = {"delta", "gauss", "laplacian"}  # families whose sign is free (dogs carry theirs in the name)
    for family in families:
        for _ in range(per_family):
            k = planted_shape(family, size, rng, gaussian)
            amp = rng.uniform(0.5, 2.0) * (rng.choice([-1.0, 1.0]) if family in signed else 1.0)
            kernels.append(amp * k + rng.normal(0, 0.1 * abs(amp)) + rng.normal(0, noise * abs(amp), k.shape))
            truth.append(family)
    return np.stack(kernels), np.array(truth)


_OLD_TO_FAMILY = {"dog_on": "dog_on", "dog_off": "dog_off", "gauss": "gauss", "dx": "d1", "dy": "d1", "dxx": "d2",
                  "dyy": "d2", "dxy": "d2"}


def old_name_family(name: str) -> str:
    """The family of a cluster name given by the fit-only naming (``dog_on``, ``dx+``, ``gauss-#2``, ...)."""
    return _OLD_TO_FAMILY[name.split("#")[0].rstrip("+-")]


def bench_planted(per_family: int = 100, size: int = 7, noise: float = 0.015, clusters: int = 6, seed: int = 0,
                  gaussian: str = "discrete", log: Callable[[str], object] = print) -> dict[str, Any]:
    """Name a planted set both ways and report accuracy per family, DoG-named Gaussians/deltas and the ARIs.

    *Old*: the fit-only naming this project used before (best R^2 over the DoG family, no price for parameters:
    a cluster takes its centroid's best fit, a kernel counts as "DoG-like" when its best fit reaches R^2 0.5).
    *New*: :func:`pipeline.filters.families.classify` (lowest BIC, ``other`` below ``MIN_R2``).
    """
    from sklearn.metrics import adjusted_rand_score

    from pipeline.filters.cluster import ClusterOptions, cluster_kernels
    from pipeline.filters.dog import DOG_FIT_R2, best_fit_r2, fit_kernel
    from pipeline.filters.families import classify
    from pipeline.filters.kernel_set import KernelSet

    kernels, truth = planted_kernels(per_family, size, noise, seed, gaussian=gaussian)
    new = classify(kernels)
    accuracy = {f: round(float((new.family[truth == f] == f).mean()), 4) for f in PLANTED_FAMILIES}
    dog = np.isin(new.family, ["dog_on", "dog_off"])
    named_dog = {f: round(float(dog[truth == f].mean()), 4) for f in ("gauss", "delta")}
    old_dog_like = best_fit_r2(kernels)[0] >= DOG_FIT_R2
    old_named_dog = {f: round(float(old_dog_like[truth == f].mean()), 4) for f in ("gauss", "delta")}
    result = cluster_kernels([KernelSet("planted", "planted", ["planted"], [kernels])],
                             ClusterOptions(clusters=clusters, epochs=150, seed=seed))
    old_names = [old_name_family(fit_kernel(c)[0].name) for c in result.centroids]
    new_names = [n.split("#")[0] for n in result.names]
    ari = {"kmeans_clusters": adjusted_rand_score(truth, result.labels),
           "old_cluster_names": adjusted_rand_score(truth, np.array(old_names)[result.labels]),
           "new_cluster_names": adjusted_rand_score(truth, np.array(new_names)[result.labels]),
           "new_kernel_families": adjusted_rand_score(truth, new.family)}
    ari = {k: round(float(v), 4) for k, v in ari.items()}
    confusion = {f: {str(n): int((new.family[truth == f] == n).sum()) for n in sorted(set(new.family[truth == f]))}
                 for f in PLANTED_FAMILIES}
    report = {"per_family": per_family, "size": size, "noise": noise, "gaussian": gaussian, "seed": seed,
              "clusters": clusters, "kernels_per_second": round(new.kernels_per_second, 1),
              "accuracy": accuracy, "named_dog_new": named_dog, "dog_like_old": old_named_dog, "ari": ari,
              "confusion": confusion, "old_cluster_names": old_names, "new_cluster_names": result.names}
    log(f"{len(kernels)} planted {size}x{size} kernels ({gaussian}, noise {noise}): family fits at "
        f"{new.kernels_per_second:.0f} kernels/s")
    for f in PLANTED_FAMILIES:
        log(f"  {f:<10} named correctly {accuracy[f]:6.1%}   {confusion[f]}")
    log(f"  named DoG (BIC): gauss {named_dog['gauss']:.1%}, delta {named_dog['delta']:.1%};  counted DoG-like "
        f"by the old best-fit share: gauss {old_named_dog['gauss']:.1%}, delta {old_named_dog['delta']:.1%}")
    log(f"  k-means (k={clusters}) clusters: old names {old_names}, new names {result.names}")
    log(f"  adjusted Rand index vs truth: k-means labels {ari['kmeans_clusters']:.3f}, clusters named the old way "
        f"{ari['old_cluster_names']:.3f}, named by BIC {ari['new_cluster_names']:.3f}, every kernel named by BIC "
        f"{ari['new_kernel_families']:.3f}")
    return report
