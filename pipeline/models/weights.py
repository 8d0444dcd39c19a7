"""Final weights as a plain timm state_dict in safetensors, with the arch recorded in the file's metadata.

Plain timm names (no Lightning ``model.`` prefix) mean ``timm.create_model(arch, num_classes=k).load_state_dict``
accepts the file as is, and transfer cells can read a base model without importing Lightning checkpoints.

A transfer's base (model A) is one of three sources, all read by :func:`load_weights`:

* a run directory of this project (its ``weights.safetensors``);
* a ``.safetensors`` file written by mkf (the arch is in its metadata);
* ``timm:<model>[.<tag>]``: timm's own pretrained loading (``timm.create_model(name, pretrained=True)``), from
  ``base_file`` (a local .safetensors/.pth for that tag) or, without it, from the Hugging Face Hub cache. Nothing
  here downloads: a tag that is not cached is a UserError asking for ``transfer.base_file`` or a pre-download.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from datamodules.errors import UserError
from pipeline.results.run_folder import WEIGHTS_FILE


def tensor_digest(tensor: torch.Tensor) -> str:
    """A short content hash of a tensor (dtype, shape and bytes): the protocol audit's bit-for-bit comparisons of
    weights across run folders, without keeping or re-reading the tensors (blake2b, ~1 GB/s on one core)."""
    flat = tensor.detach().cpu().contiguous()
    digest = hashlib.blake2b(f"{flat.dtype}|{tuple(flat.shape)}|".encode(), digest_size=8)
    if flat.numel():
        digest.update(memoryview(flat.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def state_digests(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """:func:`tensor_digest` of every tensor of a state_dict, by key."""
    return {key: tensor_digest(value) for key, value in state.items()}


def save_weights(model: nn.Module, path: str | Path, arch: str, num_classes: int) -> None:
    """Write ``model``'s state_dict atomically (temp file + rename), so a reader never sees a torn file."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"arch": arch, "num_classes": str(num_classes)})
    with open(tmp, "rb") as f:  # on disk before it has its name: a crash never leaves a named, torn file
        os.fsync(f.fileno())
    tmp.replace(path)


def resolve_weights_path(base: str | Path) -> Path:
    """A run directory or a ``.safetensors`` file -> the weights file, or a UserError saying what is missing."""
    path = Path(base)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"base weights {path} do not exist; train the base cell first or fix transfer.base")
    return path


TIMM_PREFIX = "timm:"


def load_weights(base: str | Path, base_file: str | Path | None = None) -> tuple[dict[str, torch.Tensor],
                                                                              dict[str, str]]:
    """The state_dict and metadata (``arch``, ``num_classes``) of a transfer base: run dir, file or timm tag."""
    if str(base).startswith(TIMM_PREFIX):
        return load_timm_pretrained(str(base)[len(TIMM_PREFIX):], base_file)
    if base_file is not None:
        raise UserError("transfer.base_file only applies to timm:<model> bases; remove it or use base: timm:...")
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


def _hub_cached(cfg: object) -> bool:
    """Whether timm's pretrained cfg points at weights already in the local Hub / torch-hub cache."""
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = hub_id.partition("@")
        filenames = [getattr(cfg, "hf_hub_filename", None), "model.safetensors", "open_clip_pytorch_model.bin",
                     "pytorch_model.bin"]
        return any(isinstance(try_to_load_from_cache(repo, f, revision=revision or None), str)
                   for f in filenames if f)
    url = getattr(cfg, "url", None)
    if url:
        return (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).is_file()
    return False


def load_timm_pretrained(name: str, base_file: str | Path | None = None) -> tuple[dict[str, torch.Tensor],
                                                                                dict[str, str]]:
    """A timm pretrained model's state_dict through timm's own loader (key remapping, filters), offline.

    Builds the model inside ``fork_rng`` so the skeleton's random init does not move the cell's random stream.
    """
    import timm
    from timm.models import get_pretrained_cfg

    from pipeline.models.zoo import check_arch  # also registers the project's variants (timm:convnext_demo)

    arch, _, tag = name.partition(".")
    check_arch(arch)
    overlay: dict[str, object] = {}
    if base_file is not None:
        if not Path(base_file).is_file():
            raise UserError(f"transfer.base_file {base_file} does not exist; fix the path")
        overlay = {"file": str(base_file)}
    else:
        cfg = get_pretrained_cfg(name) if tag else None
        if cfg is None:
            try:
                cfg = timm.models.get_pretrained_cfg(arch)  # the default tag
            except Exception:  # noqa: BLE001
                cfg = None
        if cfg is None or not _hub_cached(cfg):
            raise UserError(f"timm:{name} weights are not in the local Hub cache and there is no download here; "
                            "pass transfer.base_file=PATH, or pre-download them on a machine with network")
    try:
        with torch.random.fork_rng():
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001  (timm raises RuntimeError/OSError/HF errors for bad files)
        where = f"from {base_file}" if base_file else "from the Hub cache"
        raise UserError(f"timm could not load timm:{name} {where} ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]}); check transfer.base_file matches the model") from exc
    tensors = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    num_classes = getattr(model, "num_classes", 0)
    return tensors, {"arch": arch, "num_classes": str(num_classes), "source": f"timm:{name}"}
