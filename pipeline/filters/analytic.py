"""Planted kernels drawn from continuous analytic profiles, written apart from the atoms the families fit.

Why a second generator: :mod:`pipeline.filters.planted` draws its shapes from the very models
:mod:`pipeline.filters.families` fits (or their sampled twins), centred on a pixel, so a naming that passes on it
has only been graded on its own atoms. Here every kernel is a continuous function of the plane, centred at a
*sub-pixel* point, and each pixel holds its **average over the pixel's area** (``SUPERSAMPLE`` x ``SUPERSAMPLE``
midpoints), as a camera or a trained filter's receptive field would; scales and DoG surround ratios are drawn from
wide ranges (log-uniform), each kernel gets a random gain (log-uniform, random sign where the family has no
polarity of its own), an offset, and i.i.d. noise of ``noise`` times its noise-free peak magnitude. This module
imports nothing from the families: the formulas are the textbook ones, written out below.

Families, named as :mod:`pipeline.filters.families` names them so that a confusion matrix reads directly
(``laplacian`` is the Laplacian of Gaussian, LoG). With ``g(r) = exp(-r^2 / 2 s^2)`` and ``u`` the coordinate
along a random direction ``theta``:

=============  ======================================================================
``delta``      the centre pixel alone (an identity kernel; no sub-pixel centre)
``gauss``      ``g``
``dog_on``     ``g_s / s^2 - g_{rs} / (r s)^2`` (balanced: zero total mass on the plane)
``dog_off``    minus that
``laplacian``  ``(r^2 / s^2 - 2) g / s^2`` (random sign)
``d1``         ``-u g / s^2`` (first derivative along ``theta``)
``d2``         ``(u^2 / s^2 - 1) g / s^2`` (second derivative along ``theta``: an oriented bar / edge pair)
=============  ======================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ANALYTIC_FAMILIES = ("delta", "gauss", "dog_on", "dog_off", "laplacian", "d1", "d2")
SUPERSAMPLE = 8  # midpoints per pixel side for the area average (8 x 8 = 64; 16 x 16 changes a kernel < 0.3 %)


@dataclass(frozen=True)
class Ranges:
    """Parameter ranges for a 7x7 kernel (scales shrink or grow with ``size / 7``); all log-uniform but shift.

    Wide on purpose: the generator is meant to cover what trained kernels show, not what the naming gets right.
    ``surround_max`` bounds the DoG surround scale by the support's half-width ``(size - 1) / 2`` (a surround
    much wider than the support is flat there and no data can see it).
    """

    gauss_sigma: tuple[float, float] = (0.5, 2.0)
    dog_centre: tuple[float, float] = (0.45, 1.3)
    dog_ratio: tuple[float, float] = (1.25, 5.0)
    surround_max: float = 1.0  # times the half-width
    log_sigma: tuple[float, float] = (0.55, 1.6)
    d1_sigma: tuple[float, float] = (0.5, 1.8)
    d2_sigma: tuple[float, float] = (0.55, 1.6)
    shift: float = 0.5  # px: the centre is uniform in [-shift, shift]^2 around the middle pixel
    axis_aligned: bool = False  # d1 / d2 along x or y only (the "derivatives in x and in y")
    gain: tuple[float, float] = (0.3, 3.0)
    offset_sd: float = 0.1  # times the gain


def _loguniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(lo_hi[0]), np.log(lo_hi[1]))))


def _area_grid(shape: tuple[int, int], cx: float, cy: float) -> tuple[np.ndarray, np.ndarray]:
    """Sample points (h, w, S*S) of every pixel, relative to the profile's centre ``(cx, cy)`` (px)."""
    h, w = shape
    sub = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5
    x = ((np.arange(w) - (w - 1) // 2)[None, :, None, None] + sub[None, None, None, :]) - cx  # (1, w, 1, S)
    y = ((np.arange(h) - (h - 1) // 2)[:, None, None, None] + sub[None, None, :, None]) - cy  # (h, 1, S, 1)
    x, y = np.broadcast_arrays(x, y)
    return y.reshape(h, w, -1), x.reshape(h, w, -1)


def _shape(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int | np.integer) else size
    if min(h, w) < 3:
        raise ValueError(f"kernel shape {h}x{w} is too small; use 3x3 or more")
    return int(h), int(w)


def profile(family: str, size: int | tuple[int, int], rng: np.random.Generator,
            ranges: Ranges = Ranges()) -> tuple[np.ndarray, dict]:
    """One noise-free kernel of ``family`` (peak magnitude 1, unsigned gain) and the parameters it was drawn at;
    ``size``: n for n x n, or (h, w) (scales follow the shorter side)."""
    shape = _shape(size)
    u = min(shape) / 7.0
    if family == "delta":
        k = np.zeros(shape)
        k[(shape[0] - 1) // 2, (shape[1] - 1) // 2] = 1.0
        return k, {}
    cx, cy = rng.uniform(-ranges.shift, ranges.shift, 2)
    y, x = _area_grid(shape, cx, cy)
    theta = rng.choice([0.0, 0.5 * np.pi]) if ranges.axis_aligned else rng.uniform(0.0, 2.0 * np.pi)
    along = x * np.cos(theta) + y * np.sin(theta)
    r2 = x * x + y * y
    params: dict = {"cx": float(cx), "cy": float(cy)}
    if family == "gauss":
        s = _loguniform(rng, ranges.gauss_sigma) * u
        f = np.exp(-r2 / (2 * s * s))
    elif family in ("dog_on", "dog_off"):
        half = (min(shape) - 1) / 2
        for _ in range(1000):  # the surround must lie within the support (Ranges)
            s = _loguniform(rng, ranges.dog_centre) * u
            ratio = _loguniform(rng, ranges.dog_ratio)
            if s * ratio <= ranges.surround_max * half:
                break
        sr = s * ratio
        f = np.exp(-r2 / (2 * s * s)) / s**2 - np.exp(-r2 / (2 * sr * sr)) / sr**2
        f = f if family == "dog_on" else -f
        params["ratio"] = ratio
    elif family == "laplacian":
        s = _loguniform(rng, ranges.log_sigma) * u
        f = (r2 / s**2 - 2.0) * np.exp(-r2 / (2 * s * s)) / s**2
    elif family == "d1":
        s = _loguniform(rng, ranges.d1_sigma) * u
        f = -along * np.exp(-r2 / (2 * s * s)) / s**2
        params["theta"] = float(theta)
    elif family == "d2":
        s = _loguniform(rng, ranges.d2_sigma) * u
        f = (along**2 / s**2 - 1.0) * np.exp(-r2 / (2 * s * s)) / s**2
        params["theta"] = float(theta)
    else:
        raise ValueError(f"unknown analytic family {family!r}; use one of {', '.join(ANALYTIC_FAMILIES)}")
    params["sigma"] = s
    k = f.mean(axis=2)  # the pixel's area average
    return k / np.abs(k).max(), params


def analytic_kernels(per_family: int = 100, size: int | tuple[int, int] = 7, noise: float = 0.05, seed: int = 0,
                     families: tuple[str, ...] = ANALYTIC_FAMILIES, ranges: Ranges = Ranges(),
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(kernels (N, size, size), truth (N,) family names), ``per_family`` of each in family order.

    ``noise``: i.i.d. Gaussian noise, sd = ``noise`` x the kernel's noise-free peak magnitude (after its gain).
    """
    _shape(size)
    rng = np.random.default_rng(seed)
    unsigned = {"dog_on", "dog_off"}  # their sign is their name; d1 / d2 carry theirs in theta, sign is free too
    kernels, truth = [], []
    for family in families:
        for _ in range(per_family):
            k, _ = profile(family, size, rng, ranges)
            gain = _loguniform(rng, ranges.gain) * (1.0 if family in unsigned else rng.choice([-1.0, 1.0]))
            noisy = gain * k + rng.normal(0.0, ranges.offset_sd * abs(gain)) + rng.normal(0.0, noise * abs(gain),
                                                                                          k.shape)
            kernels.append(noisy)
            truth.append(family)
    return np.stack(kernels), np.array(truth)
