"""Kernel families chosen by evidence: every kernel is fitted by every family and named by the lowest BIC.

Why: the best R^2 alone cannot tell a Gaussian from a DoG, since every Gaussian is a DoG whose surround vanishes
(and every delta a Gaussian of vanishing scale), so a fit-only verdict calls Gaussians and identity kernels DoGs.
Here each family pays for its parameters: a kernel of ``n`` pixels with residual sum of squares ``RSS`` under a
family of ``p`` parameters scores ``BIC = n ln(RSS / n) + p ln n`` and takes the family of lowest BIC; the nested
simpler family wins unless the richer one fits clearly better. A kernel whose chosen fit explains less than
``min_r2`` of its variance (R^2 about its mean), or a flat kernel, is ``other``.

Families (all with a free offset ``b``). Each comes in two *kinds*, fitted both and the better kept (the same
parameter count, so the criterion compares them as equals): ``discrete``, built on Lindeberg's discrete analogue
of the Gaussian ``T(n; t) = e^{-t} I_n(t)``, ``t = sigma^2``, its derivatives the central differences (as in
:mod:`pipeline.filters.dog`), and ``sampled``, the continuous Gaussian ``exp(-x^2 / 2 sigma^2) / (2 pi sigma^2)``
and its analytic derivatives sampled at the pixel centres. Why both: at the scales of a 5x5 or 7x7 kernel the two
differ by more than the noise of a trained kernel (a sampled sigma = 0.8 Gaussian keeps R^2 0.990 under the
discrete family), and a family fitted in one kind only lets the richer family of that kind absorb the difference:
with discrete forms only, sampled Gaussians were named DoG half the time and sampled DoGs Laplacians. Real
kernels are neither kind by law, so the naming must not depend on which one a kernel happens to be closer to.

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
the DoG's surround ratio ``r``) are searched: first on a grid (both kinds) for all kernels at once, its best point
polished by a parabola through its neighbours' scores (the default, ``refine=False``), or then refined within the
kind the grid chose by one ``scipy.optimize.least_squares`` call per family and kind over the batch (a
block-diagonal Jacobian sparsity, so the finite differences cost one residual evaluation per nonlinear
parameter, whatever the number of kernels).
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

KINDS = ("discrete", "sampled")  # the two Gaussians every family is built from (module docstring)
FORMS = ("delta", "gauss", "dog", "d1", "laplacian", "d2")  # fitted models; dog splits into on / off by sign
FAMILIES = ("delta", "gauss", "dog_on", "dog_off", "d1", "laplacian", "d2")
OTHER = "other"
NAMES = (*FAMILIES, OTHER)
# incl. amplitude(s), offset and the two centre coordinates (every family but delta; the discrete kind's centre is
# fixed, but the kinds are compared as equals)
PARAMS = {"delta": 2, "gauss": 5, "dog": 6, "d1": 6, "laplacian": 5, "d2": 7}
MARGIN = 2.0  # criterion units a richer family must win by ("positive evidence")
CRITERIA = ("bic", "aic", "effect")
# effect size: the share of a kernel's variance a richer family must explain beyond a simpler one to be named
# (criterion "effect", for cluster centroids). Measured on cluster centroids: a DoG explains centroids of Gaussians
# (200 analytic 7x7 kernels, 4 % noise, three seeds; the planted set's too) -0.01-0.01 % more of the variance than
# a Gaussian does, centroids of DoGs 0.41-0.96 % more (analytic DoGs of ratio 1.25-5, and the planted sets of the
# tests); a tenth of a percent either way is 10x the Gaussians' and half the least DoG's
EFFECT = 0.002
MIN_R2 = 0.5  # a kernel no family explains to this share of its variance is "other"
# the sampled kind starts at a larger scale: its Gaussian at 0.4 leaves the neighbours of the centre 4 % of the
# peak, as the discrete one does at 0.3; below that both are deltas with a ring of noise's size, and a free scale
# that fits the noise of a delta's ring names deltas Gaussians
SIGMA_BOUNDS = {"discrete": (0.3, 4.0), "sampled": (0.4, 4.0)}
RATIO_BOUNDS = (1.1, 6.0)
N_SIGMA = 72  # grid scales per kind for the one-scale families (steps of 3.7 %, each polished: _grid_start)
N_DOG_SIGMA = 40  # centre scales per kind for the DoG, times the surround ratios
RATIO_GRID = np.geomspace(*RATIO_BOUNDS, 16)
# the sampled kind's centre: a trained kernel's blob, edge or centre-surround need not sit on a pixel, and one
# half a pixel off leaves 4-13 % of the peak unexplained by a centred model, more than the noise of a trained
# kernel (measured on pipeline.filters.analytic's kernels); beyond half a pixel it is centred on the neighbour
SHIFT_MAX = 0.5
SHIFT_GRID = np.linspace(-SHIFT_MAX, SHIFT_MAX, 5)  # px, each polished like the scales
ATOMS = {"delta": ("delta",), "gauss": ("g",), "dog": ("g-s",), "d1": ("gx", "gy"), "laplacian": ("gxx+gyy",),
         "d2": ("gxx", "gxy", "gyy")}
RSS_FLOOR = 1e-9  # relative to the kernel's variance: fits better than this count as exact (no log of 0)


def _offsets(n: int) -> np.ndarray:
    return np.arange(n) - (n - 1) // 2


def profiles(sigma: np.ndarray, n: int, kind: str = "discrete",
             shift: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-D Gaussians (..., n) of scales ``sigma`` (...,) and their first and second derivatives.

    ``discrete``: Lindeberg's kernel and its central differences; ``sampled``: the unit-mass continuous Gaussian
    and its analytic derivatives at the pixel centres (unit continuous mass, so a DoG's surround that falls off
    the support keeps its true weight), centred ``shift`` (...,) px from the middle pixel (sampled kind only: the
    discrete analogue lives on the integer lattice).
    """
    s = np.asarray(sigma, dtype=np.float64)[..., None]
    k = _offsets(n).astype(np.float64)
    if kind == "sampled":
        if shift is not None:
            k = k - np.asarray(shift, dtype=np.float64)[..., None]
        g = np.exp(-(k**2) / (2 * s * s)) / (np.sqrt(2 * np.pi) * s)
        return g, -k / (s * s) * g, (k**2 / s**2 - 1.0) / (s * s) * g
    if kind != "discrete":
        raise ValueError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    if shift is not None and np.any(np.asarray(shift) != 0):
        raise ValueError("the discrete kind has no sub-pixel centre; shift it only in the sampled kind")
    t = s**2
    g = ive(np.abs(k), t)
    gm, gp = ive(np.abs(k - 1), t), ive(np.abs(k + 1), t)
    return g, (gp - gm) / 2.0, gp - 2.0 * g + gm


def atoms(form: str, shape: tuple[int, int], sigma: np.ndarray, ratio: np.ndarray | None = None,
          kind: str = "discrete", cx: np.ndarray | None = None, cy: np.ndarray | None = None) -> np.ndarray:
    """The linear atoms of ``form`` (of ``kind``) at scales ``sigma`` (M,), centred ``(cx, cy)`` (M,) px from the
    middle pixel (sampled kind; 0 by default): (M, m, h*w), rows = y, no constant."""
    h, w = shape
    sigma = np.atleast_1d(np.asarray(sigma, dtype=np.float64))
    m = len(sigma)
    if form == "delta":
        d = np.zeros((m, 1, h, w))
        d[:, 0, (h - 1) // 2, (w - 1) // 2] = 1.0
        return d.reshape(m, 1, h * w)
    gy, d1y, d2y = profiles(sigma, h, kind, cy)
    gx, d1x, d2x = profiles(sigma, w, kind, cx)

    def outer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.einsum("mi,mj->mij", a, b).reshape(m, h * w)

    if form == "gauss":
        out = [outer(gy, gx)]
    elif form == "dog":
        sy, _, _ = profiles(sigma * np.asarray(ratio, dtype=np.float64), h, kind, cy)
        sx, _, _ = profiles(sigma * np.asarray(ratio, dtype=np.float64), w, kind, cx)
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


def _design(form: str, shape: tuple[int, int], sigma: np.ndarray, ratio: np.ndarray | None,
            kind: str = "discrete", cx: np.ndarray | None = None, cy: np.ndarray | None = None) -> np.ndarray:
    """(M, h*w, m + 1): the atoms plus the constant column."""
    a = atoms(form, shape, sigma, ratio, kind, cx, cy)
    ones = np.ones((a.shape[0], 1, a.shape[2]))
    return np.concatenate([a, ones], axis=1).transpose(0, 2, 1)


def _design_at(form: str, shape: tuple[int, int], x: np.ndarray, kind: str) -> np.ndarray:
    """The design at nonlinear parameters ``x`` (M, 4) = (sigma, ratio, cx, cy)."""
    return _design(form, shape, x[:, 0], x[:, 1] if form == "dog" else None, kind,
                   x[:, 2] if kind == "sampled" else None, x[:, 3] if kind == "sampled" else None)


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
    kind: np.ndarray  # (N,) str: the kind of the better fit ("" for delta)
    cx: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (N,) sub-pixel centre, px (0 but for sampled)
    cy: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def params(self) -> np.ndarray:
        """(N, 4): sigma, ratio, cx, cy."""
        return np.stack([self.sigma, self.ratio, self.cx, self.cy], axis=1)


def _axes(form: str, kind: str) -> list[tuple[str, np.ndarray]]:
    """The grid's axes of ``form`` in ``kind``: log sigma, the DoG's log ratio, and (sampled) the centre."""
    axes = [("sigma", sigma_grid(kind, form == "dog"))]
    if form == "dog":
        axes.append(("ratio", RATIO_GRID))
    if kind == "sampled":
        axes += [("cx", SHIFT_GRID), ("cy", SHIFT_GRID)]
    return axes


def _grid(form: str) -> tuple[np.ndarray, np.ndarray]:
    """The grid points (G, 4) = (sigma, ratio, cx, cy) of ``form`` and their kind index (G,), kinds in order."""
    points, kinds = [], []
    for j, kind in enumerate(KINDS):
        axes = _axes(form, kind)
        mesh = dict(zip([a for a, _ in axes], (m.ravel() for m in np.meshgrid(*[v for _, v in axes],
                                                                               indexing="ij")), strict=True))
        g = len(mesh["sigma"])
        points.append(np.stack([mesh["sigma"], mesh.get("ratio", np.full(g, np.nan)),
                                mesh.get("cx", np.zeros(g)), mesh.get("cy", np.zeros(g))], axis=1))
        kinds.append(np.full(g, j))
    return np.concatenate(points), np.concatenate(kinds)


def sigma_grid(kind: str, dog: bool) -> np.ndarray:
    """The grid's scales of ``kind`` (the DoG's centre scales when ``dog``), evenly spaced in log sigma."""
    return np.geomspace(*SIGMA_BOUNDS[kind], N_DOG_SIGMA if dog else N_SIGMA)


def _vertex(lo: np.ndarray, mid: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Offset (in grid steps, within +-1) of the maximum of the parabola through three equally spaced scores."""
    curv = lo - 2.0 * mid + hi
    step = np.where(curv < 0, 0.5 * (lo - hi) / np.where(curv < 0, curv, -1.0), 0.0)
    return np.clip(step, -1.0, 1.0)


def _grid_start(form: str, flat: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best grid point per kernel ((n, 4) parameters, kind index), by projection on orthonormal bases of the grid
    designs, and that point polished (n, 4): along each axis, the vertex of the parabola through the scores of its
    grid neighbours (log sigma, log ratio, centre). Why: the grid's step costs a fit a share of its variance
    comparable to the noise of a 7x7 kernel, and not alike for every family (a one-scale family on a 1-D grid is
    hurt more than the DoG on its 2-D grid, so Laplacians were named DoG); the polish removes most of it at the
    cost of one more fit per kernel, where a ``least_squares`` refinement costs ~30."""
    points, kinds = _grid(form)
    u = _grid_basis(form, shape)
    g, d, m = u.shape
    u = u.transpose(1, 0, 2).reshape(d, g * m)  # one BLAS product per chunk (einsum's loop was 4x slower)
    n = len(flat)
    best = np.zeros(n, dtype=int)
    polished = np.zeros((n, 4))
    blocks = [_axes(form, kind) for kind in KINDS]
    starts = np.concatenate([[0], np.cumsum([int(np.prod([len(v) for _, v in ax])) for ax in blocks])])
    column = {"sigma": 0, "ratio": 1, "cx": 2, "cy": 3}
    chunk = max(16, 2**22 // g)  # ~32 MB of scores at a time
    for i in range(0, n, chunk):
        proj = (flat[i:i + chunk] @ u).reshape(-1, g, m)
        score = proj[..., 0] ** 2
        for k in range(1, m):  # slice by slice: the same sums as .sum(axis=2), which took 2/3 of the fit's time
            score += proj[..., k] ** 2
        b = score.argmax(axis=1)
        rows = np.arange(len(b))
        best[i:i + chunk] = b
        out = points[b].copy()
        for j, axes in enumerate(blocks):
            sel = (b >= starts[j]) & (b < starts[j + 1])
            if not sel.any():
                continue
            dims = [len(v) for _, v in axes]
            idx = np.stack(np.unravel_index(b[sel] - starts[j], dims), axis=1)  # (s, axes)
            for a, (name, values) in enumerate(axes):
                if len(values) < 3:
                    continue
                inner = (idx[:, a] > 0) & (idx[:, a] < len(values) - 1)
                lo_i, hi_i = idx.copy(), idx.copy()
                lo_i[:, a] = np.clip(idx[:, a] - 1, 0, len(values) - 1)
                hi_i[:, a] = np.clip(idx[:, a] + 1, 0, len(values) - 1)
                lo = score[rows[sel], starts[j] + np.ravel_multi_index(lo_i.T, dims)]
                hi = score[rows[sel], starts[j] + np.ravel_multi_index(hi_i.T, dims)]
                step = np.where(inner, _vertex(lo, score[rows[sel], b[sel]], hi), 0.0)
                if name in ("cx", "cy"):
                    value = values[idx[:, a]] + step * (values[1] - values[0])
                else:
                    logs = np.log(values)
                    value = np.exp(logs[idx[:, a]] + step * (logs[1] - logs[0]))
                out[np.flatnonzero(sel) , column[name]] = value
        polished[i:i + chunk] = out
    return points[best], kinds[best], polished


@lru_cache(maxsize=64)
def _grid_basis(form: str, shape: tuple[int, int]) -> np.ndarray:
    """Orthonormal bases (G, h*w, m + 1) of the grid designs; directions a design does not span are zeroed."""
    points, kinds = _grid(form)
    x = np.concatenate([_design_at(form, shape, points[kinds == j], kind) for j, kind in enumerate(KINDS)])
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    return u * (s > s[:, :1] * 1e-10)[:, None, :]


def _free(form: str, kind: str) -> np.ndarray:
    """Which of (sigma, ratio, cx, cy) are free in ``form`` of ``kind``."""
    return np.array([True, form == "dog", kind == "sampled", kind == "sampled"])


def _refine(form: str, flat: np.ndarray, shape: tuple[int, int], x0: np.ndarray, kind: str,
            max_nfev: int) -> np.ndarray:
    """Parameters (n, 4) refined from ``x0`` by one batched ``least_squares`` over the free ones (kernels where
    it did not help keep x0)."""
    n = len(x0)
    d = shape[0] * shape[1]
    free = _free(form, kind)
    p = int(free.sum())
    lo = np.array([SIGMA_BOUNDS[kind][0], RATIO_BOUNDS[0], -SHIFT_MAX, -SHIFT_MAX])[free]
    hi = np.array([SIGMA_BOUNDS[kind][1], RATIO_BOUNDS[1], SHIFT_MAX, SHIFT_MAX])[free]

    def full(x: np.ndarray) -> np.ndarray:
        out = x0.copy()
        out[:, free] = x.reshape(n, p)
        return out

    def residual(x: np.ndarray) -> np.ndarray:
        return _solve(_design_at(form, shape, full(x), kind), flat)[1].ravel()

    start = np.clip(x0[:, free], lo + 1e-9, hi - 1e-9).ravel()
    rows = np.repeat(np.arange(n * d), p)
    cols = (rows // d) * p + np.tile(np.arange(p), n * d)
    # one variable: dense (trf's sparse solver works in a 2-D subspace, which one variable does not have)
    sparsity = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n * d, n * p)) if n * p > 1 else None
    sol = least_squares(residual, start, bounds=(np.tile(lo, n), np.tile(hi, n)), jac_sparsity=sparsity,
                        method="trf", x_scale=np.tile(hi - lo, n) * 0.1, max_nfev=max_nfev, xtol=1e-6, ftol=1e-10)
    # keep the grid start where the refinement did not help that kernel (a shared stopping rule)
    worse = (residual(sol.x).reshape(n, -1) ** 2).sum(axis=1) > (residual(start).reshape(n, -1) ** 2).sum(axis=1)
    return np.where(worse[:, None], full(start), full(sol.x))


def fit_form(form: str, kernels: np.ndarray, refine: bool = True, max_nfev: int = 30) -> FormFit:
    """Fit ``form`` to every kernel (N, h, w) in both kinds: a grid start, then (``refine``) one batched
    ``least_squares`` on the scales (and the sampled kind's centre) per kind, within the kind the grid chose."""
    n, h, w = kernels.shape
    shape = (h, w)
    flat = kernels.reshape(n, h * w).astype(np.float64)
    zeros = np.zeros(n)
    if form == "delta":
        coef, res = _solve(np.repeat(_design(form, shape, np.ones(1), None), n, axis=0), flat)
        return FormFit((res**2).sum(axis=1), coef, np.full(n, np.nan), np.full(n, np.nan), np.full(n, ""),
                       zeros, zeros.copy())
    x, kind, xp = _grid_start(form, flat, shape)
    m = len(ATOMS[form]) + 1  # linear coefficients incl. the offset
    coef, rss = np.zeros((n, m)), np.zeros(n)

    def solve(xs: np.ndarray, sel: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
        c, res = _solve(_design_at(form, shape, xs, name), flat[sel])
        return c, (res**2).sum(axis=1)

    for j, name in enumerate(KINDS):
        sel = kind == j
        if not sel.any():
            continue
        c, r = solve(x[sel], sel, name)
        cp, rp = solve(xp[sel], sel, name)
        better = rp < r  # the polished point, where it fits better than the grid point
        x[sel] = np.where(better[:, None], xp[sel], x[sel])
        c, r = np.where(better[:, None], cp, c), np.minimum(r, rp)
        if refine:
            x[sel] = _refine(form, flat[sel], shape, x[sel], name, max_nfev)
            c, r = solve(x[sel], sel, name)
        coef[sel], rss[sel] = c, r
    return FormFit(rss, coef, x[:, 0], x[:, 1] if form == "dog" else np.full(n, np.nan), np.array(KINDS)[kind],
                   x[:, 2], x[:, 3])


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
    kind: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))  # (N,) discrete | sampled | ""
    # (N,) the chosen fit's peak magnitude |model - offset| and its residual sd per pixel (d - p degrees of
    # freedom), both in the kernel's own units: their ratio is the kernel's noise as a share of its peak
    peak: np.ndarray = field(default_factory=lambda: np.zeros(0))
    residual_sd: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cx: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (N,) the fit's centre, px from the middle pixel
    cy: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def relative_noise(self) -> np.ndarray:
        """(N,) residual sd / peak of each kernel's chosen fit (nan where there is no fit)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.peak > 0, self.residual_sd / self.peak, np.nan)

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

        return {"family": str(self.family[i]), "kind": str(self.kind[i]) if len(self.kind) else "",
                "r2": num(self.r2[i]), "sigma": num(self.sigma[i]),
                "sigma_surround": num(self.sigma_surround[i]), "amplitude": num(self.amplitude[i]),
                "offset": num(self.offset[i]), "angle": num(self.angle[i]),
                "centre": [num(self.cx[i]), num(self.cy[i])] if len(self.cx) else None,
                "r2_by_form": {f: num(v) for f, v in zip(FORMS, self.form_r2[i], strict=True)},
                "bic_by_form": {f: num(v) for f, v in zip(FORMS, self.form_bic[i], strict=True)}}


SHARE_KEYS = ("delta", "gauss", "dog", "dog_on", "dog_off", "d1", "laplacian", "d2", OTHER)


def classify(kernels: np.ndarray, min_r2: float = MIN_R2, criterion: str = "bic", refine: bool = False,
             forms: tuple[str, ...] = FORMS, margin: float = MARGIN, effect: float = EFFECT) -> FamilyResult:
    """Name every kernel (N, h, w) by the family of lowest information criterion (``bic`` or ``aic``), or, with
    ``criterion="effect"``, by effect size: the simplest family whose R^2 is within ``effect`` of the best one.

    Why the second: a criterion from the likelihood grows without bound as a kernel's noise vanishes, so on a
    nearly noiseless kernel, a cluster centroid (the mean of hundreds), any extra parameter wins: the mean of
    Gaussians of several scales and centres, no Gaussian itself, was named a DoG by BIC for a 0.08 % better fit.
    Effect size asks instead whether the richer family explains a stated share (``EFFECT``) more variance."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; use one of {', '.join(CRITERIA)}")
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
    if criterion == "effect":
        within = r2_all >= r2_all.max(axis=1, keepdims=True) - effect
        best = np.where(within, nparams[None, :] * 1e6 - r2_all, np.inf).argmin(axis=1)
    else:
        within = ic <= ic.min(axis=1, keepdims=True) + margin
        best = np.where(within, nparams[None, :] * 1e6 + ic, np.inf).argmin(axis=1)
    idx = np.arange(n)
    r2 = r2_all[idx, best]
    family = np.empty(n, dtype=object)
    sigma, surround, amp, off, angle, peak = (np.full(n, np.nan) for _ in range(6))
    cx, cy = np.zeros(n), np.zeros(n)
    kind = np.full(n, "", dtype=object)
    centre = (kernels.shape[1] - 1) // 2 * kernels.shape[2] + (kernels.shape[2] - 1) // 2 if n else 0
    for j, form in enumerate(forms):
        sel = best == j
        if not sel.any():
            continue
        fit = fits[form]
        c = fit.coef[sel]
        model = np.zeros((int(sel.sum()), d))
        for name in (KINDS if form != "delta" else ("discrete",)):
            part = (fit.kind[sel] == name) if form != "delta" else np.ones(len(c), dtype=bool)
            if part.any():
                x = _design_at(form, tuple(kernels.shape[1:]), np.nan_to_num(fit.params[sel][part], nan=1.0),
                               name)
                model[part] = np.einsum("ndm,nm->nd", x[:, :, :-1], c[part, :-1])
        kind[sel] = fit.kind[sel]
        amp[sel] = model[:, centre] * scale[sel]
        peak[sel] = np.abs(model).max(axis=1) * scale[sel]
        off[sel] = c[:, -1] * scale[sel] + mean[sel, 0]
        sigma[sel] = fit.sigma[sel]
        cx[sel], cy[sel] = fit.cx[sel], fit.cy[sel]
        if form == "dog":
            surround[sel] = fit.sigma[sel] * fit.ratio[sel]
            family[sel] = np.where(c[:, 0] > 0, "dog_on", "dog_off")
        else:
            family[sel] = form
        if form == "d1":
            angle[sel] = np.degrees(np.arctan2(c[:, 1], c[:, 0]))
    family[(r2 < min_r2) | (tss <= 0)] = OTHER
    dof = np.maximum(d - nparams[best], 1.0) if n else np.ones(0)
    residual_sd = np.sqrt(np.maximum(1.0 - r2, 0.0) / dof) * scale  # unit kernels: RSS = 1 - R^2
    return FamilyResult(family.astype(str), np.where(tss > 0, r2, 0.0), sigma, surround, amp, off, angle,
                        r2_all, ic, time.perf_counter() - start, {"criterion": criterion, "min_r2": min_r2},
                        kind.astype(str), peak, residual_sd, cx, cy)


def unit_shares(kernel_set: object, min_r2: float = MIN_R2) -> list[dict[str, float]]:
    """Per depthwise unit of a :class:`~pipeline.filters.extract.KernelSet`: the share of each family."""
    out = []
    for k in kernel_set.kernels:  # type: ignore[attr-defined]
        out.append(classify(k, min_r2).shares() if len(k) else {n: 0.0 for n in SHARE_KEYS})
    return out
