"""The one augmentation contract every image loader honours (folder, webdataset, FFCV).

Train: RandomResizedCrop(resolution, scale, ratio) + horizontal flip. Val: resize the short side to
``resolution / crop_ratio`` (224/256 by default), centre crop ``resolution``. Both end in ImageNet mean/std.

Loaders that feed a GPU (webdataset, FFCV) hand over **uint8** NCHW batches and normalise with
:func:`normalize_batch` after the batch reached the device: four times less to copy, and the float maths runs where
it is cheap. The folder loader keeps torchvision's float pipeline, because that is the baseline users know.

:func:`decode_train` / :func:`decode_val` are the webdataset decoders: the crop geometry is torchvision's, but the
JPEG is decoded with PIL's ``draft()`` (DCT-domain downscaling by 1/2, 1/4 or 1/8) whenever the crop is at least
twice the output size, which is most of what makes a 160 px epoch cheaper than a full decode.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as tv1
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_RATIO = 224 / 256


@dataclass(frozen=True)
class AugmentSpec:
    """Resolutions per stage and the crop parameters; the same object configures every loader."""

    train_resolution: int = 224
    val_resolution: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_ratio: float = DEFAULT_CROP_RATIO

    def resize_size(self) -> int:
        """The short side validation images are resized to before the centre crop."""
        return round(self.val_resolution / self.crop_ratio)


# ---- torchvision (folder loader) ---------------------------------------------------------------------------
def torchvision_train_transform(spec: AugmentSpec) -> v2.Compose:
    """PIL image -> normalised float CHW: the ImageFolder baseline."""
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(spec.train_resolution, scale=spec.scale, ratio=spec.ratio, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def torchvision_val_transform(spec: AugmentSpec) -> v2.Compose:
    """PIL image -> normalised float CHW: resize short side, centre crop."""
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(spec.resize_size(), antialias=True),
        v2.CenterCrop(spec.val_resolution),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


# ---- uint8 batches -> normalised float (webdataset and FFCV, on the device) --------------------------------
def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N,3,H,W] (any memory format) -> float32 normalised with ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1) * 255
    return (images.float() - mean) / std


# ---- PIL decoders with DCT scaling (webdataset) ------------------------------------------------------------
def _crop_resize(img: Image.Image, box: tuple[float, float, float, float], size: int) -> Image.Image:
    """Decode only as much of ``img`` as ``box`` -> ``size`` needs, then crop + resize in one PIL call."""
    left, top, right, bottom = box
    reduce = min((right - left) / size, (bottom - top) / size)
    width, height = img.size
    if reduce >= 2 and img.format == "JPEG":
        # draft() picks the largest DCT scale (1/2, 1/4, 1/8) that keeps the image >= the requested size
        img.draft("RGB", (math.ceil(width / reduce), math.ceil(height / reduce)))
    sx, sy = img.size[0] / width, img.size[1] / height
    out = img.resize((size, size), Image.Resampling.BILINEAR,
                     box=(left * sx, top * sy, right * sx, bottom * sy))
    return out if out.mode == "RGB" else out.convert("RGB")


def _to_chw(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


def decode_train(data: bytes, spec: AugmentSpec) -> torch.Tensor:
    """Encoded image -> uint8 CHW: torchvision's RandomResizedCrop geometry and flip, DCT-scaled decode.

    Randomness comes from torch's generator, which DataLoader seeds per worker (and our loaders per epoch).
    """
    img = Image.open(io.BytesIO(data))
    top, left, h, w = tv1.RandomResizedCrop.get_params(img, list(spec.scale), list(spec.ratio))
    out = _crop_resize(img, (left, top, left + w, top + h), spec.train_resolution)
    if torch.rand(1).item() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _to_chw(out)


def val_box(width: int, height: int, spec: AugmentSpec) -> tuple[float, float, float, float]:
    """The centre crop of 'resize short side to resize_size, crop val_resolution', in source pixels."""
    side = spec.val_resolution * min(width, height) / spec.resize_size()
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def decode_val(data: bytes, spec: AugmentSpec) -> torch.Tensor:
    """Encoded image -> uint8 CHW centre crop, DCT-scaled decode."""
    img = Image.open(io.BytesIO(data))
    return _to_chw(_crop_resize(img, val_box(*img.size, spec), spec.val_resolution))
