"""The idealised kernel family of the DoG analysis, and least-squares fits of kernels to it.

Members (all ``A * f + b``, ``f`` of unit scale): ``gauss`` (a Gaussian), ``dog`` (centre Gaussian minus a wider
surround, both of unit mass: on-centre when ``A > 0``, off-centre when ``A < 0``), ``dx``/``dy`` (first
derivatives), ``dxx``/``dyy``/``dxy`` (second derivatives). The Gaussians are Lindeberg's *discrete analogue of
the Gaussian* (``pyscsp``: ``T(n; s) = e^{-s} I_n(s)``, the kernel of discrete scale space) and the derivatives
its central differences, the idealised models of the master-key filters (Lindeberg, Babaiee, Kiasari 2025); on a
7x7 grid they differ visibly from sampled continuous Gaussians at the small scales trained kernels use.

Two ways to fit: :func:`fit_kernel` (a grid start, then ``scipy.optimize.least_squares`` on sigmas, amplitude and
offset: for cluster centroids) and :func:`best_fit_r2` (the best atom of a fixed grid, amplitude and offset in
closed form: vectorised, for the per-layer shares of thousands of kernels; a slight under-estimate of the fit).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from scipy.optimize import least_squares

FAMILIES = ("gauss", "dog", "dx", "dy", "dxx", "dyy", "dxy")
SIGMA_GRID = tuple(np.geomspace(0.35, 3.5, 14))
RATIO_GRID = (1.3, 1.6, 2.0, 3.0)  # dog: surround sigma / centre sigma
DOG_FIT_R2 = 0.5  # a kernel is "DoG-like" when its best family fit explains this share of its variance


@lru_cache(maxsize=4096)
def _profiles(sigma: float, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-D discrete Gaussian of ``length`` samples and its first / second central differences."""
    from pyscsp.discscsp import dxmask, dxxmask, make1Ddiscgaussfilter

    pad = length + 4  # room for the difference masks before cropping
    full = np.zeros(pad)
    g = make1Ddiscgaussfilter(max(float(sigma), 1e-3))
    mid, half = pad // 2, len(g) // 2
    lo, hi = max(0, half - mid), min(len(g), half + (pad - mid))
    full[mid - (half - lo): mid + (hi - half)] = g[lo:hi]
    d1 = np.correlate(full, dxmask()[0], mode="same")
    d2 = np.correlate(full, dxxmask()[0], mode="same")
    cut = slice((pad - length) // 2, (pad - length) // 2 + length)
    return full[cut], d1[cut], d2[cut]


def family_kernel(family: str, shape: tuple[int, int], sigma: float, ratio: float = 1.6) -> np.ndarray:
    """The unit-amplitude member ``family`` at scale ``sigma`` (dog: surround = ``ratio * sigma``), rows = y."""
    h, w = shape
    gy, dy, dyy = _profiles(round(float(sigma), 12), h)
    gx, dx, dxx = _profiles(round(float(sigma), 12), w)
    if family == "gauss":
        return np.outer(gy, gx)
    if family == "dog":
        sy, _, _ = _profiles(round(float(sigma * ratio), 12), h)
        sx, _, _ = _profiles(round(float(sigma * ratio), 12), w)
        return np.outer(gy, gx) - np.outer(sy, sx)
    if family == "dx":
        return np.outer(gy, dx)
    if family == "dy":
        return np.outer(dy, gx)
    if family == "dxx":
        return np.outer(gy, dxx)
    if family == "dyy":
        return np.outer(dyy, gx)
    if family == "dxy":
        return np.outer(dy, dx)
    raise ValueError(f"unknown family {family!r}")


@dataclass
class FamilyFit:
    family: str
    name: str  # family plus polarity: dog_on / dog_off / gauss+ / dx- ...
    sigma: float
    sigma_surround: float | None
    amplitude: float
    offset: float
    r2: float  # share of the kernel's variance (about its mean) the fit explains

    def to_json(self) -> dict[str, object]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _name(family: str, amplitude: float) -> str:
    if family == "dog":
        return "dog_on" if amplitude > 0 else "dog_off"
    return family + ("+" if amplitude > 0 else "-")


def _r2(kernel: np.ndarray, model: np.ndarray) -> float:
    total = float(((kernel - kernel.mean()) ** 2).sum())
    return 1.0 - float(((kernel - model) ** 2).sum()) / total if total > 0 else 0.0


def _affine(kernel: np.ndarray, atom: np.ndarray) -> tuple[float, float]:
    """Closed-form least squares of ``kernel ~ a * atom + b``."""
    fc = atom - atom.mean()
    denom = float((fc * fc).sum())
    a = float(((kernel - kernel.mean()) * fc).sum()) / denom if denom > 0 else 0.0
    return a, float(kernel.mean() - a * atom.mean())


def fit_family(kernel: np.ndarray, family: str) -> FamilyFit:
    """Best ``A * f + b`` of one family: the best grid atom, refined by least squares on all parameters."""
    shape = kernel.shape
    starts = [(s, r) for s in SIGMA_GRID for r in (RATIO_GRID if family == "dog" else (1.6,))]
    best = max(starts, key=lambda sr: _r2(kernel, _model(kernel, family, *sr)))
    a0, b0 = _affine(kernel, family_kernel(family, shape, *best))
    is_dog = family == "dog"

    def residual(p: np.ndarray) -> np.ndarray:
        sigma, ratio = p[0], (p[1] if is_dog else 1.6)
        amp, off = p[-2], p[-1]
        return (amp * family_kernel(family, shape, sigma, ratio) + off - kernel).ravel()

    x0 = [best[0], best[1], a0, b0] if is_dog else [best[0], a0, b0]
    lo = [0.2, 1.05, -np.inf, -np.inf] if is_dog else [0.2, -np.inf, -np.inf]
    hi = [max(shape) * 1.0, 8.0, np.inf, np.inf] if is_dog else [max(shape) * 1.0, np.inf, np.inf]
    x0 = np.clip(x0, np.array(lo) + 1e-9, np.array(hi) - 1e-9)
    sol = least_squares(residual, x0, bounds=(lo, hi), x_scale="jac")
    p = sol.x
    sigma, ratio = float(p[0]), float(p[1]) if is_dog else None
    fitted = kernel + residual(p).reshape(shape)
    return FamilyFit(family, _name(family, float(p[-2])), sigma, sigma * ratio if ratio else None,
                     float(p[-2]), float(p[-1]), _r2(kernel, fitted))


def _model(kernel: np.ndarray, family: str, sigma: float, ratio: float) -> np.ndarray:
    atom = family_kernel(family, kernel.shape, sigma, ratio)
    a, b = _affine(kernel, atom)
    return a * atom + b


def fit_kernel(kernel: np.ndarray, families: tuple[str, ...] = FAMILIES) -> tuple[FamilyFit, list[FamilyFit]]:
    """The best fit over ``families`` and every family's own fit (for the CSV)."""
    fits = [fit_family(np.asarray(kernel, dtype=np.float64), f) for f in families]
    return max(fits, key=lambda f: f.r2), fits


@lru_cache(maxsize=16)
def atom_bank(shape: tuple[int, int]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Every grid atom of every family, centred and unit-norm (M, h*w), with its family name."""
    atoms, names = [], []
    for family in FAMILIES:
        for sigma in SIGMA_GRID:
            for ratio in RATIO_GRID if family == "dog" else (1.6,):
                f = family_kernel(family, shape, sigma, ratio).ravel()
                f = f - f.mean()
                norm = np.linalg.norm(f)
                if norm > 1e-12:
                    atoms.append(f / norm)
                    names.append(family)
    return np.asarray(atoms), tuple(names)


def best_fit_r2(kernels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For kernels (N, h, w): the best grid-atom R^2 of each (a * f + b in closed form) and its family index.

    With free amplitude and offset, the R^2 of one atom is the squared correlation of kernel and atom.
    """
    n = len(kernels)
    if n == 0:
        return np.zeros(0), np.zeros(0, dtype=int)
    atoms, names = atom_bank(tuple(kernels.shape[1:]))
    flat = kernels.reshape(n, -1).astype(np.float64)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    corr = (flat / np.where(norms > 0, norms, 1.0)) @ atoms.T
    best = np.argmax(corr**2, axis=1)
    r2 = corr[np.arange(n), best] ** 2
    family = np.array([FAMILIES.index(names[i]) for i in best])
    return np.where(norms[:, 0] > 0, r2, 0.0), family


def dog_fit_shares(kernel_set: object, threshold: float = DOG_FIT_R2) -> list[float]:
    """Per depthwise unit: the share of kernels whose best DoG-family fit explains >= ``threshold`` of variance."""
    return [float((best_fit_r2(k.astype(np.float64))[0] >= threshold).mean()) if len(k) else 0.0
            for k in kernel_set.kernels]  # type: ignore[attr-defined]
