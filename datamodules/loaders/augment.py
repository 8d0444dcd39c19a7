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
import random
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
    interpolation: str = "bilinear"  # bilinear | bicubic (the recipes' choice)
    rand_augment: str | None = None  # timm RandAugment config string (train only), e.g. rand-m9-mstd0.5-inc1

    def resize_size(self) -> int:
        """The short side validation images are resized to before the centre crop."""
        return round(self.val_resolution / self.crop_ratio)


INTERPOLATIONS = ("bilinear", "bicubic")


def _interpolation(spec: AugmentSpec) -> v2.InterpolationMode:
    return v2.InterpolationMode.BICUBIC if spec.interpolation == "bicubic" else v2.InterpolationMode.BILINEAR


# ---- RandAugment (timm's, on PIL images) -------------------------------------------------------------------
def rand_augment(config: str, channels: int = 3) -> Callable[[Image.Image], Image.Image]:
    """timm's RandAugment for ``config`` (e.g. ``rand-m9-mstd0.5-inc1``), as timm's ImageNet transform builds it.

    ``magnitude_max`` is just under 10: at magnitude 10 timm's increasing Posterize asks for 0 bits, which
    current Pillow rejects (ValueError); 9.999 keeps 1 bit there and leaves every other op unchanged.
    Randomness comes from Python's and NumPy's global generators (seeded per worker / per batch by the loaders
    and restored on resume).
    """
    import re

    from timm.data.auto_augment import rand_augment_transform

    from datamodules.errors import UserError

    sections = config.split("-")
    # timm silently skips a section without digits (a typo like "incl"): accept only what it understands
    if sections[0] != "rand" or not all(re.fullmatch(r"t.+|(mstd|mmax|inc|m|n|p)\d[\d.]*", c) for c in sections[1:]):
        raise UserError(f"augment.rand_augment {config!r} is not a timm RandAugment string "
                        "(rand-<m9|n2|mstd0.5|mmax10|inc1|p0.5|t...>...); use e.g. rand-m9-mstd0.5-inc1")
    mean = tuple(round(255 * m) for m in IMAGENET_MEAN) if channels == 3 else 0
    hparams: dict[str, object] = {"translate_const": 100, "img_mean": mean}
    if not any(c.startswith("mmax") for c in sections):
        hparams["magnitude_max"] = 9.999
    return rand_augment_transform(config, hparams)


def rand_augment_check(config: str) -> None:
    """Raise the UserError of :func:`rand_augment` now (at config time), not in a loader worker."""
    rand_augment(config)


def rand_augment_tensor(image: torch.Tensor, op: Callable[[Image.Image], Image.Image]) -> torch.Tensor:
    """uint8 CHW (1 or 3 channels) -> the same, through a PIL RandAugment op."""
    array = image.permute(1, 2, 0).numpy()
    pil = Image.fromarray(array[..., 0] if array.shape[2] == 1 else np.ascontiguousarray(array))
    out = torch.from_numpy(np.array(op(pil)))
    return out.unsqueeze(0) if out.ndim == 2 else out.permute(2, 0, 1)


def seed_batch_rngs(seed: int) -> None:
    """Seed torch's, Python's and NumPy's generators: crops draw from torch, RandAugment from the other two."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


# ---- torchvision (folder loader) ---------------------------------------------------------------------------
def torchvision_train_transform(spec: AugmentSpec) -> v2.Compose:
    """PIL image -> normalised float CHW: the ImageFolder baseline (+ RandAugment on the PIL crop if set)."""
    steps: list[Callable[..., object]] = [
        v2.RandomResizedCrop(spec.train_resolution, scale=spec.scale, ratio=spec.ratio,
                             interpolation=_interpolation(spec), antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if spec.rand_augment:
        steps.append(rand_augment(spec.rand_augment))
    return v2.Compose([
        *steps,
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def torchvision_val_transform(spec: AugmentSpec) -> v2.Compose:
    """PIL image -> normalised float CHW: resize short side, centre crop."""
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(spec.resize_size(), interpolation=_interpolation(spec), antialias=True),
        v2.CenterCrop(spec.val_resolution),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


# ---- uint8 batches -> normalised float (webdataset and FFCV, on the device) --------------------------------
_NORM_CACHE: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N,3,H,W] (any memory format) -> float32 normalised with ImageNet mean/std.

    mean/std live on the device once (cached per device): building them from Python tuples every batch was a
    host-to-device copy per step. Under ``*-true`` precision the model casts this float32 batch to its own dtype
    (Lightning converts floats *before* this hook runs, and a uint8 batch is not converted).
    """
    if images.device not in _NORM_CACHE:
        mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1) * 255
        _NORM_CACHE[images.device] = (mean, std)
    mean, std = _NORM_CACHE[images.device]
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
    if spec.interpolation == "bicubic":  # torch's uint8 fast path is bilinear only: bicubic runs in float
        out = torch.nn.functional.interpolate(crop.float(), size=(size, size), mode="bicubic", antialias=True,
                                              align_corners=False)[0].round_().clamp_(0, 255).to(torch.uint8)
    else:
        out = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                                              align_corners=False)[0]
    out = out.flip(-1) if torch.rand(1).item() < 0.5 else out
    if spec.rand_augment:
        out = rand_augment_tensor(out, _rand_augment_cached(spec.rand_augment))
    return out


_RA_CACHE: dict[str, Callable[[Image.Image], Image.Image]] = {}


def _rand_augment_cached(config: str) -> Callable[[Image.Image], Image.Image]:
    if config not in _RA_CACHE:
        _RA_CACHE[config] = rand_augment(config)
    return _RA_CACHE[config]


def val_box(width: int, height: int, spec: AugmentSpec) -> tuple[float, float, float, float]:
    """The centre crop of 'resize short side to resize_size, crop val_resolution', in source pixels."""
    side = spec.val_resolution * min(width, height) / spec.resize_size()
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def decode_val(data: bytes, spec: AugmentSpec) -> torch.Tensor:
    """Encoded image -> uint8 CHW centre crop, DCT-scaled decode, resized by PIL at sub-pixel precision."""
    size = spec.val_resolution
    pixels, box = _decode_reduced(data, lambda w, h: val_box(w, h, spec), size)
    resample = Image.Resampling.BICUBIC if spec.interpolation == "bicubic" else Image.Resampling.BILINEAR
    out = Image.fromarray(pixels).resize((size, size), resample, box=box)
    return torch.from_numpy(np.array(out)).permute(2, 0, 1)
