"""Tests for the timm-style HorNet in pipeline/models/hornet.py (CPU, a few seconds)."""

from __future__ import annotations

import re

import pytest
import timm
import torch
import torch.nn as nn
from timm.models._manipulate import group_parameters

import pipeline.models.hornet as hornet  # importing registers the variants with timm


def _is_depthwise(module: nn.Module) -> bool:
    """The project's definition of a depthwise conv: the filters it transfers and freezes."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == module.in_channels == module.out_channels
        and module.groups > 1
    )


def _depthwise_in_forward_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of depthwise convs in the order they run, recorded with forward hooks."""
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda *_, name=name: order.append(name))
        for name, m in model.named_modules()
        if _is_depthwise(m)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return order


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope='module')
def tiny() -> nn.Module:
    return timm.create_model('hornet_tiny_7x7').eval()


def test_tiny_has_25_depthwise_convs_in_forward_order(tiny: nn.Module) -> None:
    names = [n for n, m in tiny.named_modules() if _is_depthwise(m)]
    assert len(names) == 25
    assert all(re.fullmatch(r'stages\.\d\.blocks\.\d+\.gnconv\.dwconv', n) for n in names)
    assert _depthwise_in_forward_order(tiny, torch.randn(1, 3, 32, 32)) == names
    # Stage i runs g^(i+2) conv, so the depthwise conv covers sum(dims) = width * (2 - 2^-(order-1)) channels.
    widths = {n: tiny.get_submodule(n).in_channels for n in names}
    assert widths['stages.0.blocks.0.gnconv.dwconv'] == 64 + 32
    assert widths['stages.3.blocks.1.gnconv.dwconv'] == 512 + 256 + 128 + 64 + 32
    assert all(tiny.get_submodule(n).kernel_size == (7, 7) for n in names)


def test_tiny_param_count(tiny: nn.Module) -> None:
    assert 20e6 <= _num_params(tiny) <= 25e6  # paper: 22M (measured 22.41M)
    assert tiny.num_classes == 1000 and tiny.num_features == 512
    assert tiny.pretrained_cfg['architecture'] == 'hornet_tiny_7x7'
    assert tiny.default_cfg is tiny.pretrained_cfg


def test_small_has_25_depthwise_convs() -> None:
    model = timm.create_model('hornet_small_7x7', num_classes=10, in_chans=3)
    assert sum(_is_depthwise(m) for m in model.modules()) == 25
    assert 45e6 <= _num_params(model) <= 55e6  # paper: 50M


def test_create_model_kwargs() -> None:
    model = timm.create_model(
        'hornet_demo', num_classes=5, in_chans=1, drop_rate=0.1, drop_path_rate=0.2,
        layer_scale_init_value=0.0, global_pool='max',
    )
    assert model.stem[0].in_channels == 1
    # 0 disables layer scale; None would not, because timm.create_model drops None-valued kwargs.
    assert all(b.gamma1 is None and b.gamma2 is None for s in model.stages for b in s.blocks)
    last_block = model.stages[-1].blocks[-1]
    assert last_block.drop_path.drop_prob == pytest.approx(0.2)
    assert model.head.drop.p == pytest.approx(0.1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)


def test_demo_forward_backward() -> None:
    model = timm.create_model('hornet_demo', num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, 1, 1)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    logits = model(x)
    assert logits.shape == (2, 10)
    logits.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_demo_channels_last_and_bf16_autocast() -> None:
    model = timm.create_model('hornet_demo', num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out_cl = model(x.to(memory_format=torch.channels_last))
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out_bf16 = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, ref, rtol=1e-4, atol=1e-5)
    assert out_bf16.shape == (2, 10) and torch.isfinite(out_bf16).all()


def test_grad_checkpointing_matches() -> None:
    model = timm.create_model('hornet_demo', num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    model.set_grad_checkpointing(True)
    assert all(s.grad_checkpointing for s in model.stages)
    out = model(x)
    out.sum().backward()
    torch.testing.assert_close(out, ref)
    assert model.stem[0].weight.grad is not None


def test_reset_classifier() -> None:
    model = timm.create_model('hornet_demo', num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    model.reset_classifier(7)
    assert model.num_classes == 7 and model.get_classifier().out_features == 7
    assert model(x).shape == (2, 7)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    model.reset_classifier(3, global_pool='max')
    assert model(x).shape == (2, 3)


def test_group_matcher_fine_groups(tiny: nn.Module) -> None:
    groups = group_parameters(tiny, tiny.group_matcher(coarse=False))
    groups = [groups[i] for i in sorted(groups)]
    assert len(groups) == 1 + 25 + 1  # stem, each block, head
    assert all(n.startswith('stem.') for n in groups[0])
    assert all(n.startswith('head.') for n in groups[-1])
    block_groups = groups[1:-1]
    for names in block_groups:
        blocks = {re.match(r'stages\.(\d+)\.blocks\.(\d+)\.', n).groups() for n in names if '.blocks.' in n}
        assert len(blocks) == 1  # exactly one block per group...
        assert sum(n.endswith('gnconv.dwconv.weight') for n in names) == 1  # ...holding its one dwconv
    # A stage's downsample rides with that stage's first block (as in timm's ConvNeXt).
    first_blocks = {'stages.1.blocks.0', 'stages.2.blocks.0', 'stages.3.blocks.0'}
    for names in block_groups:
        downsample = [n for n in names if '.downsample.' in n]
        if downsample:
            assert any(n.startswith(tuple(first_blocks)) for n in names)
    assert sum('.downsample.' in n for g in block_groups for n in g) == 3 * 4  # 3 x (norm w/b, conv w/b)
    assert sum(len(g) for g in groups) == len(list(tiny.parameters()))

    coarse = group_parameters(tiny, tiny.group_matcher(coarse=True))
    assert len(coarse) == 1 + 4 + 1  # stem, stages, head


class _UpstreamLayerNorm(nn.Module):
    """upstream ``LayerNorm``: channels_last through F.layer_norm, channels_first written out by hand."""

    def __init__(self, dim: int, channels_first: bool = False) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim))
        self.channels_first, self.dim = channels_first, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.channels_first:
            return nn.functional.layer_norm(x, (self.dim,), self.weight, self.bias, 1e-6)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * ((x - u) / torch.sqrt(s + 1e-6)) + self.bias[:, None, None]


class _UpstreamGnConv(nn.Module):
    """upstream ``gnconv`` (7x7 depthwise, scale s = 1/3 as every upstream 7x7 variant uses)."""

    def __init__(self, dim: int, order: int) -> None:
        super().__init__()
        self.order, self.dims = order, [dim // 2 ** i for i in range(order)][::-1]
        self.proj_in = nn.Conv2d(dim, 2 * dim, 1)
        self.dwconv = nn.Conv2d(sum(self.dims), sum(self.dims), 7, padding=3, groups=sum(self.dims))
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.pws = nn.ModuleList([nn.Conv2d(self.dims[i], self.dims[i + 1], 1) for i in range(order - 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pwa, abc = torch.split(self.proj_in(x), (self.dims[0], sum(self.dims)), dim=1)
        dw_list = torch.split(self.dwconv(abc) * (1.0 / 3.0), self.dims, dim=1)
        x = pwa * dw_list[0]
        for i in range(self.order - 1):
            x = self.pws[i](x) * dw_list[i + 1]
        return self.proj_out(x)


class _UpstreamBlock(nn.Module):
    def __init__(self, dim: int, order: int) -> None:
        super().__init__()
        self.norm1 = _UpstreamLayerNorm(dim, channels_first=True)
        self.gnconv = _UpstreamGnConv(dim, order)
        self.norm2 = _UpstreamLayerNorm(dim)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        self.gamma1, self.gamma2 = nn.Parameter(1e-6 * torch.ones(dim)), nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.gamma1.view(-1, 1, 1) * self.gnconv(self.norm1(x))
        y = self.pwconv2(self.act(self.pwconv1(self.norm2(x.permute(0, 2, 3, 1)))))
        return x + (self.gamma2 * y).permute(0, 3, 1, 2)


class _UpstreamHorNet(nn.Module):
    """A transcription of upstream ``HorNet`` (github.com/raoyongming/HorNet, hornet.py, gnconv orders 2..5):
    independent of pipeline/models/hornet.py, so agreeing with it is evidence, not a tautology."""

    def __init__(self, depths: tuple[int, ...], base_dim: int, num_classes: int) -> None:
        super().__init__()
        dims = [base_dim * 2 ** i for i in range(4)]
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), _UpstreamLayerNorm(dims[0], channels_first=True))]
            + [nn.Sequential(_UpstreamLayerNorm(dims[i], channels_first=True), nn.Conv2d(dims[i], dims[i + 1], 2, stride=2))
               for i in range(3)])
        self.stages = nn.ModuleList([nn.Sequential(*[_UpstreamBlock(dims[i], i + 2) for _ in range(depths[i])])
                                     for i in range(4)])
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(down(x))
        return self.head(self.norm(x.mean([-2, -1])))


@pytest.mark.parametrize('k', [10, 3])
def test_state_dict_roundtrip_gives_the_upstream_networks_output(k: int) -> None:
    """Weights of the upstream network (every tensor random, layer scales included, so no block is an identity)
    load strictly into ours through checkpoint_filter_fn and give upstream's logits; our state dict then loads
    into a fresh model and gives ours bit for bit. A renamed, transposed or mis-split tensor, a wrong gnconv order or
    scale, or a norm on the wrong axis changes the logits."""
    gen = torch.Generator().manual_seed(k)
    upstream = _UpstreamHorNet((1, 1, 2, 1), 16, k).eval()
    with torch.no_grad():
        for p in upstream.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    ours = timm.create_model('hornet_demo', num_classes=k).eval()
    ours.load_state_dict(hornet.checkpoint_filter_fn({'model': upstream.state_dict()}, ours), strict=True)
    again = timm.create_model('hornet_demo', num_classes=k).eval()
    again.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32, generator=gen)
    with torch.no_grad():
        reference = upstream(x)
        assert reference.std() > 0.1  # the logits depend on the input: a real comparison
        logits = ours(x)
        torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4 * float(reference.abs().max()))
        torch.testing.assert_close(again(x), logits, rtol=0, atol=0)


def test_tiny_and_small_param_counts_equal_upstream() -> None:
    """Parameter counts of ours against the upstream transcription (22.41M and 49.53M; the paper says 22M, 50M)."""
    for arch, base_dim in (('hornet_tiny_7x7', 64), ('hornet_small_7x7', 96)):
        upstream = _UpstreamHorNet((2, 3, 18, 2), base_dim, 1000)
        assert _num_params(timm.create_model(arch)) == _num_params(upstream), arch


def _upstream_hornet_keys(depths: list[int], base_dim: int, orders: list[int],
                         num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of a checkpoint of the upstream HorNet code (github.com/raoyongming/HorNet, hornet.py).

    Written out from that code, not from ours: ``downsample_layers`` holds the stem (conv, LayerNorm) and three
    (LayerNorm, conv) downsamplers; ``stages.i.j`` are bare nn.Sequential blocks with ``gamma1``/``gamma2``,
    ``norm1``, ``gnconv.{proj_in, dwconv, proj_out, pws.k}``, ``norm2``, ``pwconv1``, ``pwconv2``; then ``norm``
    and ``head`` (an nn.Linear).
    """
    dims = [base_dim * 2 ** i for i in range(4)]
    keys: dict[str, tuple[int, ...]] = {
        'downsample_layers.0.0.weight': (dims[0], 3, 4, 4), 'downsample_layers.0.0.bias': (dims[0],),
        'downsample_layers.0.1.weight': (dims[0],), 'downsample_layers.0.1.bias': (dims[0],),
    }
    for i in range(1, 4):
        keys |= {f'downsample_layers.{i}.0.weight': (dims[i - 1],), f'downsample_layers.{i}.0.bias': (dims[i - 1],),
                 f'downsample_layers.{i}.1.weight': (dims[i], dims[i - 1], 2, 2),
                 f'downsample_layers.{i}.1.bias': (dims[i],)}
    for i, (depth, order) in enumerate(zip(depths, orders, strict=True)):
        dim = dims[i]
        gn_dims = [dim // 2 ** k for k in range(order)][::-1]
        for j in range(depth):
            b = f'stages.{i}.{j}.'
            keys |= {b + 'gamma1': (dim,), b + 'gamma2': (dim,), b + 'norm1.weight': (dim,), b + 'norm1.bias': (dim,),
                     b + 'gnconv.proj_in.weight': (2 * dim, dim, 1, 1), b + 'gnconv.proj_in.bias': (2 * dim,),
                     b + 'gnconv.dwconv.weight': (sum(gn_dims), 1, 7, 7), b + 'gnconv.dwconv.bias': (sum(gn_dims),),
                     b + 'gnconv.proj_out.weight': (dim, dim, 1, 1), b + 'gnconv.proj_out.bias': (dim,),
                     b + 'norm2.weight': (dim,), b + 'norm2.bias': (dim,),
                     b + 'pwconv1.weight': (4 * dim, dim), b + 'pwconv1.bias': (4 * dim,),
                     b + 'pwconv2.weight': (dim, 4 * dim), b + 'pwconv2.bias': (dim,)}
            for k in range(order - 1):
                keys |= {b + f'gnconv.pws.{k}.weight': (gn_dims[k + 1], gn_dims[k], 1, 1),
                         b + f'gnconv.pws.{k}.bias': (gn_dims[k + 1],)}
    keys |= {'norm.weight': (dims[3],), 'norm.bias': (dims[3],), 'head.weight': (num_classes, dims[3]),
             'head.bias': (num_classes,)}
    return keys


@pytest.mark.parametrize('arch, base_dim', [('hornet_tiny_7x7', 64), ('hornet_small_7x7', 96)])
def test_upstream_checkpoint_loads_strictly(arch: str, base_dim: int) -> None:
    """An upstream HorNet checkpoint (``{'model': state_dict}``, the official release format) loads strictly into
    ours after checkpoint_filter_fn, every tensor landing where its upstream name says, and the model gives the
    upstream network's output (checked on the head: upstream ``head`` is our ``head.fc``)."""
    upstream = _upstream_hornet_keys([2, 3, 18, 2], base_dim, [2, 3, 4, 5])
    assert len(upstream) == 560
    gen = torch.Generator().manual_seed(0)
    official = {k: torch.randn(shape, generator=gen) for k, shape in upstream.items()}
    model = timm.create_model(arch)
    remapped = hornet.checkpoint_filter_fn({'model': official}, model)
    model.load_state_dict(remapped, strict=True)  # names and shapes must match one to one
    ours = model.state_dict()
    pairs = {'downsample_layers.0.0.weight': 'stem.0.weight', 'downsample_layers.2.1.weight': 'stages.2.downsample.1.weight',
             'stages.2.17.gnconv.dwconv.weight': 'stages.2.blocks.17.gnconv.dwconv.weight',
             'stages.3.1.gnconv.pws.3.bias': 'stages.3.blocks.1.gnconv.pws.3.bias',
             'norm.weight': 'head.norm.weight', 'head.weight': 'head.fc.weight', 'head.bias': 'head.fc.bias'}
    for theirs, mine in pairs.items():
        assert torch.equal(ours[mine], official[theirs]), (theirs, mine)
    assert hornet.checkpoint_filter_fn(ours, model) is ours  # already in this layout: untouched


def test_features_only() -> None:
    model = timm.create_model('hornet_demo', features_only=True)
    feats = model(torch.randn(2, 3, 64, 64))
    assert [f.shape[1:] for f in feats] == [(16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2)]


def test_hornet_demo_ug_keeps_the_layout_and_starts_its_gnconv_with_unit_gain() -> None:
    """Same state_dict layout as hornet_demo (so unit plans, mappings and unit counts agree); only the init and the
    depthwise output scale differ, and an unknown gnconv_init is refused."""
    torch.manual_seed(0)
    ug = timm.create_model('hornet_demo_ug', num_classes=5)
    paper = timm.create_model('hornet_demo', num_classes=5)
    assert {k: v.shape for k, v in ug.state_dict().items()} == {k: v.shape for k, v in paper.state_dict().items()}
    gn = ug.stages[3].blocks[0].gnconv
    assert gn.scale == pytest.approx(1 / 0.14)
    assert gn.proj_in.weight.std().item() == pytest.approx(128 ** -0.5, rel=0.1)  # LeCun normal: unit gain
    assert gn.dwconv.weight.std().item() == pytest.approx(0.02, rel=0.1)  # depthwise kernels keep the paper init
    assert float(ug.stages[0].blocks[0].gamma1[0]) == pytest.approx(1e-6)
    with pytest.raises(ValueError, match='gnconv_init'):
        timm.create_model('hornet_demo', gnconv_init='kaiming')
