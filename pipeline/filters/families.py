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
PARAMS = {"delta": 2, "gauss": 3, "dog": 4, "d1": 4, "laplacian": 3, "d2": 5}  # incl. amplitude(s) and offset
MARGIN = 2.0  # criterion units a richer family must win by ("positive evidence")
MIN_R2 = 0.5  # a kernel no family explains to this share of its variance is "other"
# the sampled kind starts at a larger scale: its Gaussian at 0.4 leaves the neighbours of the centre 4 % of the
# peak, as the discrete one does at 0.3; below that both are deltas with a ring of noise's size, and a free scale
# that fits the noise of a delta's ring names deltas Gaussians
SIGMA_BOUNDS = {"discrete": (0.3, 4.0), "sampled": (0.4, 4.0)}
RATIO_BOUNDS = (1.1, 6.0)
N_SIGMA = 72  # grid scales per kind for the one-scale families (steps of 3.7 %, each polished: _grid_start)
N_DOG_SIGMA = 40  # centre scales per kind for the DoG, times the surround ratios
RATIO_GRID = np.geomspace(*RATIO_BOUNDS, 16)
RSS_FLOOR = 1e-9  # relative to the kernel's variance: fits better than this count as exact (no log of 0)


def _offsets(n: int) -> np.ndarray:
    return np.arange(n) - (n - 1) // 2


def profiles(sigma: np.ndarray, n: int, kind: str = "discrete") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-D Gaussians (..., n) of scales ``sigma`` (...,) and their first and second derivatives.

    ``discrete``: Lindeberg's kernel and its central differences; ``sampled``: the unit-mass continuous Gaussian
    and its analytic derivatives at the pixel centres (unit continuous mass, so a DoG's surround that falls off
    the support keeps its true weight).
    """
    s = np.asarray(sigma, dtype=np.float64)[..., None]
    k = _offsets(n)
    if kind == "sampled":
        g = np.exp(-(k**2) / (2 * s * s)) / (np.sqrt(2 * np.pi) * s)
        return g, -k / (s * s) * g, (k**2 / s**2 - 1.0) / (s * s) * g
    if kind != "discrete":
        raise ValueError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    t = s**2
    g = ive(np.abs(k), t)
    gm, gp = ive(np.abs(k - 1), t), ive(np.abs(k + 1), t)
    return g, (gp - gm) / 2.0, gp - 2.0 * g + gm


def atoms(form: str, shape: tuple[int, int], sigma: np.ndarray, ratio: np.ndarray | None = None,
          kind: str = "discrete") -> np.ndarray:
    """The linear atoms of ``form`` (of ``kind``) at scales ``sigma`` (M,): (M, m, h*w), rows = y, no constant."""
    h, w = shape
    sigma = np.atleast_1d(np.asarray(sigma, dtype=np.float64))
    m = len(sigma)
    if form == "delta":
        d = np.zeros((m, 1, h, w))
        d[:, 0, (h - 1) // 2, (w - 1) // 2] = 1.0
        return d.reshape(m, 1, h * w)
    gy, d1y, d2y = profiles(sigma, h, kind)
    gx, d1x, d2x = profiles(sigma, w, kind)

    def outer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.einsum("mi,mj->mij", a, b).reshape(m, h * w)

    if form == "gauss":
        out = [outer(gy, gx)]
    elif form == "dog":
        sy, _, _ = profiles(sigma * np.asarray(ratio, dtype=np.float64), h, kind)
        sx, _, _ = profiles(sigma * np.asarray(ratio, dtype=np.float64), w, kind)
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
            kind: str = "discrete") -> np.ndarray:
    """(M, h*w, m + 1): the atoms plus the constant column."""
    a = atoms(form, shape, sigma, ratio, kind)
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
    kind: np.ndarray  # (N,) str: the kind of the better fit ("" for delta)


def _grid(form: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The grid points (sigma, ratio, kind index) of ``form``: every scale in both kinds."""
    sg, rg, kg = [], [], []
    for j, kind in enumerate(KINDS):
        if form == "dog":
            s, r = (a.ravel() for a in np.meshgrid(sigma_grid(kind, True), RATIO_GRID, indexing="ij"))
        else:
            s = sigma_grid(kind, False)
            r = np.full(len(s), np.nan)
        sg.append(s)
        rg.append(r)
        kg.append(np.full(len(s), j))
    return np.concatenate(sg), np.concatenate(rg), np.concatenate(kg)


def sigma_grid(kind: str, dog: bool) -> np.ndarray:
    """The grid's scales of ``kind`` (the DoG's centre scales when ``dog``), evenly spaced in log sigma."""
    return np.geomspace(*SIGMA_BOUNDS[kind], N_DOG_SIGMA if dog else N_SIGMA)


def _vertex(lo: np.ndarray, mid: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Offset (in grid steps, within +-1) of the maximum of the parabola through three equally spaced scores."""
    curv = lo - 2.0 * mid + hi
    step = np.where(curv < 0, 0.5 * (lo - hi) / np.where(curv < 0, curv, -1.0), 0.0)
    return np.clip(step, -1.0, 1.0)


def _grid_start(form: str, flat: np.ndarray, shape: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Best grid point per kernel (sigma, ratio, kind index), by projection on orthonormal bases of the grid
    designs, and that point polished: the vertex of the parabola through the scores of its grid neighbours (in log
    sigma, and for the DoG in log ratio too). Why: the grid's step costs a fit a share of its variance comparable
    to the noise of a 7x7 kernel, and not alike for every family (a one-scale family on a 1-D grid is hurt more
    than the DoG on its 2-D grid, so Laplacians were named DoG); the polish removes most of it at the cost of one
    more fit per kernel, where a ``least_squares`` refinement costs ~30."""
    sg, rg, kg = _grid(form)
    u = _grid_basis(form, shape)
    g, d, m = u.shape
    u = u.transpose(1, 0, 2).reshape(d, g * m)  # one BLAS product per chunk (einsum's loop was 4x slower)
    n = len(flat)
    best, polished_s, polished_r = np.zeros(n, dtype=int), np.zeros(n), np.zeros(n)
    is_dog = form == "dog"
    ns = N_DOG_SIGMA if is_dog else N_SIGMA
    nr = len(RATIO_GRID) if is_dog else 1
    ls = np.log(np.stack([sigma_grid(k, is_dog) for k in KINDS]))  # (kinds, ns)
    lr = np.log(RATIO_GRID)
    for i in range(0, n, 512):
        score = ((flat[i:i + 512] @ u) ** 2).reshape(-1, g, m).sum(axis=2)
        b = score.argmax(axis=1)
        rows = np.arange(len(b))
        kind, rest = np.divmod(b, ns * nr)
        si, ri = np.divmod(rest, nr)

        def at(s_i: np.ndarray, r_i: np.ndarray) -> np.ndarray:
            return score[rows, kind * ns * nr + np.clip(s_i, 0, ns - 1) * nr + np.clip(r_i, 0, nr - 1)]  # noqa: B023

        inner = (si > 0) & (si < ns - 1)
        ds = np.where(inner, _vertex(at(si - 1, ri), score[rows, b], at(si + 1, ri)), 0.0)
        polished_s[i:i + 512] = np.exp(ls[kind, si] + ds * (ls[kind, 1] - ls[kind, 0]))
        if is_dog:
            inner = (ri > 0) & (ri < nr - 1)
            dr = np.where(inner, _vertex(at(si, ri - 1), score[rows, b], at(si, ri + 1)), 0.0)
            polished_r[i:i + 512] = np.exp(lr[ri] + dr * (lr[1] - lr[0]))
        best[i:i + 512] = b
    return sg[best], rg[best], kg[best], polished_s, np.where(is_dog, polished_r, np.nan)


@lru_cache(maxsize=64)
def _grid_basis(form: str, shape: tuple[int, int]) -> np.ndarray:
    """Orthonormal bases (G, h*w, m + 1) of the grid designs; directions a design does not span are zeroed."""
    sg, rg, kg = _grid(form)
    x = np.concatenate([_design(form, shape, sg[kg == j], None if form != "dog" else rg[kg == j], kind)
                        for j, kind in enumerate(KINDS)])
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    return u * (s > s[:, :1] * 1e-10)[:, None, :]


def _refine(form: str, flat: np.ndarray, shape: tuple[int, int], x0: np.ndarray, kind: str,
            max_nfev: int) -> np.ndarray:
    """Scales (n, p) refined from ``x0`` by one batched ``least_squares`` (kernels where it did not help keep x0)."""
    n, p = x0.shape
    d = shape[0] * shape[1]
    is_dog = form == "dog"
    lo = np.array([SIGMA_BOUNDS[kind][0], RATIO_BOUNDS[0]] if is_dog else [SIGMA_BOUNDS[kind][0]])
    hi = np.array([SIGMA_BOUNDS[kind][1], RATIO_BOUNDS[1]] if is_dog else [SIGMA_BOUNDS[kind][1]])

    def residual(x: np.ndarray) -> np.ndarray:
        x = x.reshape(n, p)
        return _solve(_design(form, shape, x[:, 0], x[:, 1] if is_dog else None, kind), flat)[1].ravel()

    x0 = np.clip(x0, lo + 1e-9, hi - 1e-9).ravel()
    rows = np.repeat(np.arange(n * d), p)
    cols = (rows // d) * p + np.tile(np.arange(p), n * d)
    # one variable: dense (trf's sparse solver works in a 2-D subspace, which one variable does not have)
    sparsity = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n * d, n * p)) if n * p > 1 else None
    sol = least_squares(residual, x0, bounds=(np.tile(lo, n), np.tile(hi, n)), jac_sparsity=sparsity,
                        method="trf", x_scale=np.tile(hi - lo, n) * 0.1, max_nfev=max_nfev, xtol=1e-6, ftol=1e-10)
    # keep the grid start where the refinement did not help that kernel (a shared stopping rule)
    worse = (residual(sol.x).reshape(n, -1) ** 2).sum(axis=1) > (residual(x0).reshape(n, -1) ** 2).sum(axis=1)
    return np.where(np.repeat(worse, p), x0, sol.x).reshape(n, p)


def fit_form(form: str, kernels: np.ndarray, refine: bool = True, max_nfev: int = 30) -> FormFit:
    """Fit ``form`` to every kernel (N, h, w) in both kinds: a grid start, then (``refine``) one batched
    ``least_squares`` on the scales per kind, within the kind the grid chose."""
    n, h, w = kernels.shape
    shape = (h, w)
    flat = kernels.reshape(n, h * w).astype(np.float64)
    if form == "delta":
        coef, res = _solve(np.repeat(_design(form, shape, np.ones(1), None), n, axis=0), flat)
        return FormFit((res**2).sum(axis=1), coef, np.full(n, np.nan), np.full(n, np.nan), np.full(n, ""))
    sigma, ratio, kind, p_sigma, p_ratio = _grid_start(form, flat, shape)
    is_dog = form == "dog"
    x = np.stack([sigma, ratio], axis=1) if is_dog else sigma[:, None]
    xp = np.stack([p_sigma, p_ratio], axis=1) if is_dog else p_sigma[:, None]
    m = PARAMS[form] - (2 if is_dog else 1)  # linear coefficients incl. the offset
    coef, rss = np.zeros((n, m)), np.zeros(n)

    def solve(xs: np.ndarray, sel: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
        c, res = _solve(_design(form, shape, xs[:, 0], xs[:, 1] if is_dog else None, name), flat[sel])
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
    return FormFit(rss, coef, x[:, 0], x[:, 1] if is_dog else np.full(n, np.nan), np.array(KINDS)[kind])


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
                x = _design(form, tuple(kernels.shape[1:]), np.nan_to_num(fit.sigma[sel][part], nan=1.0),
                            fit.ratio[sel][part] if form == "dog" else None, name)
                model[part] = np.einsum("ndm,nm->nd", x[:, :, :-1], c[part, :-1])
        kind[sel] = fit.kind[sel]
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
                        r2_all, ic, time.perf_counter() - start, {"criterion": criterion, "min_r2": min_r2},
                        kind.astype(str))


def unit_shares(kernel_set: object, min_r2: float = MIN_R2) -> list[dict[str, float]]:
    """Per depthwise unit of a :class:`~pipeline.filters.extract.KernelSet`: the share of each family."""
    out = []
    for k in kernel_set.kernels:  # type: ignore[attr-defined]
        out.append(classify(k, min_r2).shares() if len(k) else {n: 0.0 for n in SHARE_KEYS})
    return out
