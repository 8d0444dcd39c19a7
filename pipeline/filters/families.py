"""Kernel families chosen by evidence: every kernel is fitted by every family and named by the lowest BIC.

Why: the best R^2 alone cannot tell a Gaussian from a DoG, since every Gaussian is a DoG whose surround vanishes
(and every delta a Gaussian of vanishing scale), so a fit-only verdict calls Gaussians and identity kernels DoGs.
Here each family pays for its parameters: a kernel of ``n`` pixels with residual sum of squares ``RSS`` under a
family of ``p`` parameters scores ``BIC = n ln(RSS / n) + p ln n`` and takes the family of lowest BIC; the nested
simpler family wins unless the richer one fits clearly better. A kernel whose chosen fit explains less than
``min_r2`` of its variance (R^2 about its mean), or a flat kernel, is ``other``.

Families (all with a free offset ``b``; the Gaussians are Lindeberg's discrete analogue ``T(n; t) = e^{-t}
I_n(t)``, ``t = sigma^2``, the derivatives its central differences, as in :mod:`pipeline.filters.dog`):

=============  =============================================================  ==========
family         model                                                          parameters
=============  =============================================================  ==========
``delta``      ``a * delta_centre + b`` (an identity kernel)                  2
``gauss``      ``a * G_sigma + b``                                            3
``dog_on``     ``a * (G_sigma - G_{r sigma}) + b``, ``a > 0`` (on-centre)     4
``dog_off``    the same with ``a < 0`` (off-centre)                           4
``d1``         ``ax * dG/dx + ay * dG/dy + b`` (first derivative, any angle)  4
``laplacian``  ``a * (d2G/dx2 + d2G/dy2) + b``                                3
``d2``         ``axx * Gxx + axy * Gxy + ayy * Gyy + b`` (any second deriv.)  5
=============  =============================================================  ==========

The linear coefficients are solved in closed form for given scales (variable projection), so only ``sigma`` (and
the DoG's surround ratio ``r``) are searched: first on a grid for all kernels at once, then refined by one
``scipy.optimize.least_squares`` call per family over the whole batch (a block-diagonal Jacobian sparsity, so the
finite differences cost one residual evaluation per nonlinear parameter, whatever the number of kernels).
Kernels of any size: offsets are counted from pixel ``(h - 1) // 2, (w - 1) // 2``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy.optimize import least_squares
from scipy.sparse import csr_matrix
from scipy.special import ive

FORMS = ("delta", "gauss", "dog", "d1", "laplacian", "d2")  # fitted models; dog splits into on / off by sign
FAMILIES = ("delta", "gauss", "dog_on", "dog_off", "d1", "laplacian", "d2")
OTHER = "other"
NAMES = (*FAMILIES, OTHER)
PARAMS = {"delta": 2, "gauss": 3, "dog": 4, "d1": 4, "laplacian": 3, "d2": 5}  # incl. amplitude(s) and offset
MARGIN = 2.0  # criterion units a richer family must win by ("positive evidence")
MIN_R2 = 0.5  # a kernel no family explains to this share of its variance is "other"
SIGMA_BOUNDS = (0.3, 4.0)
RATIO_BOUNDS = (1.1, 6.0)
SIGMA_GRID = np.geomspace(*SIGMA_BOUNDS, 72)  # steps of 3.7 %
DOG_SIGMA_GRID = np.geomspace(*SIGMA_BOUNDS, 40)
RATIO_GRID = np.geomspace(*RATIO_BOUNDS, 16)
RSS_FLOOR = 1e-9  # relative to the kernel's variance: fits better than this count as exact (no log of 0)


def _offsets(n: int) -> np.ndarray:
    return np.arange(n) - (n - 1) // 2


def profiles(sigma: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-D discrete Gaussians (..., n) of scales ``sigma`` (...,) and their first and second central differences."""
    t = np.asarray(sigma, dtype=np.float64)[..., None] ** 2
    k = _offsets(n)
    g = ive(np.abs(k), t)
    gm, gp = ive(np.abs(k - 1), t), ive(np.abs(k + 1), t)
    return g, (gp - gm) / 2.0, gp - 2.0 * g + gm


def atoms(form: str, shape: tuple[int, int], sigma: np.ndarray, ratio: np.ndarray | None = None) -> np.ndarray:
    """The linear atoms of ``form`` at scales ``sigma`` (M,): (M, m, h*w), rows = y, without the constant."""
    h, w = shape
    sigma = np.atleast_1d(np.asarray(sigma, dtype=np.float64))
    m = len(sigma)
    if form == "delta":
        d = np.zeros((m, 1, h, w))
        d[:, 0, (h - 1) // 2, (w - 1) // 2] = 1.0
        return d.reshape(m, 1, h * w)
    gy, d1y, d2y = profiles(sigma, h)
    gx, d1x, d2x = profiles(sigma, w)

    def outer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.einsum("mi,mj->mij", a, b).reshape(m, h * w)

    if form == "gauss":
        out = [outer(gy, gx)]
    elif form == "dog":
        sy, _, _ = profiles(sigma * np.asarray(ratio, dtype=np.float64), h)
        sx, _, _ = profiles(sigma * np.asarray(ratio, dtype=np.float64), w)
        out = [outer(gy, gx) - outer(sy, sx)]
    elif form == "d1":
        out = [outer(gy, d1x), outer(d1y, gx)]
    elif form == "laplacian":
        out = [outer(gy, d2x) + outer(d2y, gx)]
    elif form == "d2":
        out = [outer(gy, d2x), outer(d1y, d1x), outer(d2y, gx)]
    else:
        raise ValueError(f"unknown form {form!r}")
    return np.stack(out, axis=1)


def _design(form: str, shape: tuple[int, int], sigma: np.ndarray, ratio: np.ndarray | None) -> np.ndarray:
    """(M, h*w, m + 1): the atoms plus the constant column."""
    a = atoms(form, shape, sigma, ratio)
    ones = np.ones((a.shape[0], 1, a.shape[2]))
    return np.concatenate([a, ones], axis=1).transpose(0, 2, 1)


def _solve(x: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched least squares ``k ~ x @ c`` (x (N, d, m), k (N, d)): coefficients (N, m) and residuals (N, d)."""
    c = np.einsum("nmd,nd->nm", np.linalg.pinv(x, rcond=1e-10), k)
    return c, k - np.einsum("ndm,nm->nd", x, c)


@dataclass
class FormFit:
    """One form's best fit of every kernel."""

    rss: np.ndarray  # (N,)
    coef: np.ndarray  # (N, m + 1): atom coefficients, then the offset
    sigma: np.ndarray  # (N,) (nan for delta)
    ratio: np.ndarray  # (N,) (nan but for dog)


def _grid_start(form: str, flat: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Best grid point (sigma, ratio) per kernel, by projection on an orthonormal basis of each grid design."""
    if form == "dog":
        sg, rg = (a.ravel() for a in np.meshgrid(DOG_SIGMA_GRID, RATIO_GRID, indexing="ij"))
    else:
        sg, rg = SIGMA_GRID, np.full(len(SIGMA_GRID), np.nan)
    u = _grid_basis(form, shape)
    best = np.concatenate([(np.einsum("gdm,nd->ngm", u, flat[i:i + 512]) ** 2).sum(axis=2).argmax(axis=1)
                           for i in range(0, len(flat), 512)]).astype(int)
    return sg[best], rg[best]


@lru_cache(maxsize=64)
def _grid_basis(form: str, shape: tuple[int, int]) -> np.ndarray:
    """Orthonormal bases (G, h*w, m + 1) of the grid designs; directions a design does not span are zeroed."""
    if form == "dog":
        sg, rg = (a.ravel() for a in np.meshgrid(DOG_SIGMA_GRID, RATIO_GRID, indexing="ij"))
        x = _design(form, shape, sg, rg)
    else:
        x = _design(form, shape, SIGMA_GRID, None)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    return u * (s > s[:, :1] * 1e-10)[:, None, :]


def fit_form(form: str, kernels: np.ndarray, refine: bool = True, max_nfev: int = 30) -> FormFit:
    """Fit ``form`` to every kernel (N, h, w): a grid start, then one batched ``least_squares`` on the scales."""
    n, h, w = kernels.shape
    shape = (h, w)
    flat = kernels.reshape(n, h * w).astype(np.float64)
    if form == "delta":
        coef, res = _solve(np.repeat(_design(form, shape, np.ones(1), None), n, axis=0), flat)
        return FormFit((res**2).sum(axis=1), coef, np.full(n, np.nan), np.full(n, np.nan))
    sigma, ratio = _grid_start(form, flat, shape)
    is_dog = form == "dog"
    lo = np.array([SIGMA_BOUNDS[0], RATIO_BOUNDS[0]] if is_dog else [SIGMA_BOUNDS[0]])
    hi = np.array([SIGMA_BOUNDS[1], RATIO_BOUNDS[1]] if is_dog else [SIGMA_BOUNDS[1]])
    p = len(lo)

    def unpack(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        x = x.reshape(n, p)
        return x[:, 0], (x[:, 1] if is_dog else None)

    def residual(x: np.ndarray) -> np.ndarray:
        s, r = unpack(x)
        return _solve(_design(form, shape, s, r), flat)[1].ravel()

    x0 = np.stack([sigma, ratio], axis=1) if is_dog else sigma[:, None]
    x0 = np.clip(x0, lo + 1e-9, hi - 1e-9).ravel()
    if refine and n:
        rows = np.repeat(np.arange(n * h * w), p)
        cols = (rows // (h * w)) * p + np.tile(np.arange(p), n * h * w)
        sparsity = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n * h * w, n * p))
        sol = least_squares(residual, x0, bounds=(np.tile(lo, n), np.tile(hi, n)), jac_sparsity=sparsity,
                            method="trf", x_scale=np.tile(hi - lo, n) * 0.1, max_nfev=max_nfev, xtol=1e-6,
                            ftol=1e-10)
        x_best = sol.x
        # keep the grid start where the refinement did not help that kernel (a shared stopping rule)
        r0 = residual(x0).reshape(n, -1)
        r1 = residual(x_best).reshape(n, -1)
        worse = (r1**2).sum(axis=1) > (r0**2).sum(axis=1)
        x_best = np.where(np.repeat(worse, p), x0, x_best)
    else:
        x_best = x0
    s, r = unpack(x_best)
    coef, res = _solve(_design(form, shape, s, r), flat)
    return FormFit((res**2).sum(axis=1), coef, s, r if r is not None else np.full(n, np.nan))


@dataclass
class FamilyResult:
    """Per kernel: the family chosen by BIC (or ``other``), its fit, and every form's R^2 and BIC."""

    family: np.ndarray  # (N,) str, one of NAMES
    r2: np.ndarray  # (N,) R^2 of the chosen form
    sigma: np.ndarray  # (N,) centre scale of the chosen form (nan for delta)
    sigma_surround: np.ndarray  # (N,) dog only
    amplitude: np.ndarray  # (N,) centre value of the fitted model minus its offset (the sign of the kernel)
    offset: np.ndarray
    angle: np.ndarray  # (N,) degrees, d1 only: direction of increase
    form_r2: np.ndarray  # (N, len(FORMS))
    form_bic: np.ndarray  # (N, len(FORMS))
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kernels_per_second(self) -> float:
        return len(self.family) / self.seconds if self.seconds > 0 else float("inf")

    def shares(self, mask: np.ndarray | None = None) -> dict[str, float]:
        """Share of each family (and ``dog`` = on + off) among the kernels in ``mask`` (all by default)."""
        fam = self.family if mask is None else self.family[mask]
        out = {name: float((fam == name).mean()) if len(fam) else 0.0 for name in NAMES}
        out["dog"] = out["dog_on"] + out["dog_off"]
        return out

    def row(self, i: int) -> dict[str, Any]:
        """One kernel's fit, rounded, for JSON and CSV."""
        def num(v: float) -> float | None:
            return None if not np.isfinite(v) else round(float(v), 5)

        return {"family": str(self.family[i]), "r2": num(self.r2[i]), "sigma": num(self.sigma[i]),
                "sigma_surround": num(self.sigma_surround[i]), "amplitude": num(self.amplitude[i]),
                "offset": num(self.offset[i]), "angle": num(self.angle[i]),
                "r2_by_form": {f: num(v) for f, v in zip(FORMS, self.form_r2[i], strict=True)},
                "bic_by_form": {f: num(v) for f, v in zip(FORMS, self.form_bic[i], strict=True)}}


SHARE_KEYS = ("delta", "gauss", "dog", "dog_on", "dog_off", "d1", "laplacian", "d2", OTHER)


def classify(kernels: np.ndarray, min_r2: float = MIN_R2, criterion: str = "bic", refine: bool = False,
             forms: tuple[str, ...] = FORMS, margin: float = MARGIN) -> FamilyResult:
    """Name every kernel (N, h, w) by the family of lowest information criterion (``bic`` or ``aic``)."""
    if criterion not in ("bic", "aic"):
        raise ValueError(f"unknown criterion {criterion!r}")
    start = time.perf_counter()
    kernels = np.asarray(kernels, dtype=np.float64)
    n = len(kernels)
    d = int(np.prod(kernels.shape[1:])) if kernels.ndim == 3 else 0
    flat = kernels.reshape(n, d)
    mean = flat.mean(axis=1, keepdims=True)
    scale = np.sqrt(((flat - mean) ** 2).sum(axis=1))
    tss = np.where(scale > 1e-12 * np.abs(flat).max(axis=1, initial=0.0), 1.0, 0.0)
    # fit the zero-mean unit-norm kernels: names and R^2 are scale-free, and every kernel weighs alike in the
    # batch's single least-squares cost
    unit = ((flat - mean) / np.where(tss > 0, scale, 1.0)[:, None]).reshape(kernels.shape)
    fits = {f: fit_form(f, unit, refine=refine) for f in forms}
    penalty = np.log(d) if criterion == "bic" else 2.0
    floor = np.maximum(tss * RSS_FLOOR, 1e-300)
    rss = np.stack([np.maximum(fits[f].rss, floor) for f in forms], axis=1)
    ic = d * np.log(rss / d) + penalty * np.array([PARAMS[f] for f in forms])[None, :]
    r2_all = 1.0 - np.stack([fits[f].rss for f in forms], axis=1) / np.where(tss > 0, tss, 1.0)[:, None]
    # Occam's window: the family with the fewest parameters among those within ``margin`` of the lowest
    # criterion (a richer family must show positive evidence, Kass & Raftery's 2, to be chosen), ties by criterion
    nparams = np.array([PARAMS[f] for f in forms], dtype=np.float64)
    within = ic <= ic.min(axis=1, keepdims=True) + margin
    best = np.where(within, nparams[None, :] * 1e6 + ic, np.inf).argmin(axis=1)
    idx = np.arange(n)
    r2 = r2_all[idx, best]
    family = np.empty(n, dtype=object)
    sigma, surround, amp, off, angle = (np.full(n, np.nan) for _ in range(5))
    centre = (kernels.shape[1] - 1) // 2 * kernels.shape[2] + (kernels.shape[2] - 1) // 2 if n else 0
    for j, form in enumerate(forms):
        sel = best == j
        if not sel.any():
            continue
        fit = fits[form]
        x = _design(form, tuple(kernels.shape[1:]), np.nan_to_num(fit.sigma[sel], nan=1.0),
                    fit.ratio[sel] if form == "dog" else None)
        c = fit.coef[sel]
        model = np.einsum("ndm,nm->nd", x[:, :, :-1], c[:, :-1])
        amp[sel] = model[:, centre] * scale[sel]
        off[sel] = c[:, -1] * scale[sel] + mean[sel, 0]
        sigma[sel] = fit.sigma[sel]
        if form == "dog":
            surround[sel] = fit.sigma[sel] * fit.ratio[sel]
            family[sel] = np.where(c[:, 0] > 0, "dog_on", "dog_off")
        else:
            family[sel] = form
        if form == "d1":
            angle[sel] = np.degrees(np.arctan2(c[:, 1], c[:, 0]))
    family[(r2 < min_r2) | (tss <= 0)] = OTHER
    return FamilyResult(family.astype(str), np.where(tss > 0, r2, 0.0), sigma, surround, amp, off, angle,
                        r2_all, ic, time.perf_counter() - start, {"criterion": criterion, "min_r2": min_r2})


def unit_shares(kernel_set: object, min_r2: float = MIN_R2) -> list[dict[str, float]]:
    """Per depthwise unit of a :class:`~pipeline.filters.extract.KernelSet`: the share of each family."""
    out = []
    for k in kernel_set.kernels:  # type: ignore[attr-defined]
        out.append(classify(k, min_r2).shares() if len(k) else {n: 0.0 for n in SHARE_KEYS})
    return out
