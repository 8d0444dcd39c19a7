"""FFCV-style progressive resizing: FFCV's own rule, the loaders that crop each epoch at its resolution, an exact
resume, and one-line errors for what cannot work."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from datamodules import build_datamodule
from datamodules.errors import UserError
from datamodules.progressive import progressive_schedule, stretched
from pipeline.training.resume import Preempted, PreemptionHandler
from pipeline.training.train import train_cell
from tests.conftest import cell_config
from tests.test_preemption import _SignalSelf, own_signals  # noqa: F401  (a fixture)


def ffcv_get_resolution(epoch: int, min_res: int, max_res: int, end_ramp: int, start_ramp: int) -> int:
    """libffcv/ffcv-imagenet train_imagenet.py's get_resolution, as published (the oracle)."""
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    interp = np.interp([epoch], [start_ramp, end_ramp], [min_res, max_res])
    return int(np.round(interp[0] / 32)) * 32


def test_the_ramp_is_ffcvs_and_a_budget_scales_it_as_ffcvs_configs_do() -> None:
    spec = {"start": 160, "start_epoch": 65, "end_epoch": 76, "step": 32}
    assert progressive_schedule(spec, 88, 192) == [ffcv_get_resolution(e, 160, 192, 76, 65) for e in range(88)]
    # rn50_configs/rn50_{16..56}_epochs.yaml: (start_ramp, end_ramp) of each length, published
    published = {16: (11, 13), 24: (17, 20), 32: (23, 27), 40: (29, 34), 56: (41, 48)}
    for epochs, (first, last) in published.items():
        short = stretched(spec, epochs / 88)
        assert (short["start_epoch"], short["end_epoch"]) == (first, last), epochs


class _Shapes(L.Callback):
    """The image size of every training and validation batch the model saw, per epoch."""

    def __init__(self) -> None:
        self.train: dict[int, set[int]] = {}
        self.val: set[int] = set()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.train.setdefault(trainer.current_epoch, set()).add(batch[0].shape[-1])  # after the batch transform

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        self.val.add(batch[0].shape[-1])


PROGRESSIVE = {"start": 32, "start_epoch": 0, "end_epoch": 2}  # 32 px in epoch 0, 64 px from epoch 1 (rounded)


def test_an_in_memory_cell_trains_each_epoch_at_its_resolution_and_validates_at_the_final_one(
        tmp_path: Path) -> None:
    shapes = _Shapes()
    cfg = cell_config(tmp_path / "cell", data={"image_size": 64, "progressive": PROGRESSIVE},
                      trainer={"max_epochs": 3})
    result = train_cell(cfg, callbacks=[shapes])
    assert shapes.train == {0: {32}, 1: {64}, 2: {64}}  # FFCV's rule: epoch 1 is 48 px, rounded to 64
    assert shapes.val == {64}
    assert result["schedule"]["progressive"]["per_epoch"] == [32, 64, 64]
    by_res = result["cost"]["by_resolution"]
    assert by_res["32"]["images"] == 512 and by_res["64"]["images"] == 1024  # the cost split by resolution


def test_a_progressive_cell_resumed_mid_epoch_ends_like_an_uninterrupted_one(tmp_path: Path,
                                                                            own_signals: None) -> None:  # noqa: F811
    def cfg(run: Path) -> Any:
        return cell_config(run, data={"image_size": 64, "progressive": PROGRESSIVE}, trainer={"max_epochs": 3})

    train_cell(cfg(tmp_path / "reference"))
    run = tmp_path / "resumed"
    handler = PreemptionHandler(run / "checkpoints" / "preempt.ckpt", signals=(signal.SIGUSR1,))
    handler.install()
    with pytest.raises(Preempted):  # step 11: in epoch 1 (8 steps per epoch), the first epoch at 64 px
        train_cell(cfg(run), callbacks=[handler, _SignalSelf(11, signal.SIGUSR1)])
    shapes = _Shapes()
    result = train_cell(cfg(run), callbacks=[shapes])
    assert result["resumed"] is True and result["steps"] == 24
    assert shapes.train == {1: {64}, 2: {64}}
    reference, resumed = load_file(str(tmp_path / "reference" / "weights.safetensors")), load_file(
        str(run / "weights.safetensors"))
    for key, value in reference.items():
        assert torch.equal(value, resumed[key]), f"{key} differs from the uninterrupted run"
    cost = result["cost"]
    assert cost["attempts"] == 2 and cost["by_resolution"]["32"]["images"] == 512
    assert cost["by_resolution"]["64"]["images"] == 1024  # 3 batches before the stop + 13 after, no double count


def test_the_wds_loader_crops_each_epoch_at_its_resolution(tmp_path: Path) -> None:
    from test_data_wds import _shards

    root = _shards(tmp_path, classes=4, train=8, val=2)
    dm = build_datamodule("image_folder", loader="wds", shards=str(root), split=None, half="B", image_size=32,
                          batch_size=4, num_workers=2, shuffle_buffer=8,
                          progressive={"start": 16, "start_epoch": 0, "end_epoch": 2, "step": 16})
    dm.setup()
    for epoch, size in ((0, 16), (1, 32), (2, 32)):
        loader = dm.train_dataloader()
        loader._context = lambda e=epoch: (e, 0, 1)  # type: ignore[attr-defined]
        assert {x.shape[-1] for x, _, _ in loader} == {size}, epoch
    assert {x.shape[-1] for x, _, _ in dm.val_dataloader()} == {32}
    dm.position.set(0, 3)  # a resume in epoch 0 continues at epoch 0's resolution
    loader = dm.train_dataloader()
    loader._context = lambda: (0, 0, 1)  # type: ignore[attr-defined]
    assert {x.shape[-1] for x, _, _ in loader} == {16}


@pytest.mark.parametrize("data, trainer, message", [
    ({"image_size": 64, "progressive": {"start": 32, "end": 96, "start_epoch": 0, "end_epoch": 2}}, {},
     r"data.progressive.end \(96\) must equal data.image_size \(64\)"),
    ({"image_size": 64, "progressive": {"start": 40, "start_epoch": 0, "end_epoch": 2}}, {},
     r"data.progressive.start \(40\) is not a multiple of data.progressive.step \(32\)"),
    ({"image_size": 64, "progressive": {"start": 32, "start_epoch": 2, "end_epoch": 2}}, {},
     r"start_epoch \(2\) must be >= 0 and below end_epoch \(2\)"),
    ({"image_size": 64, "progressive": {"start": 32, "start_epoch": 0, "end_epoch": 5}}, {"max_epochs": 3},
     r"end_epoch \(5\) is past trainer.max_epochs \(3\)"),
    ({"image_size": 64, "progressive": {"start_epoch": 0, "end_epoch": 2}}, {}, r"data.progressive.start is required"),
])
def test_a_progressive_schedule_that_cannot_work_is_one_line_before_the_run_dir(
        tmp_path: Path, data: dict[str, Any], trainer: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message) as err:
        train_cell(cell_config(tmp_path / "cell", data=data, trainer=trainer))
    assert "\n" not in str(err.value) and not (tmp_path / "cell").exists()


@pytest.mark.parametrize("loader", ["ffcv", "folder"])
def test_loaders_with_a_fixed_crop_size_refuse_progressive_resizing(tmp_path: Path, loader: str) -> None:
    with pytest.raises(UserError, match=f"data.progressive is not supported by loader {loader}") as err:
        build_datamodule("image_folder", loader=loader, root=str(tmp_path), shards=str(tmp_path), image_size=64,
                          progressive={"start": 32, "start_epoch": 0, "end_epoch": 2})
    assert "\n" not in str(err.value)
