"""The one augmentation contract every image loader honours (folder, webdataset, FFCV).

Train: RandomResizedCrop(resolution, scale, ratio) + horizontal flip. Val: resize the short side to
``resolution / crop_ratio`` (224/256 by default), centre crop ``resolution``. Both end in ImageNet mean/std.

Loaders that feed a GPU (webdataset, FFCV) hand over **uint8** NCHW batches and normalise with
:func:`normalize_batch` after the batch reached the device: four times less to copy, and the float maths runs where
it is cheap. The folder loader keeps torchvision's float pipeline, because that is the baseline users know.

:func:`decode_train` / :func:`decode_val` are the webdataset decoders: the crop geometry is torchvision's, but the
JPEG is decoded by libjpeg-turbo (``simplejpeg``) at the smallest DCT scale (n/8) that keeps the crop at least the
output size, and only the crop is resized: most of what makes a 160 px epoch cheaper than PIL's full decode.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import simplejpeg
import torch
from PIL import Image
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


# ---- decoders with DCT scaling (webdataset) ----------------------------------------------------------------
def _reduced_size(width: int, height: int, box: tuple[float, float, float, float], size: int) -> tuple[int, int]:
    """The smallest decoded image size that keeps ``box`` at least ``size`` pixels on its shorter side."""
    left, top, right, bottom = box
    reduce = min((right - left) / size, (bottom - top) / size)
    if reduce <= 1:
        return width, height
    return math.ceil(width / reduce), math.ceil(height / reduce)


def _decode_reduced(data: bytes, box_of: Callable[[int, int], tuple[float, float, float, float]], size: int,
                    fast: bool = False) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Decode only as much resolution as ``box`` -> ``size`` needs: HWC uint8 pixels and the box in them.

    JPEGs go through libjpeg-turbo (simplejpeg), which scales in the DCT domain by any n/8 and is faster than
    PIL's decoder (``fast``: its fast integer DCT and plain chroma upsampling, a few % quicker and visually the
    same); anything else (PNG, WebP, CMYK JPEG) falls back to PIL, with ``draft()`` for JPEGs.
    """
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        box = box_of(width, height)
        if img.format == "JPEG":
            img.draft("RGB", _reduced_size(width, height, box, size))
        pixels = np.array(img if img.mode == "RGB" else img.convert("RGB"))
    else:
        box = box_of(width, height)
        min_width, min_height = _reduced_size(width, height, box, size)
        try:
            pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=fast, fastupsample=fast,
                                            min_height=min_height, min_width=min_width)
        except ValueError:  # e.g. CMYK, which libjpeg cannot turn into RGB; a truncated file fails here as well
            pixels = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    sx, sy = pixels.shape[1] / width, pixels.shape[0] / height
    left, top, right, bottom = box
    return pixels, (left * sx, top * sy, right * sx, bottom * sy)


def train_box(width: int, height: int, spec: AugmentSpec) -> tuple[int, int, int, int]:
    """A RandomResizedCrop box (left, top, right, bottom): torchvision's algorithm and distribution.

    Drawn from torch's generator like torchvision's, but with one draw per try instead of four.
    """
    area = width * height
    log_lo, log_hi = math.log(spec.ratio[0]), math.log(spec.ratio[1])
    for _ in range(10):
        u_area, u_ratio, u_top, u_left = torch.rand(4).tolist()
        target = area * (spec.scale[0] + u_area * (spec.scale[1] - spec.scale[0]))
        aspect = math.exp(log_lo + u_ratio * (log_hi - log_lo))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(u_top * (height - h + 1)), int(u_left * (width - w + 1))
            return left, top, left + w, top + h
    in_ratio = width / height  # torchvision's fallback: the central crop clamped to the ratio range
    if in_ratio < min(spec.ratio):
        w, h = width, round(width / min(spec.ratio))
    elif in_ratio > max(spec.ratio):
        w, h = round(height * max(spec.ratio)), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def decode_train(data: bytes, spec: AugmentSpec) -> torch.Tensor:
    """Encoded image -> uint8 CHW: RandomResizedCrop + horizontal flip, DCT-scaled decode.

    The crop is resized with torch's antialiased uint8 bilinear kernel (what torchvision's v2 Resize runs on
    tensors), which is several times cheaper than PIL's. Randomness comes from torch's generator, which
    DataLoader seeds per worker (and our loaders per batch).
    """
    size = spec.train_resolution
    pixels, (left, top, right, bottom) = _decode_reduced(data, lambda w, h: train_box(w, h, spec), size, fast=True)
    x0, y0 = int(left), int(top)
    x1, y1 = max(x0 + 1, round(right)), max(y0 + 1, round(bottom))
    crop = torch.from_numpy(pixels[y0:y1, x0:x1]).permute(2, 0, 1).unsqueeze(0)
    out = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                                          align_corners=False)[0]
    return out.flip(-1) if torch.rand(1).item() < 0.5 else out


def val_box(width: int, height: int, spec: AugmentSpec) -> tuple[float, float, float, float]:
    """The centre crop of 'resize short side to resize_size, crop val_resolution', in source pixels."""
    side = spec.val_resolution * min(width, height) / spec.resize_size()
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def decode_val(data: bytes, spec: AugmentSpec) -> torch.Tensor:
    """Encoded image -> uint8 CHW centre crop, DCT-scaled decode, resized by PIL at sub-pixel precision."""
    size = spec.val_resolution
    pixels, box = _decode_reduced(data, lambda w, h: val_box(w, h, spec), size)
    out = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR, box=box)
    return torch.from_numpy(np.array(out)).permute(2, 0, 1)
