"""What a run shows in W&B: read back from a real offline run's transaction log, not from a mock."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest

from pipeline.training.train import train_cell
from tests.conftest import cell_config

pytestmark = pytest.mark.usefixtures("fashion_root")


def _records(path: Path) -> Iterator[bytes]:
    """Records of a W&B transaction log (``run-*.wandb``): a 7-byte header, then LevelDB-log blocks of 32 KiB.

    wandb >= 0.18 no longer ships a Python reader; the format is LevelDB's log format with W&B's own header.
    """
    data = path.read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B", f"{path} is not a W&B transaction log"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:  # FULL
            yield chunk
        elif kind == 2:  # FIRST
            pending = chunk
        elif kind == 3:  # MIDDLE
            pending += chunk
        elif kind == 4:  # LAST
            yield pending + chunk


def read_offline_run(run_dir: Path) -> tuple[set[str], dict[str, str]]:
    """(history keys, summary values as JSON) of the cell's single offline W&B run."""
    from wandb.proto import wandb_internal_pb2 as pb

    [log] = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    keys: set[str] = set()
    summary: dict[str, str] = {}
    for raw in _records(log):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            keys.update(item.key or "/".join(item.nested_key) for item in record.history.item)
        elif kind == "summary":
            summary.update({item.key or "/".join(item.nested_key): item.value_json for item in record.summary.update})
    return keys, summary


def test_offline_wandb_run_holds_lr_throughput_data_wait_memory_and_parameter_counts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "cell"
    train_cell(cell_config(run, wandb={"enabled": True, "project": "mkf-test"}, labels={"cell_id": "mon123"},
                           optim={"layer_decay": 0.8}))
    import wandb

    wandb.finish()
    wandb.teardown()  # stop the W&B service: it flushes the transaction log (a `mkf train` process does at exit)
    keys, summary = read_offline_run(run)
    lr_keys = {k for k in keys if k.startswith("lr-AdamW/pg")}
    assert len(lr_keys) > 2, f"one learning rate per layer-decay group, got {sorted(lr_keys)}"
    for key in ("perf/step_time_s", "perf/data_wait_share", "perf/images_per_s_device", "perf/images_per_s",
                "perf/peak_host_memory_gb", "perf/epoch_time_s", "train/loss", "val/top1"):
        assert key in keys, f"{key} missing from the W&B history ({sorted(keys)})"
    assert int(summary["params/trainable"]) > 100_000 and int(summary["params/frozen"]) == 0


class _WallClock(L.Callback):
    """An independent reference: the wall time at the end of every training batch, and a fixed data wait.

    Listed before the monitor (launcher callbacks come first), so its sleep in ``on_train_batch_start`` is time
    the monitor must count as waiting for data, and its clock brackets the same batches the monitor's window does.
    """

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self.batch_end: dict[int, float] = {}
        self.first_start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        time.sleep(self.wait_s)  # a slow loader, as the training loop sees it
        if batch_idx == 0:
            self.first_start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.batch_end[trainer.global_step] = time.perf_counter()


def test_monitoring_writes_on_logger_steps_only_and_images_per_s_matches_a_wall_clock(tmp_path: Path) -> None:
    """images/s and the data-wait share against a clock of our own, not against the monitor's own formula: a
    window that dropped the data wait, counted the wrong batches or used the global batch would be off by
    far more than the 10% allowed (both clocks bracket the same 4 batches; they differ by callback order only)."""
    import csv

    run = tmp_path / "cell"
    wait = 0.05
    clock = _WallClock(wait)
    train_cell(cell_config(run, trainer={"log_every_n_steps": 4}), callbacks=[clock])  # logger steps 4 and 8
    with (run / "metrics.csv").open() as f:
        rows = {int(r["step"]): r for r in csv.DictReader(f) if r.get("perf/step_time_s")}
    assert sorted(rows) == [4, 8]
    windows = {4: clock.batch_end[4] - clock.first_start, 8: clock.batch_end[8] - clock.batch_end[4]}
    for step, seconds in windows.items():
        row = rows[step]
        assert float(row["perf/images_per_s"]) == pytest.approx(64 * 4 / seconds, rel=0.1), step
        assert float(row["perf/images_per_s_device"]) == pytest.approx(64 * 4 / seconds, rel=0.1), step
        assert float(row["perf/step_time_s"]) == pytest.approx(seconds / 4, rel=0.1), step
    # window 8 holds 4 sleeps of `wait` between batches (window 4 only 3: its first wait precedes the window)
    share = float(rows[8]["perf/data_wait_share"])
    assert 0.9 * 4 * wait / windows[8] <= share < 1.0, (share, windows[8])
