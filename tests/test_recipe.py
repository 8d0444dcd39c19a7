"""The ImageNet recipe's keys (timm's Mixup/CutMix, RandAugment, erasing, EMA, layer decay) and what they promise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from datamodules.errors import UserError
from pipeline.config import AugmentConfig, EmaConfig, ModelConfig, OptimConfig, dump_yaml, load_yaml, to_dict
from pipeline.training.classifier import ImageClassifier, TrainableEma
from pipeline.training.train import read_result, train_cell, validate_config
from tests.conftest import cell_config, kill_once_checkpointed

REPO = Path(__file__).resolve().parents[1]
RECIPE = {"rand_augment": "rand-m9-mstd0.5-inc1", "mixup": 0.8, "cutmix": 1.0, "reprob": 0.25}


def _freeze_first_stage(module: ImageClassifier) -> set[str]:
    frozen = {n for n, p in module.model.named_parameters() if n.startswith(("stem.", "stages.0."))}
    for name, p in module.model.named_parameters():
        p.requires_grad_(name not in frozen)
    return frozen


def test_layer_decay_groups_scale_lr_by_depth_and_leave_frozen_parameters_out() -> None:
    module = ImageClassifier(ModelConfig(arch="convnext_demo"), OptimConfig(lr=1.0, layer_decay=0.5), num_classes=5)
    frozen = _freeze_first_stage(module)
    optimizer, _ = module.configure_optimizers_plain(10)
    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    names = {id(p): n for n, p in module.model.named_parameters()}
    assert not any(names[i] in frozen for i in in_groups), "frozen parameters reached the optimizer"
    assert len(in_groups) == sum(1 for p in module.model.parameters() if p.requires_grad)
    lr_of = {names[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lr_of["head.fc.weight"] == pytest.approx(1.0)  # the last layer keeps the full lr
    assert lr_of["stages.1.blocks.0.conv_dw.weight"] < lr_of["stages.3.blocks.0.conv_dw.weight"] < 1.0


def test_ema_never_updates_frozen_parameters_and_averages_the_rest() -> None:
    module = ImageClassifier(ModelConfig(arch="convnext_demo", ema=EmaConfig(decay=0.5)), OptimConfig(), 5)
    model = module.model
    # the EMA copy is made at construction, after the transfer froze its units: freeze, then build the EMA
    frozen = _freeze_first_stage(module)
    ema = TrainableEma(model, EmaConfig(decay=0.5))
    assert not any(p.requires_grad for p in ema.module.parameters())
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # also the frozen ones: the EMA must not follow them
    ema.update(model)
    after = ema.module.state_dict()
    for name in frozen:
        assert torch.equal(after[name], before[name]), f"{name} is frozen but the EMA moved it"
    assert torch.allclose(after["head.fc.weight"], before["head.fc.weight"] + 0.5)  # decay 0.5: half the way


def test_mixup_cutmix_erasing_act_on_the_training_batch_only() -> None:
    torch.manual_seed(0)
    module = ImageClassifier(ModelConfig(arch="convnext_demo"), OptimConfig(label_smoothing=0.1), num_classes=5,
                             augment=AugmentConfig(mixup=0.8, cutmix=1.0, reprob=1.0))
    seen: list[torch.Tensor] = []
    module.model.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 5

    class _Trainer:
        log_every_n_steps = 1000
        global_step = 0

    module._trainer = _Trainer()  # type: ignore[assignment]  # training_step only reads log_every_n_steps
    loss = module.training_step((images.clone(), labels), 0)
    assert torch.isfinite(loss)
    assert not torch.equal(seen[-1], images), "the training batch was neither erased nor mixed"
    module.eval()
    module(images)
    assert torch.equal(seen[-1], images), "validation must see the images as they are"


def test_recipe_keys_fail_in_one_line(tmp_path: Path) -> None:
    for section, bad, match in [
        ("augment", {"mixup": 0.8}, "even data.batch_size"),
        ("augment", {"interpolation": "lanczos"}, "augment.interpolation"),
        ("augment", {"reprob": 1.5}, "augment.reprob"),
        ("optim", {"layer_decay": 1.5}, "optim.layer_decay"),
        ("trainer", {"gradient_clip_algorithm": "l2"}, "gradient_clip_algorithm"),
    ]:
        sections = {section: bad, **({"data": {"batch_size": 63}} if "mixup" in bad else {})}
        with pytest.raises(UserError, match=match):
            validate_config(cell_config(tmp_path / "c", **sections))
    with pytest.raises(UserError, match="augment.rand_augment"):
        from datamodules.loaders.augment import rand_augment

        rand_augment("rand-m9-mstd0.5-incl")


def test_ffcv_rejects_what_its_pipeline_cannot_do_in_one_line() -> None:
    from datamodules.loaders.ffcv import FFCVDataModule

    with pytest.raises(UserError, match="rand_augment is not supported by loader ffcv"):
        FFCVDataModule(shards="/nonexistent", rand_augment="rand-m9-mstd0.5-inc1")
    with pytest.raises(UserError, match="interpolation bicubic is not supported by loader ffcv"):
        FFCVDataModule(shards="/nonexistent", interpolation="bicubic")


@pytest.mark.usefixtures("fashion_root")
def test_rand_augment_on_fashion_mnist_changes_training_images_only() -> None:
    from datamodules.loaders.memory import FashionMNISTDataModule

    dm = FashionMNISTDataModule(max_train_samples=16, max_val_samples=16, rand_augment="rand-m9-mstd0.5-inc1")
    dm.setup()
    images, labels = dm.train_set.tensors  # type: ignore[union-attr]

    class _Trainer:
        training = True

    dm.trainer = _Trainer()  # type: ignore[assignment]
    out, out_labels = dm.on_before_batch_transfer((images, labels), 0)
    assert out.shape == images.shape and out.dtype == torch.uint8 and torch.equal(out_labels, labels)
    assert not torch.equal(out, images)
    _Trainer.training = False
    assert torch.equal(dm.on_before_batch_transfer((images, labels), 0)[0], images)


def test_recipe_files_load_as_cell_sections() -> None:
    from pipeline.config import CellConfig, from_dict

    for name in ("convnext_in1k", "resnet_in1k"):
        recipe = load_yaml(REPO / "configs" / "recipes" / f"{name}.yaml")
        assert set(recipe) == {"train"}
        cfg = from_dict(CellConfig, {**recipe["train"], "data": {"batch_size": 128}})
        validate_config(cfg)
        assert cfg.trainer.max_epochs in (300, 600)


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_root")
def test_killed_cell_with_the_recipe_on_resumes_to_the_same_model_and_ema(tmp_path: Path) -> None:
    """Mixup/CutMix, RandAugment, erasing and EMA all draw random numbers; a SIGKILL mid-epoch and a resume must
    still end with exactly the uninterrupted run's weights, model and EMA."""
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def command(name: str) -> list[str]:
        cfg = cell_config(tmp_path / name, data={"max_train_samples": 1024, "max_val_samples": 64},
                          trainer={"max_epochs": 2, "checkpoint_every_n_steps": 3}, augment=RECIPE,
                          model={"arch": "convnext_demo", "drop_path_rate": 0.1, "ema": {"decay": 0.9}})
        dump_yaml(to_dict(cfg), tmp_path / f"{name}.yaml")
        return [sys.executable, "-m", "launch.cli", "train", "--config", str(tmp_path / f"{name}.yaml")]

    subprocess.run(command("reference"), cwd=REPO, env=env, check=True, capture_output=True)
    run = tmp_path / "cell"
    cmd = command("cell")
    last = run / "checkpoints" / "last.ckpt"
    kill_once_checkpointed(cmd, last, env)
    step_at_kill = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 0 < step_at_kill < 32 and step_at_kill % 16 != 0, "the kill must land mid-epoch"
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
    result = read_result(run)
    assert result is not None and result["resumed"] is True and result["steps"] == 32
    for weights in ("weights.safetensors", "weights_ema.safetensors"):
        reference, resumed = load_file(str(tmp_path / "reference" / weights)), load_file(str(run / weights))
        for key, value in reference.items():
            assert torch.equal(value, resumed[key]), f"{weights}: {key} differs from the uninterrupted run"
    assert result["ema_top1"] == read_result(tmp_path / "reference")["ema_top1"]  # type: ignore[index]


@pytest.mark.usefixtures("fashion_root")
def test_cell_with_the_full_recipe_trains_and_writes_ema_weights(tmp_path: Path) -> None:
    result = train_cell(cell_config(tmp_path / "cell", augment=RECIPE,
                                    model={"arch": "convnext_demo", "ema": {"decay": 0.9}},
                                    optim={"layer_decay": 0.8, "warmup_epochs": 0.5},
                                    trainer={"gradient_clip_val": 1.0, "accumulate_grad_batches": 2}))
    assert result["steps"] == 4  # 8 batches, an optimizer step every 2
    assert 0.0 <= result["ema_top1"] <= 1.0 and 0.0 <= result["top1"] <= 1.0
    ema = load_file(str(tmp_path / "cell" / "weights_ema.safetensors"))
    model = load_file(str(tmp_path / "cell" / "weights.safetensors"))
    assert ema.keys() == model.keys() and not torch.equal(ema["head.fc.weight"], model["head.fc.weight"])


def test_folder_and_wds_decoders_apply_rand_augment_and_bicubic() -> None:
    import io

    import numpy as np
    from PIL import Image

    from datamodules.loaders.augment import (
        AugmentSpec,
        decode_train,
        seed_batch_rngs,
        torchvision_train_transform,
    )

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=90)
    plain = AugmentSpec(train_resolution=32)
    recipe = AugmentSpec(train_resolution=32, interpolation="bicubic", rand_augment="rand-m9-mstd0.5-inc1")
    for spec in (plain, recipe):
        out = torchvision_train_transform(spec)(photo)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    decoded = []
    for spec in (plain, recipe, recipe):
        seed_batch_rngs(7)  # what the wds loader does per batch: the same seed gives the same crop and ops
        image = decode_train(buf.getvalue(), spec)
        assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
        decoded.append(image)
    assert not torch.equal(decoded[0], decoded[1]), "RandAugment + bicubic changed nothing"
    assert torch.equal(decoded[1], decoded[2]), "the per-batch seed must make RandAugment reproducible"


def _image_tree(root: Path, per_class: int = 6) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for part in ("train", "val"):
        for cls in ("a", "b"):
            folder = root / part / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_folder_loader_with_workers_resumes_mid_epoch_with_the_same_augmented_images(tmp_path: Path) -> None:
    """RandAugment and crops in loader workers: batches after a mid-epoch resume equal the uninterrupted ones."""
    from datamodules.loaders.folder import ImageFolderDataModule

    root = _image_tree(tmp_path / "tree")

    def batches(skip: int) -> list[torch.Tensor]:
        dm = ImageFolderDataModule(root=str(root), split=None, half="B", image_size=16, batch_size=3, num_workers=2,
                                   rand_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic")
        dm.setup()
        dm.position.set(0, skip)
        return [images for images, _ in dm.train_dataloader()]

    full, resumed = batches(0), batches(2)
    assert len(full) == 4 and len(resumed) == 2
    for a, b in zip(full[2:], resumed, strict=True):
        assert torch.equal(a, b), "a resumed epoch must see the same augmented images"
    assert not torch.equal(full[0], full[1])
