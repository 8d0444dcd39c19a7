"""The LightningModule's knobs: schedule shape, optimizers, channels_last, precision and the train benchmark."""

from __future__ import annotations

import pytest
import torch

from pipeline.classifier import ImageClassifier
from pipeline.config import ModelConfig, OptimConfig
from pipeline.train import resolve_precision


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


def test_precision_auto_is_bf16_on_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_precision("auto") == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto") == "32-true"
    assert resolve_precision("16-mixed") == "16-mixed"


@pytest.mark.usefixtures("fashion_root")
def test_bench_train_prints_both_loops_and_the_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.benchmark import bench_train

    result = bench_train(steps=4, warmup=2, repeats=1, batch_size=32)
    out = capsys.readouterr().out
    assert "plain PyTorch" in out and "Lightning" in out and "Lightning / plain =" in out
    assert result["plain_ms_per_step"] > 0 and result["lightning_ms_per_step"] > 0
    assert result["overhead"] == pytest.approx(result["lightning_ms_per_step"] / result["plain_ms_per_step"] - 1)
