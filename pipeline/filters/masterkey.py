"""The *Quest for Universal Master Key Filters* procedure: how few filters, each used as ``a*f + b``, can stand in
for every depthwise kernel of a trained model without fine-tuning?

1. a 1-D-latent autoencoder over the normalised kernels: its decoder maps a line to a curve of filter shapes;
2. ``candidates`` filters decoded at evenly spaced points of the codes' range;
3. every kernel replaced by its best candidate as ``a*f + b`` (closed-form least squares: the best candidate is the
   one with the highest squared correlation), and the model evaluated as is;
4. greedy elimination: drop the candidate whose loss costs the least accuracy, again and again, down to ``k`` --
   stopping early if the next drop would leave the accuracy more than ``budget`` below the all-candidate accuracy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from datamodules.errors import UserError
from pipeline.filters.cluster import normalise_kernels, train_autoencoder
from pipeline.filters.extract import extract_kernels


@dataclass
class MasterKeyOptions:
    candidates: int = 16
    k: int = 8
    budget: float = 0.05  # largest allowed accuracy drop below the all-candidate accuracy
    epochs: int = 300
    hidden: int = 64
    seed: int = 0


@dataclass
class MasterKeyResult:
    options: MasterKeyOptions
    filters: np.ndarray  # (k', h, w), zero mean, unit norm
    original_accuracy: float
    candidate_accuracy: float  # all candidates
    final_accuracy: float
    trajectory: list[dict[str, Any]] = field(default_factory=list)  # per elimination step
    stopped_early: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"options": asdict(self.options), "filters": len(self.filters),
                "original_accuracy": round(self.original_accuracy, 4),
                "candidate_accuracy": round(self.candidate_accuracy, 4),
                "final_accuracy": round(self.final_accuracy, 4), "stopped_early": self.stopped_early,
                "trajectory": self.trajectory}


class KernelReplacer:
    """Writes ``a*f + b`` approximations into the model's main-shape depthwise kernels (originals kept)."""

    def __init__(self, model: nn.Module, arch: str) -> None:
        self.model = model
        kset = extract_kernels(model, arch, arch)
        self.shape = kset.main_shape()
        self.kernels, self.units, self.channels = kset.flat(self.shape)
        modules = dict(model.named_modules())
        self.convs = [modules[name] for name in kset.modules]
        self.original = [c.weight.detach().clone() for c in self.convs]
        flat = self.kernels.reshape(len(self.kernels), -1)
        self.centred = flat - flat.mean(axis=1, keepdims=True)
        norm = np.linalg.norm(self.centred, axis=1, keepdims=True)
        self.unit_centred = self.centred / np.where(norm > 1e-12, norm, 1.0)

    def best(self, candidates: np.ndarray) -> np.ndarray:
        """Index of each kernel's best candidate (candidates: zero mean, unit norm, (M, d))."""
        return np.argmax((self.unit_centred @ candidates.T) ** 2, axis=1)

    def apply(self, candidates: np.ndarray, choice: np.ndarray) -> None:
        f = candidates[choice]  # zero mean, unit norm
        a = np.einsum("nd,nd->n", self.centred, f)
        b = self.kernels.reshape(len(self.kernels), -1).mean(axis=1)
        approx = (a[:, None] * f + b[:, None]).reshape(-1, *self.shape)
        with torch.no_grad():
            for conv, orig in zip(self.convs, self.original, strict=True):
                conv.weight.copy_(orig)
            for i, conv in enumerate(self.convs):
                mask = self.units == i + 1
                if mask.any():
                    conv.weight[torch.as_tensor(self.channels[mask]), 0] = torch.as_tensor(
                        approx[mask], dtype=conv.weight.dtype, device=conv.weight.device)

    def restore(self) -> None:
        with torch.no_grad():
            for conv, orig in zip(self.convs, self.original, strict=True):
                conv.weight.copy_(orig)


def find_master_keys(model: nn.Module, arch: str, evaluate: Any, options: MasterKeyOptions,
                     log: Any = None) -> MasterKeyResult:
    """Run the procedure; ``evaluate(model) -> accuracy``. The model's weights are restored at the end."""
    if not 1 <= options.k <= options.candidates:
        raise UserError(f"--k {options.k} must be between 1 and --candidates {options.candidates}")
    replacer = KernelReplacer(model, arch)
    data = normalise_kernels(replacer.kernels)
    ae, _ = train_autoencoder(data, 1, options.hidden, options.epochs, 3e-3, options.seed)
    with torch.no_grad():
        codes = ae.encoder(torch.as_tensor(data, dtype=torch.float32)).numpy()[:, 0]
        line = np.linspace(codes.min(), codes.max(), options.candidates, dtype=np.float32)[:, None]
        decoded = ae.decoder(torch.as_tensor(line)).numpy().astype(np.float64)
    candidates = normalise_kernels(decoded.reshape(-1, *replacer.shape))
    original = evaluate(model)

    def accuracy_with(active: list[int]) -> float:
        choice = np.asarray(active)[replacer.best(candidates[active])]
        replacer.apply(candidates, choice)
        return float(evaluate(model))

    active = list(range(options.candidates))
    reference = accuracy_with(active)
    result = MasterKeyResult(options, candidates, original, reference, reference)
    result.trajectory.append({"filters": len(active), "accuracy": round(reference, 4), "removed": None})
    if log:
        log(f"original {original:.4f}; {len(active)} candidates {reference:.4f}")
    while len(active) > options.k:
        trials = [(accuracy_with([a for a in active if a != drop]), drop) for drop in active]
        best_acc, drop = max(trials, key=lambda t: (t[0], -t[1]))
        if best_acc < reference - options.budget:
            result.stopped_early = True
            if log:
                log(f"stop at {len(active)} filters: dropping one more leaves {best_acc:.4f}, "
                    f"beyond the budget {options.budget} below {reference:.4f}")
            break
        active.remove(drop)
        result.final_accuracy = best_acc
        result.trajectory.append({"filters": len(active), "accuracy": round(best_acc, 4), "removed": int(drop)})
        if log:
            log(f"{len(active)} filters: {best_acc:.4f} (removed candidate {drop})")
    result.filters = candidates[active].reshape(-1, *replacer.shape)
    replacer.restore()
    return result
