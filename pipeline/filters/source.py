"""Where kernels come from: a run dir, a Lightning checkpoint, a weights file, a timm name, or an extracted ``.npz``.

Everything but the ``.npz`` is turned into a live model (so the layer plan, and for run dirs the evaluation data,
are available); the caller never needs to know which kind of source it was given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from datamodules.errors import UserError
from pipeline.models.layer_plan import is_depthwise
from pipeline.models.weights import WEIGHTS_FILE, load_weights
from pipeline.models.zoo import create_model


@dataclass
class ModelSource:
    """A model with its arch and a short label for figures and file names."""

    label: str
    arch: str
    model: nn.Module
    run_dir: Path | None = None  # set for run dirs: their config.yaml names the evaluation data


def _add_missing_biases(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """A master-key cell gives bias-free depthwise convs a learnable bias; give the fresh skeleton one too."""
    for name, module in model.named_modules():
        if is_depthwise(module) and module.bias is None and f"{name}.bias" in tensors:
            module.bias = nn.Parameter(torch.zeros(module.out_channels))


def _build(arch: str, num_classes: int, tensors: dict[str, torch.Tensor], where: str) -> nn.Module:
    model = create_model(arch, num_classes=num_classes)
    _add_missing_biases(model, tensors)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise UserError(f"{where} does not fit {arch}: {first}") from None
    return model.eval()


def load_model_source(src: str, file: str | None = None) -> ModelSource:
    """Resolve ``src`` (run dir | ``.ckpt`` | ``.safetensors`` | timm name, ``--file`` for its weights)."""
    path = Path(src)
    if path.is_dir():
        if not (path / WEIGHTS_FILE).is_file():
            ckpt = path / "checkpoints" / "best.ckpt"
            if ckpt.is_file():
                return _from_checkpoint(ckpt, label=path.name, run_dir=path)
            raise UserError(f"{path} has no {WEIGHTS_FILE} or checkpoints/best.ckpt; train the cell first")
        tensors, meta = load_weights(path)
        model = _build(meta["arch"], int(meta.get("num_classes", 0)), tensors, str(path))
        return ModelSource(path.name, meta["arch"], model, run_dir=path)
    if path.suffix == ".safetensors":
        tensors, meta = load_weights(path)
        return ModelSource(path.stem, meta["arch"], _build(meta["arch"], int(meta.get("num_classes", 0)),
                                                             tensors, str(path)))
    if path.suffix == ".ckpt":
        if not path.is_file():
            raise UserError(f"checkpoint {path} does not exist; check the path")
        return _from_checkpoint(path, label=path.stem)
    if path.suffix in (".npz", ".pt", ".pth", ".bin") or "/" in src:
        raise UserError(f"{src} is not a run dir, .ckpt, .safetensors or timm model name; check the path")
    return _from_timm(src.removeprefix("timm:"), file)


def _from_checkpoint(path: Path, label: str, run_dir: Path | None = None) -> ModelSource:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read checkpoint {path} ({exc}); pass the run dir or its weights file") from None
    hparams = ckpt.get("hyper_parameters") or {}
    arch = (hparams.get("model") or {}).get("arch")
    if not arch:
        raise UserError(f"{path} has no model.arch in its hyper-parameters; it was not written by mkf train")
    tensors = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    return ModelSource(label, arch, _build(arch, int(hparams.get("num_classes", 0)), tensors, str(path)), run_dir)


def _from_timm(name: str, file: str | None) -> ModelSource:
    import timm

    import pipeline.models.zoo  # noqa: F401  (registers the demo variants)

    arch = name.split(".")[0]
    if not timm.is_model(arch):
        create_model(arch, num_classes=0)  # raises the UserError with close matches
    if file is not None and not Path(file).is_file():
        raise UserError(f"weights file {file} does not exist; --file must be a local pretrained weights file")
    try:
        # a local file only: timm reads it through pretrained_cfg_overlay and never touches the network
        model = timm.create_model(name, pretrained=file is not None,
                                  pretrained_cfg_overlay=dict(file=str(file)) if file else None)
    except Exception as exc:
        raise UserError(f"cannot build {name} from {file or 'scratch'} ({exc}); check the name and the file") from None
    label = name if file else f"{name} (untrained)"
    return ModelSource(label, arch, model.eval())
