"""The LightningModule's knobs: schedule shape, optimizers, channels_last, precision and the train benchmark."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import torch

from pipeline.config import ModelConfig, OptimConfig
from pipeline.training.classifier import ImageClassifier
from pipeline.training.train import resolve_precision


def test_warmup_then_cosine_per_step() -> None:
    module = ImageClassifier(ModelConfig(), OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1), num_classes=5)
    optimizer, scheduler = module.configure_optimizers_plain(110)
    lrs = []
    for _ in range(110):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.01) and lrs[5] < lrs[9] < lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False)), "cosine decays monotonically"
    assert lrs[-1] == pytest.approx(0.1, abs=0.01)


def test_sgd_and_linear_lr_scaling() -> None:
    cfg = OptimConfig(name="sgd", lr=0.1, momentum=0.8, lr_scaling="linear", base_batch_size=256)
    module = ImageClassifier(ModelConfig(), cfg, num_classes=5, global_batch_size=1024)
    optimizer, _ = module.configure_optimizers_plain(10)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["momentum"] == 0.8
    assert optimizer.param_groups[0]["initial_lr"] == pytest.approx(0.4)


def test_channels_last_gives_the_same_logits() -> None:
    torch.manual_seed(0)
    plain = ImageClassifier(ModelConfig(arch="resnet_demo"), OptimConfig(), num_classes=5).eval()
    fast = ImageClassifier(ModelConfig(arch="resnet_demo", channels_last=True), OptimConfig(), num_classes=5).eval()
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(plain(x), fast(x), atol=1e-5)
    assert fast.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def _fake_gpu(monkeypatch: pytest.MonkeyPatch, major: int, makes_bf16_tensors: bool) -> None:
    """Mock only the GPU: that one is present, its compute capability, whether a bf16 tensor can be made on it.

    The real ``torch.cuda.is_bf16_supported`` runs on top, with the keyword ``resolve_precision`` passes: a keyword
    the installed torch does not accept, or a changed meaning of it, fails here (mocking the function itself, as
    this test once did, accepts any signature). An attribute a future torch renames fails loudly too.
    """
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(major=major, minor=0, name=f"fake sm_{major}0"))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: makes_bf16_tensors)


def test_precision_auto_is_bf16_on_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpu(monkeypatch, major=8, makes_bf16_tensors=True)  # Ampere or later: native bf16
    assert resolve_precision("auto") == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto") == "32-true"
    assert resolve_precision("16-mixed") == "16-mixed"


def test_the_bf16_query_we_make_is_one_the_installed_torch_accepts() -> None:
    """The call resolve_precision makes, bound against the installed function's real signature and then made."""
    signature = inspect.signature(torch.cuda.is_bf16_supported)
    signature.bind(including_emulation=False)  # TypeError if this torch has no such keyword
    assert "including_emulation=False" in inspect.getsource(resolve_precision), "the call this test guards"
    assert isinstance(torch.cuda.is_bf16_supported(including_emulation=False), bool)


@pytest.mark.usefixtures("fashion_root")
def test_bench_train_prints_both_loops_and_the_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.bench.train import bench_train

    result = bench_train(steps=4, warmup=2, repeats=1, batch_size=32)
    out = capsys.readouterr().out
    assert "plain PyTorch" in out and "Lightning" in out and "Lightning / plain =" in out
    assert result["plain_ms_per_step"] > 0 and result["lightning_ms_per_step"] > 0
    assert result["overhead"] == pytest.approx(result["lightning_ms_per_step"] / result["plain_ms_per_step"] - 1)
    assert "monitoring hooks" in out and 0 < result["monitoring_ms_per_step"] < result["lightning_ms_per_step"]


# ---- GPU-path defects, tested on CPU (only the GPU itself is mocked) -----------------------------------------
def test_precision_auto_picks_fp16_where_bf16_is_only_emulated(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpu(monkeypatch, major=7, makes_bf16_tensors=True)  # e.g. a V100: bf16 emulated, slower than fp32
    assert torch.cuda.is_bf16_supported() is True, "torch itself calls emulated bf16 supported"
    assert resolve_precision("auto") == "16-mixed"
    _fake_gpu(monkeypatch, major=9, makes_bf16_tensors=True)  # H100
    assert resolve_precision("auto") == "bf16-mixed"


def test_compile_keeps_checkpoint_keys() -> None:
    plain = ImageClassifier(ModelConfig(arch="resnet_demo"), OptimConfig(), num_classes=5)
    compiled = ImageClassifier(ModelConfig(arch="resnet_demo", compile=True), OptimConfig(), num_classes=5)
    assert list(compiled.state_dict()) == list(plain.state_dict()), "compile must not add or rename keys"
    compiled.load_state_dict(plain.state_dict())  # strict: a run resumes after toggling compile


def test_batches_take_the_models_memory_format_and_dtype() -> None:
    seen: list[torch.Tensor] = []
    module = ImageClassifier(ModelConfig(arch="resnet_demo"), OptimConfig(), num_classes=5).eval()
    module.model.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)  # as FFCV/wds hand them over
    module(x)
    assert seen[-1].is_contiguous() and not seen[-1].is_contiguous(memory_format=torch.channels_last)
    module.to(torch.bfloat16)  # what Lightning does under bf16-true, after which a float32 batch arrives
    module(torch.randn(2, 3, 32, 32))
    assert seen[-1].dtype == torch.bfloat16


def test_uint8_normalisation_keeps_mean_and_std_on_the_device_once() -> None:
    from datamodules.loaders import augment

    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    first = augment.normalize_batch(images)
    cached = augment._NORM_CACHE[images.device]
    augment.normalize_batch(images)
    assert augment._NORM_CACHE[images.device][0] is cached[0], "mean/std must not be rebuilt per batch"
    expected = (images.float() / 255 - torch.tensor(augment.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        augment.IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(first, expected, atol=1e-5)


def test_cuda_runs_use_cudnn_autotuning_and_tf32(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.training.train import configure_cuda

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    previous = torch.get_float32_matmul_precision()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    try:
        configure_cuda()
        assert torch.backends.cudnn.benchmark is True
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(previous)
