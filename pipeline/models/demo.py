"""CPU-sized variants of timm's own architectures, for the demo and the tests.

They are configs of timm's classes (as timm's variants are), not separate model code, so everything that works
for ``convnext_tiny`` or ``resnet18`` (layer plans, transfer, timm's state_dict names) works for them too.
"""

from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.convnext import ConvNeXt
from timm.models.resnet import BasicBlock, ResNet


def _cfg(classifier: str, first_conv: str) -> dict[str, Any]:
    return {
        "num_classes": 10, "input_size": (3, 32, 32), "pool_size": (1, 1), "crop_pct": 1.0,
        "interpolation": "bilinear", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": first_conv, "classifier": classifier, "license": "apache-2.0",
    }


# registered before the variants below: timm's register_model reads the module's default_cfgs
default_cfgs = generate_default_cfgs({
    "convnext_demo.untrained": _cfg("head.fc", "stem.0"),
    "resnet_demo.untrained": _cfg("fc", "conv1"),
})


@register_model
def convnext_demo(pretrained: bool = False, **kwargs: Any) -> ConvNeXt:
    """ConvNeXt with depths (1, 1, 2, 1), dims (16, 32, 64, 128): 5 depthwise 7x7 units, ~0.2M parameters."""
    model_args = dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128))
    return build_model_with_cfg(
        ConvNeXt, "convnext_demo", pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True), **dict(model_args, **kwargs),
    )


@register_model
def resnet_demo(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """A narrow ResNet: one BasicBlock per stage, widths (16, 32, 64, 128): stem + 4 block units, ~0.3M parameters."""
    model_args = dict(block=BasicBlock, layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), stem_width=16)
    return build_model_with_cfg(ResNet, "resnet_demo", pretrained, **dict(model_args, **kwargs))
