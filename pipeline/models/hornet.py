"""HorNet, written as a timm model file (one file per architecture, as timm does: ~470 lines).

Paper: `HorNet: Efficient High-Order Spatial Interactions with Recursive Gated Convolutions`
(Rao et al., NeurIPS 2022) - https://arxiv.org/abs/2207.14284

HorNet keeps the ConvNeXt macro design (patchify stem, 4 stages, LayerNorm + 2x2 strided downsampling,
inverted-bottleneck MLP, layer scale) but replaces the block's 7x7 depthwise conv with a recursive gated
convolution (g^n conv). The g^n conv still spatially mixes through exactly one 7x7 depthwise conv per block,
which is what this project transfers and freezes, so the module layout is kept simple and the names stable:

    stem.{0,1}                                  4x4/4 conv, LayerNorm2d
    stages.{i}.downsample.{0,1}                 LayerNorm2d, 2x2/2 conv (Identity in stage 0)
    stages.{i}.blocks.{j}.gnconv.proj_in        1x1 conv, dim -> 2 * dim
    stages.{i}.blocks.{j}.gnconv.dwconv         7x7 depthwise conv over sum(dims) channels (the only one)
    stages.{i}.blocks.{j}.gnconv.pws.{k}        1x1 convs between gating orders
    stages.{i}.blocks.{j}.gnconv.proj_out       1x1 conv, dim -> dim
    stages.{i}.blocks.{j}.pwconv{1,2}           MLP linears (channels-last)
    head.{norm,fc}                              pool -> LayerNorm -> classifier

The official checkpoints (github.com/raoyongming/HorNet) use a different layout; `checkpoint_filter_fn`
maps them onto this one, so they can be loaded with
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path))``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerNorm2d, NormMlpClassifierHead, get_device_dtype, trunc_normal_
from timm.models._builder import build_model_with_cfg
from timm.models._manipulate import checkpoint_seq, named_apply
from timm.models._registry import generate_default_cfgs, register_model

__all__ = ['GnConv', 'HorNetBlock', 'HorNetStage', 'HorNet', 'checkpoint_filter_fn']


class GnConv(nn.Module):
    """Recursive gated convolution (g^n conv).

    One 1x1 projection produces a gate ``pwa`` and the features ``abc`` for every order at once; a single
    depthwise conv mixes all of ``abc`` spatially, and the orders are then chained by elementwise products
    with channel width doubling at each step. Doing the depthwise conv once over ``sum(dims)`` channels (rather
    than once per order) is what keeps the cost close to a plain depthwise conv.
    """

    def __init__(
            self,
            dim: int,
            order: int = 5,
            kernel_size: int = 7,
            scale: float = 1.0 / 3.0,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        """
        Args:
            dim: Input and output channels; must be divisible by ``2 ** (order - 1)``.
            order: Interaction order n; channel widths are dim / 2^(n-1), ..., dim / 2, dim.
            kernel_size: Depthwise kernel size (7 in all HorNet "7x7" variants).
            scale: Multiplier on the depthwise output. The paper uses 1/3 to keep the product of n gated
                terms from growing with the order, which stabilizes training.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if order < 1 or dim % (2 ** (order - 1)):
            raise ValueError(f'GnConv dim {dim} must be divisible by 2 ** (order - 1) = {2 ** (order - 1)}.')
        self.order = order
        self.dims = [dim // 2 ** i for i in range(order)][::-1]  # smallest first, ends with dim
        self.scale = scale

        self.proj_in = nn.Conv2d(dim, 2 * dim, kernel_size=1, **dd)
        dw_chs = sum(self.dims)
        self.dwconv = nn.Conv2d(
            dw_chs, dw_chs, kernel_size=kernel_size, padding=kernel_size // 2, groups=dw_chs, bias=True, **dd)
        self.pws = nn.ModuleList([
            nn.Conv2d(self.dims[i], self.dims[i + 1], kernel_size=1, **dd) for i in range(order - 1)
        ])
        self.proj_out = nn.Conv2d(dim, dim, kernel_size=1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply g^n conv to an NCHW tensor; output has the same shape."""
        pwa, abc = torch.split(self.proj_in(x), (self.dims[0], sum(self.dims)), dim=1)
        dw_list = torch.split(self.dwconv(abc) * self.scale, self.dims, dim=1)
        x = pwa * dw_list[0]
        for pw, dw in zip(self.pws, dw_list[1:], strict=True):
            x = pw(x) * dw
        return self.proj_out(x)


class HorNetBlock(nn.Module):
    """HorNet block: ConvNeXt-style residual pair with g^n conv as the spatial mixer.

    The spatial branch runs channels-first (NCHW convs); the MLP branch runs channels-last so the pointwise
    layers are plain ``nn.Linear`` (faster than 1x1 convs and keeps the checkpoint layout of the paper).
    """

    def __init__(
            self,
            dim: int,
            order: int = 5,
            kernel_size: int = 7,
            gnconv_scale: float = 1.0 / 3.0,
            mlp_ratio: float = 4.0,
            drop_path: float = 0.0,
            layer_scale_init_value: float | None = 1e-6,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        """
        Args:
            dim: Block width.
            order: g^n conv interaction order.
            kernel_size: Depthwise kernel size inside g^n conv.
            gnconv_scale: Scale on the depthwise output inside g^n conv.
            mlp_ratio: Hidden width of the MLP relative to ``dim``.
            drop_path: Stochastic depth rate for both residual branches.
            layer_scale_init_value: Initial per-channel residual scale; None or <= 0 disables layer scale.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        hidden = int(mlp_ratio * dim)
        self.norm1 = LayerNorm2d(dim, eps=1e-6, **dd)
        self.gnconv = GnConv(dim, order=order, kernel_size=kernel_size, scale=gnconv_scale, **dd)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, **dd)
        self.pwconv1 = nn.Linear(dim, hidden, **dd)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(hidden, dim, **dd)
        if layer_scale_init_value is not None and layer_scale_init_value > 0:
            self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale_init_value), **dd))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale_init_value), **dd))
        else:
            self.gamma1 = None
            self.gamma2 = None
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual g^n conv branch, then residual MLP branch (NCHW in and out)."""
        y = self.gnconv(self.norm1(x))
        if self.gamma1 is not None:
            y = y * self.gamma1.view(-1, 1, 1)
        x = x + self.drop_path(y)

        y = x.permute(0, 2, 3, 1)  # NCHW -> NHWC; free for channels_last inputs
        y = self.pwconv2(self.act(self.pwconv1(self.norm2(y))))
        if self.gamma2 is not None:
            y = y * self.gamma2
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class HorNetStage(nn.Module):
    """Optional downsample followed by a sequence of blocks.

    Putting the downsample inside the stage (as timm's ConvNeXt does) gives each stage one
    resolution/width, which makes ``stages.{i}`` a clean feature-extraction point and a clean
    parameter group.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            depth: int,
            order: int,
            downsample: bool = True,
            kernel_size: int = 7,
            gnconv_scale: float = 1.0 / 3.0,
            drop_path_rates: Sequence[float] | None = None,
            layer_scale_init_value: float | None = 1e-6,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        """
        Args:
            in_chs: Channels coming into the stage.
            out_chs: Stage width.
            depth: Number of blocks.
            order: g^n conv order shared by all blocks of the stage.
            downsample: Whether to start with LayerNorm + 2x2 stride-2 conv (False only after the stem).
            kernel_size: Depthwise kernel size.
            gnconv_scale: Scale on the depthwise output inside g^n conv.
            drop_path_rates: Per-block stochastic depth rates (length ``depth``).
            layer_scale_init_value: Initial layer-scale value for every block.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.grad_checkpointing = False
        if downsample:
            self.downsample = nn.Sequential(
                LayerNorm2d(in_chs, eps=1e-6, **dd),
                nn.Conv2d(in_chs, out_chs, kernel_size=2, stride=2, **dd),
            )
        else:
            if in_chs != out_chs:
                raise ValueError(f'Stage without downsample needs in_chs == out_chs, got {in_chs} != {out_chs}.')
            self.downsample = nn.Identity()

        drop_path_rates = list(drop_path_rates) if drop_path_rates is not None else [0.0] * depth
        self.blocks = nn.Sequential(*[
            HorNetBlock(
                out_chs,
                order=order,
                kernel_size=kernel_size,
                gnconv_scale=gnconv_scale,
                drop_path=drop_path_rates[j],
                layer_scale_init_value=layer_scale_init_value,
                **dd,
            )
            for j in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Downsample, then run blocks (checkpointed per block when enabled)."""
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class HorNet(nn.Module):
    """HorNet image classifier with a timm-compatible interface."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Sequence[int] = (2, 3, 18, 2),
            base_dim: int = 64,
            orders: Sequence[int] = (2, 3, 4, 5),
            kernel_size: int = 7,
            gnconv_scale: float = 1.0 / 3.0,
            layer_scale_init_value: float | None = 1e-6,
            gnconv_init: str = 'paper',
            head_init_scale: float = 1.0,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        """
        Args:
            in_chans: Input image channels.
            num_classes: Classifier outputs; 0 gives a model that returns pooled features.
            global_pool: Head pooling type ('avg', 'max', ..., or '' for none).
            depths: Blocks per stage.
            base_dim: Width of stage 0; stage i has ``base_dim * 2 ** i`` channels. Must be even so that
                every stage's width divides by its ``2 ** (order - 1)``.
            orders: g^n conv order per stage ([2, 3, 4, 5] in the paper: cheap low orders at high resolution).
            kernel_size: Depthwise kernel size.
            gnconv_scale: Scale on the depthwise output inside every g^n conv.
            layer_scale_init_value: Initial layer-scale value; None or <= 0 disables layer scale. Through
                ``timm.create_model`` pass 0, since it silently drops kwargs whose value is None.
            gnconv_init: ``'paper'`` draws every conv of g^n conv from N(0, 0.02) like the rest of the network.
                ``'unit_gain'`` draws its 1x1 convs (proj_in, pws, proj_out) with std 1 / sqrt(fan_in), so each
                factor of the gated product starts with unit gain; the depthwise kernels keep N(0, 0.02) (the
                filters transferred, initialised as ConvNeXt's are), and ``gnconv_scale`` is what sets their
                factor's gain (1 / (0.02 * k) makes it one).
            head_init_scale: Multiplier on the initial classifier weights and bias.
            drop_rate: Dropout before the classifier.
            drop_path_rate: Stochastic depth rate, increased linearly over all blocks up to this value.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if len(depths) != len(orders):
            raise ValueError(f'depths {tuple(depths)} and orders {tuple(orders)} must have the same length.')
        dims = [base_dim * 2 ** i for i in range(len(depths))]
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4, **dd),
            LayerNorm2d(dims[0], eps=1e-6, **dd),
        )

        # Linear in block index over the whole network, as in the paper (not constant per stage).
        total = sum(depths)  # plain floats (not torch.linspace) so the model can be built on the meta device
        dpr = [drop_path_rate * i / max(1, total - 1) for i in range(total)]
        stages = []
        self.feature_info: list[dict[str, Any]] = []
        prev_chs = dims[0]
        stride = 4
        cursor = 0
        for i, (depth, order) in enumerate(zip(depths, orders, strict=True)):
            if i > 0:
                stride *= 2
            stages.append(HorNetStage(
                prev_chs,
                dims[i],
                depth=depth,
                order=order,
                downsample=i > 0,
                kernel_size=kernel_size,
                gnconv_scale=gnconv_scale,
                drop_path_rates=dpr[cursor:cursor + depth],
                layer_scale_init_value=layer_scale_init_value,
                **dd,
            ))
            cursor += depth
            prev_chs = dims[i]
            self.feature_info.append(dict(num_chs=prev_chs, reduction=stride, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = prev_chs

        # Pool -> LayerNorm -> fc, the order used by the paper's head (norm is applied to pooled features).
        self.head = NormMlpClassifierHead(
            self.num_features,
            num_classes,
            pool_type=global_pool,
            drop_rate=drop_rate,
            norm_layer=partial(LayerNorm2d, eps=1e-6),
            **dd,
        )
        named_apply(partial(_init_weights, head_init_scale=head_init_scale), self)
        if gnconv_init not in ('paper', 'unit_gain'):
            raise ValueError(f"gnconv_init must be 'paper' or 'unit_gain', got {gnconv_init!r}.")
        if gnconv_init == 'unit_gain':
            for module in self.modules():
                if isinstance(module, GnConv):
                    _init_unit_gain(module)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Regexes for timm's parameter grouping (layer-wise LR decay, staged freezing).

        Fine grouping gives stem, one group per block, then the head (unmatched, so sorted last). A stage's
        downsample is folded into that stage's first block, mirroring timm's ConvNeXt.
        """
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory by recomputing block activations in the backward pass."""
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """Return the final classifier layer."""
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier (e.g. for fine-tuning on a new label set); keeps the head norm."""
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool, in_features=self.num_features, **get_device_dtype(self))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the unpooled final feature map, shape (N, num_features, H/32, W/32)."""
        x = self.stem(x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, normalize and classify; with ``pre_logits`` return the normalized pooled features."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, in_chans, H, W) -> logits (N, num_classes)."""
        return self.forward_head(self.forward_features(x))


def _init_weights(module: nn.Module, name: str | None = None, head_init_scale: float = 1.0) -> None:
    """Truncated-normal init for convs and linears, as in the paper (and ConvNeXt)."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
        if name and name.startswith('head.'):
            module.weight.data.mul_(head_init_scale)
            if module.bias is not None:
                module.bias.data.mul_(head_init_scale)


def _init_unit_gain(gnconv: GnConv) -> None:
    """LeCun-normal 1x1 convs in one g^n conv (std = 1 / sqrt(in_channels)); the depthwise conv is left as it is."""
    for conv in (gnconv.proj_in, *gnconv.pws, gnconv.proj_out):
        trunc_normal_(conv.weight, std=conv.in_channels ** -0.5)


_ORIGINAL_KEY_RULES = (
    # (pattern in the official HorNet repo layout, replacement in this layout)
    (re.compile(r'^downsample_layers\.0\.'), 'stem.'),
    (re.compile(r'^downsample_layers\.(\d+)\.'), r'stages.\1.downsample.'),
    (re.compile(r'^stages\.(\d+)\.(\d+)\.'), r'stages.\1.blocks.\2.'),
    (re.compile(r'^norm\.'), 'head.norm.'),
    (re.compile(r'^head\.(weight|bias)$'), r'head.fc.\1'),
)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Remap an official HorNet checkpoint to this module layout; state dicts already in it pass through.

    Only the container names differ (the official code keeps the stem inside ``downsample_layers`` and uses
    bare ``nn.Sequential`` stages); every leaf name and tensor shape matches, so this is a pure rename.
    """
    if 'model' in state_dict and isinstance(state_dict['model'], dict):
        state_dict = state_dict['model']
    if 'stem.0.weight' in state_dict:
        return state_dict
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _ORIGINAL_KEY_RULES:
            key, n = pattern.subn(repl, key)
            if n:
                break
        out[key] = value
    return out


def _create_hornet(variant: str, pretrained: bool = False, **kwargs: Any) -> HorNet:
    """Build through timm so pretrained cfgs, ``features_only`` and weight loading behave like timm models.

    No weight source is registered: ``pretrained=True`` raises timm's "No pretrained weights exist" error unless
    ``pretrained_cfg_overlay=dict(file=...)`` points at a local (official or timm-layout) checkpoint.
    """
    return build_model_with_cfg(
        HorNet,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **kwargs,
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        'url': '',
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.0', 'classifier': 'head.fc',
        'license': 'mit', 'paper_ids': 'arXiv:2207.14284',
        'origin_url': 'https://github.com/raoyongming/HorNet',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'hornet_tiny_7x7': _cfg(),
    'hornet_small_7x7': _cfg(),
    'hornet_base_7x7': _cfg(),
    # Not from the paper: a CPU-sized model for tests and smoke runs on CIFAR-sized inputs.
    'hornet_demo': _cfg(input_size=(3, 32, 32), pool_size=(1, 1), crop_pct=1.0),
    'hornet_demo_ug': _cfg(input_size=(3, 32, 32), pool_size=(1, 1), crop_pct=1.0),
})


@register_model
def hornet_tiny_7x7(pretrained: bool = False, **kwargs: Any) -> HorNet:
    """HorNet-T (7x7), ~22M params."""
    model_args = dict(depths=(2, 3, 18, 2), base_dim=64)
    return _create_hornet('hornet_tiny_7x7', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def hornet_small_7x7(pretrained: bool = False, **kwargs: Any) -> HorNet:
    """HorNet-S (7x7), ~50M params."""
    model_args = dict(depths=(2, 3, 18, 2), base_dim=96)
    return _create_hornet('hornet_small_7x7', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def hornet_base_7x7(pretrained: bool = False, **kwargs: Any) -> HorNet:
    """HorNet-B (7x7), ~87M params."""
    model_args = dict(depths=(2, 3, 18, 2), base_dim=128)
    return _create_hornet('hornet_base_7x7', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def hornet_demo(pretrained: bool = False, **kwargs: Any) -> HorNet:
    """Tiny HorNet (5 blocks, base width 16) for CPU tests; not a paper variant. Its blocks barely learn at the
    demo's budget (paper scales: layer scale 1e-6, g^n conv 1/3); ``hornet_demo_ug`` is the variant whose do."""
    model_args = dict(depths=(1, 1, 2, 1), base_dim=16)
    return _create_hornet('hornet_demo', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def hornet_demo_ug(pretrained: bool = False, **kwargs: Any) -> HorNet:
    """``hornet_demo`` whose g^n conv starts with unit gain, so its blocks learn at a CPU budget; not a paper variant.

    With the paper's init every conv is N(0, 0.02); at the tiny model's widths each factor of the gated product
    then has a gain of ~0.1 and the g^n conv output of an order-5 block is ~1e-15 of its input: the depthwise
    kernels' gradients sit ~1e-16 (measured; ConvNeXt's ~1e-10), far below AdamW's eps, and the blocks' spatial
    branch stays silent (swapping every trained kernel for its init changes no prediction). Here the 1x1 convs of
    g^n conv are LeCun-normal and the depthwise output is scaled by 1 / (0.02 * 7) instead of 1/3, which gives
    the 7x7 factor unit gain too; the depthwise kernels keep N(0, 0.02) and the layer scale its paper value 1e-6,
    as in convnext_demo. Same layout and unit plan as ``hornet_demo``. Numbers in docs/studies.md.
    """
    model_args = dict(depths=(1, 1, 2, 1), base_dim=16, gnconv_init='unit_gain', gnconv_scale=1.0 / (0.02 * 7))
    return _create_hornet('hornet_demo_ug', pretrained=pretrained, **dict(model_args, **kwargs))
