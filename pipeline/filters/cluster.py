"""The *Unveiling the Unseen* analysis: do trained depthwise kernels fall into a few DoG-like clusters?

Kernels are normalised (zero mean, unit norm, optionally sign-canonicalised), embedded by a small autoencoder,
clustered by k-means on the codes, and each cluster's centroid (the mean of its normalised kernels) is fitted by
every family of :mod:`pipeline.filters.families` and named by the lowest BIC (``other`` when no family explains
it), so a Gaussian centroid is named ``gauss`` and an identity centroid ``delta``, not ``dog_on``. Every kernel is
also named on its own the same way, for the per-layer family shares. A kernel counts as *classified* when its
correlation with its cluster's centroid reaches ``threshold``. Every random choice (autoencoder init, batch order,
k-means starts) comes from ``seed``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from datamodules.errors import UserError
from pipeline.filters.families import MIN_R2, NAMES, SHARE_KEYS, FamilyResult, classify
from pipeline.filters.kernel_set import KernelSet
from pipeline.filters.separability import (
    BENCH_PER_FAMILY,
    GROUP_NAMES,
    Separability,
    estimate_noise,
    grouped_shares,
    measure,
)


@dataclass
class ClusterOptions:
    clusters: int = 8
    latent: int = 8  # autoencoder code size (0 = k-means on the normalised kernels themselves)
    hidden: int = 64
    epochs: int = 300
    lr: float = 3e-3
    threshold: float = 0.8  # correlation with the centroid to count as classified
    sign: str = "keep"  # keep | canonical (flip so the largest-magnitude entry is positive)
    seed: int = 0
    min_r2: float = MIN_R2  # a kernel or centroid no family explains this well is "other"
    criterion: str = "bic"  # bic | aic: names every kernel
    centroid_criterion: str = "effect"  # effect | bic | aic: names every centroid (nearly noiseless: effect size)
    merge: bool = True  # report as one the families the naming does not separate at this size and noise
    bench_per_family: int = BENCH_PER_FAMILY  # analytic kernels per family for that confusion matrix


def normalise_kernels(kernels: np.ndarray, sign: str = "keep") -> np.ndarray:
    """(N, h, w) -> (N, h*w) with zero mean and unit norm; flat kernels stay all-zero."""
    if sign not in ("keep", "canonical"):
        raise UserError(f"unknown sign mode {sign!r}; use keep or canonical")
    flat = kernels.reshape(len(kernels), -1).astype(np.float64)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    flat = flat / np.where(norm > 1e-12, norm, 1.0)
    if sign == "canonical":
        peak = flat[np.arange(len(flat)), np.abs(flat).argmax(axis=1)]
        flat = flat * np.where(peak < 0, -1.0, 1.0)[:, None]
    return flat


class KernelAutoencoder(nn.Module):
    """A small MLP autoencoder: kernels -> ``latent`` codes -> kernels."""

    def __init__(self, dim: int, latent: int, hidden: int = 64) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def train_autoencoder(data: np.ndarray, latent: int, hidden: int, epochs: int, lr: float, seed: int,
                      batch_size: int = 1024) -> tuple[KernelAutoencoder, float]:
    """Fit the autoencoder (MSE, Adam) with its own seeded generator; returns it and the final MSE."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = KernelAutoencoder(data.shape[1], latent, hidden)
    x = torch.as_tensor(data, dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch_size):
            batch = x[order[start:start + batch_size]]
            loss = nn.functional.mse_loss(model(batch), batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        final = float(nn.functional.mse_loss(model(x), x))
    return model.eval(), final


@dataclass
class ClusterResult:
    options: ClusterOptions
    labels: np.ndarray  # (N,) cluster of each kernel
    similarity: np.ndarray  # (N,) correlation with its cluster's centroid
    centroids: np.ndarray  # (k, h, w), zero mean, unit norm
    fits: FamilyResult  # the centroids' family fits (least-squares refined)
    names: list[str]
    sources: np.ndarray  # (N,) source label
    units: np.ndarray  # (N,) unit index
    channels: np.ndarray
    families: FamilyResult  # every kernel's own family fit
    reconstruction_mse: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    noise: float = float("nan")  # the kernels' median relative noise (separability.estimate_noise)
    noise_kernels: int = 0  # how many kernels it was read over
    separability: Separability | None = None  # the naming's confusion matrix at this size and noise

    @property
    def groups(self) -> dict[str, str]:
        """Every family -> the name it is reported as (merged where not separated; itself without --no-merge)."""
        return self.separability.groups if self.separability is not None else {n: n for n in NAMES}

    @property
    def classified(self) -> np.ndarray:
        return self.similarity >= self.options.threshold

    def layer_shares(self) -> list[dict[str, Any]]:
        """Per (source, unit): its kernels' family shares (``family_*``), the share classified, cluster shares."""
        rows = []
        for source in dict.fromkeys(self.sources.tolist()):
            for unit in sorted(set(self.units[self.sources == source].tolist())):
                mask = (self.sources == source) & (self.units == unit)
                row: dict[str, Any] = {"source": source, "unit": unit, "kernels": int(mask.sum()),
                                       "classified": round(float(self.classified[mask].mean()), 4)}
                shares = self.families.shares(mask)
                row.update({f"family_{k}": round(shares[k], 4) for k in SHARE_KEYS})
                grouped = grouped_shares(self.families.family[mask], self.groups)
                row.update({f"reported_{k}": round(v, 4) for k, v in grouped.items()})
                for c, name in enumerate(self.names):
                    row[f"c{c}_{name}"] = round(float((self.labels[mask] == c).mean()), 4)
                rows.append(row)
        return rows

    def summary(self) -> dict[str, Any]:
        clusters = []
        for c, name in enumerate(self.names):
            mask = self.labels == c
            members = grouped_shares(self.families.family[mask], self.groups)
            members.pop("dog_like")
            clusters.append({"cluster": c, "name": name, "family": str(self.fits.family[c]),
                             "members": {k: round(v, 4) for k, v in sorted(members.items(), key=lambda t: -t[1])
                                         if v > 0},
                             "kernels": int(mask.sum()),
                             "share": round(float(mask.mean()), 4),
                             "classified": round(float(self.classified[mask].mean()) if mask.any() else 0.0, 4),
                             "fit": self.fits.row(c)})
        shares = self.families.shares()
        return {"options": asdict(self.options), "kernels": len(self.labels),
                "classified": round(float(self.classified.mean()), 4),
                "family_shares": {k: round(shares[k], 4) for k in SHARE_KEYS},
                "reported_shares": {k: round(v, 4) for k, v in grouped_shares(self.families.family,
                                                                             self.groups).items()},
                "noise": {"relative_sd": round(self.noise, 5), "kernels": self.noise_kernels},
                "separability": self.separability.to_json() if self.separability is not None else None,
                "family_kernels_per_second": round(self.families.kernels_per_second, 1),
                "reconstruction_mse": self.reconstruction_mse, "clusters": clusters, **self.extra}


def cluster_kernels(sets: list[KernelSet], options: ClusterOptions) -> ClusterResult:
    """Pool the main-shape kernels of ``sets`` and cluster them (see the module docstring)."""
    if options.clusters < 1:
        raise UserError(f"--clusters must be >= 1, got {options.clusters}")
    shape = sets[0].main_shape()
    parts = [s.flat(shape) for s in sets]
    kernels = np.concatenate([p[0] for p in parts])
    units = np.concatenate([p[1] for p in parts])
    channels = np.concatenate([p[2] for p in parts])
    sources = np.concatenate([np.full(len(p[0]), s.source, dtype=object) for s, p in zip(sets, parts, strict=True)])
    if len(kernels) < options.clusters:
        raise UserError(f"{len(kernels)} kernels cannot form {options.clusters} clusters; lower --clusters")
    data = normalise_kernels(kernels, options.sign)
    mse = None
    if options.latent > 0:
        ae, mse = train_autoencoder(data, options.latent, options.hidden, options.epochs, options.lr, options.seed)
        with torch.no_grad():
            codes = ae.encoder(torch.as_tensor(data, dtype=torch.float32)).numpy().astype(np.float64)
    else:
        codes = data
    from sklearn.cluster import KMeans

    labels = KMeans(n_clusters=options.clusters, n_init=10, random_state=options.seed).fit_predict(codes)
    centroids = np.zeros((options.clusters, data.shape[1]))
    for c in range(options.clusters):
        members = data[labels == c]
        if len(members):
            centroids[c] = normalise_kernels(members.mean(axis=0, keepdims=True).reshape(1, *shape))[0]
    similarity = np.einsum("nd,nd->n", data, centroids[labels])
    families = classify(kernels, options.min_r2, options.criterion)
    noise, noise_kernels = estimate_noise(families)
    separability = None
    if options.merge and np.isfinite(noise) and min(shape) >= 3:
        separability = measure(shape, noise, options.bench_per_family, options.seed)
    fits = classify(centroids.reshape(-1, *shape), options.min_r2, options.centroid_criterion, refine=True)
    groups = separability.groups if separability is not None else {n: n for n in NAMES}
    names = _unique([reported_name(f, a, groups) for f, a in zip(fits.family, fits.amplitude, strict=True)])
    return ClusterResult(options, labels, similarity, centroids.reshape(-1, *shape), fits, names, sources,
                         units, channels, families, mse, noise=noise, noise_kernels=noise_kernels,
                         separability=separability)


def reported_name(family: str, amplitude: float, groups: dict[str, str]) -> str:
    """A centroid's name: its family's reported name, with the polarity of its centre where the merged group
    has one (a merged centre-surround keeps on / off: the sign is never in doubt, the surround's shape is)."""
    group = groups.get(family, family)
    if group == GROUP_NAMES["laplacian"] and group != family:
        return f"{group}_{'on' if amplitude > 0 else 'off'}"
    return group


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def write_cluster_outputs(result: ClusterResult, out_dir: str | Path, dpi: int = 100) -> list[Path]:
    """clusters.json, layer_shares.csv, assignments.csv, centroids.png and layer_shares.png under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "clusters.json").write_text(json.dumps(result.summary(), indent=2) + "\n")
    shares = result.layer_shares()
    with (out / "layer_shares.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(shares[0]))
        writer.writeheader()
        writer.writerows(shares)
    with (out / "assignments.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "unit", "channel", "cluster", "name", "similarity", "classified", "family",
                         "family_r2"])
        for s, u, ch, c, sim, fam, r2 in zip(result.sources, result.units, result.channels, result.labels,
                                             result.similarity, result.families.family, result.families.r2,
                                             strict=True):
            writer.writerow([s, int(u), int(ch), int(c), result.names[c], round(float(sim), 4),
                             int(sim >= result.options.threshold), fam, round(float(r2), 4)])
    return [out / "clusters.json", out / "layer_shares.csv", out / "assignments.csv",
            *_plot(result, shares, out, dpi)]


FAMILY_COLOURS = {"delta": "#7f7f7f", "gauss": "#ff7f0e", "dog_on": "#d62728", "dog_off": "#1f77b4",
                  "d1": "#2ca02c", "laplacian": "#9467bd", "d2": "#8c564b", "other": "#e8e8e8",
                  "centre_surround": "#9467bd", "blob": "#ff7f0e"}  # a merged name takes its members' colour


def _plot(result: ClusterResult, shares: list[dict[str, Any]], out: Path, dpi: int) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(result.centroids)
    fig, axes = plt.subplots(1, k, figsize=(1.3 * k, 1.7), dpi=dpi, squeeze=False)
    for c, ax in enumerate(axes[0]):
        cen = result.centroids[c]
        peak = float(np.abs(cen).max()) or 1.0
        ax.imshow(cen / peak, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(f"{result.names[c]}\nR²={result.fits.r2[c]:.2f} "
                     f"{(result.labels == c).mean():.0%}", fontsize=6)
        ax.set_axis_off()
    fig.tight_layout()
    centroids_png = out / "centroids.png"
    fig.savefig(centroids_png)
    plt.close(fig)

    fig, (fam_ax, ax) = plt.subplots(2, 1, figsize=(max(3.5, 0.45 * len(shares) + 2.0), 4.6), dpi=dpi,
                                     sharex=True)
    labels = [f"{r['source'][:12]}:{r['unit']}" for r in shares]
    bottom = np.zeros(len(shares))
    # the names reported (as in the CLI's table): families the naming does not separate at this kernel size and
    # noise as one, the rest apart; a delta or a Gaussian is never counted as a DoG
    for name in dict.fromkeys(result.groups[n] for n in NAMES):
        values = np.array([r[f"reported_{name}"] for r in shares])
        fam_ax.bar(range(len(shares)), values, bottom=bottom, color=FAMILY_COLOURS[name], label=name)
        bottom += values
    fam_ax.set_ylabel(f"family share ({result.options.criterion.upper()})", fontsize=7)
    fam_ax.set_ylim(0, 1)
    fam_ax.legend(fontsize=5, bbox_to_anchor=(1.01, 1), loc="upper left")
    bottom = np.zeros(len(shares))
    cmap = plt.get_cmap("tab10" if k <= 10 else "tab20")
    for c, name in enumerate(result.names):
        values = np.array([r[f"c{c}_{name}"] for r in shares])
        ax.bar(range(len(shares)), values, bottom=bottom, color=cmap(c % cmap.N), label=name)
        bottom += values
    ax.plot(range(len(shares)), [r["classified"] for r in shares], "k.-", label="classified")
    ax.set_xticks(range(len(shares)), labels, rotation=60, fontsize=6, ha="right")
    ax.set_ylabel("cluster share", fontsize=7)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=5, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    shares_png = out / "layer_shares.png"
    fig.savefig(shares_png)
    plt.close(fig)
    return [centroids_png, shares_png]
