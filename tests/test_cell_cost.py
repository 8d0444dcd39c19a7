"""Every finished cell records what it cost (result.json ``cost``, per attempt in cost.json); a preempted and
resumed cell reports the sum of its attempts."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from pipeline.results.costs import COST_FILE, sum_attempts
from pipeline.training.resume import Preempted, PreemptionHandler
from pipeline.training.train import train_cell
from tests.conftest import cell_config
from tests.test_preemption import _SignalSelf, own_signals  # noqa: F401  (a fixture)


def test_a_finished_cell_records_time_images_validation_memory_and_core_hours(tmp_path: Path) -> None:
    run = tmp_path / "cell"
    result = train_cell(cell_config(run, trainer={"max_epochs": 2}, model={"arch": "convnext_demo",
                                                                          "ema": {"decay": 0.9}}))
    cost = result["cost"]
    assert (cost["device"], cost["device_type"], cost["devices"], cost["attempts"]) == ("cpu", "cpu", 1, 1)
    assert cost["train_images"] == result["steps"] * 64 == 1024  # 512 images x 2 epochs, counted by the monitor
    assert cost["val_passes"] == 2 and cost["val_images"] == 2 * result["val_samples"]
    assert cost["val_forwards"] == 2 * cost["val_images"]  # the EMA copy is validated too
    assert 0 < cost["train_s"] and 0 < cost["val_s"] and cost["train_s"] + cost["val_s"] <= cost["wall_s"]
    assert cost["images_per_s"] == pytest.approx(cost["train_images"] / cost["train_s"], rel=1e-3)
    assert 0 <= cost["data_wait_share"] < 1
    assert cost["gpu_hours"] is None and cost["peak_device_memory_gb"] is None and cost["peak_host_rss_gb"] > 0
    assert cost["cpu_core_hours"] == pytest.approx(cost["wall_s"] * cost["threads"] / 3600, rel=1e-2)
    assert cost["by_resolution"]["32"]["images"] == 1024
    attempts = json.loads((run / COST_FILE).read_text())["attempts"]
    assert [a["status"] for a in attempts] == ["finished"] and sum_attempts(attempts) == cost


def test_a_preempted_and_resumed_cell_reports_the_sum_of_its_attempts(tmp_path: Path,
                                                                      own_signals: None) -> None:  # noqa: F811
    run = tmp_path / "cell"
    cfg = cell_config(run, trainer={"max_epochs": 3})
    handler = PreemptionHandler(run / "checkpoints" / "preempt.ckpt", signals=(signal.SIGUSR1,))
    handler.install()
    with pytest.raises(Preempted):
        train_cell(cfg, callbacks=[handler, _SignalSelf(13, signal.SIGUSR1)])  # in epoch 1 of 3
    first = json.loads((run / COST_FILE).read_text())["attempts"]
    assert [a["status"] for a in first] == ["preempted"]
    stopped_at = first[0]["steps"][1]
    assert first[0]["train_images"] == stopped_at * 64  # every batch the checkpoint holds, none after
    result = train_cell(cfg)
    attempts = json.loads((run / COST_FILE).read_text())["attempts"]
    assert [a["status"] for a in attempts] == ["preempted", "finished"]
    assert attempts[1]["steps"] == [stopped_at, 24]
    cost = result["cost"]
    assert cost["attempts"] == 2
    assert cost["train_images"] == 24 * 64  # both attempts, no batch counted twice or lost
    assert cost["wall_s"] == pytest.approx(sum(a["wall_s"] for a in attempts), abs=2e-3)
    assert cost["val_passes"] == 3  # epoch 0 in the first attempt, epochs 1 and 2 in the second
    assert cost["cpu_core_hours"] == pytest.approx(sum(a["cpu_core_hours"] for a in attempts), rel=1e-3)
