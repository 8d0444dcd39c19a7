"""Final weights as a plain timm state_dict in safetensors, with the arch recorded in the file's metadata.

Plain timm names (no Lightning ``model.`` prefix) mean ``timm.create_model(arch, num_classes=k).load_state_dict``
accepts the file as is, and transfer cells can read a base model without importing Lightning checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from datamodules.errors import UserError

WEIGHTS_FILE = "weights.safetensors"


def save_weights(model: nn.Module, path: str | Path, arch: str, num_classes: int) -> None:
    """Write ``model``'s state_dict atomically (temp file + rename), so a reader never sees a torn file."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"arch": arch, "num_classes": str(num_classes)})
    tmp.replace(path)


def resolve_weights_path(base: str | Path) -> Path:
    """A run directory or a ``.safetensors`` file -> the weights file, or a UserError saying what is missing."""
    path = Path(base)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"base weights {path} do not exist; train the base cell first or fix transfer.base")
    return path


def load_weights(base: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state_dict and metadata (``arch``, ``num_classes``) saved by :func:`save_weights`."""
    path = resolve_weights_path(base)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise UserError(f"cannot read base weights {path} ({exc}); retrain the base cell") from exc
    if "arch" not in metadata:
        raise UserError(f"{path} has no 'arch' in its metadata; it was not written by mkf, retrain the base cell")
    return tensors, metadata
