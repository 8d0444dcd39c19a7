"""Nothing a cell changes process-wide survives it in a bundle worker: RNGs, environment, torch flags, threads,
signal handlers, warning filters, its log redirection; and a worker's open files and memory stay flat over 20 real
cells."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.training import bundle
from tests.conftest import REPO
from tests.test_bundle import ENV, write_cell


def _snapshot() -> dict[str, object]:
    return {
        "env": dict(os.environ), "python": random.random(), "numpy": float(np.random.rand()),
        "torch": float(torch.rand(1)), "flags": bundle.torch_flags(), "threads": torch.get_num_threads(),
        "dtype": torch.get_default_dtype(), "term": signal.getsignal(signal.SIGTERM),
        "mask": signal.pthread_sigmask(signal.SIG_BLOCK, []), "filters": list(warnings.filters),
        "fds": bundle.open_fds(),
    }


def _meddle() -> int:
    """What a careless cell might do to the process (Lightning and libraries do several of these)."""
    os.environ["PL_GLOBAL_SEED"] = "123"
    os.environ.pop("HOME", None)
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("medium")
    torch.set_num_threads(max(1, torch.get_num_threads() + 1))
    torch.set_default_dtype(torch.float64)
    signal.signal(signal.SIGTERM, lambda *a: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    warnings.simplefilter("ignore")
    print("cell output")
    raise RuntimeError("and then it crashed")


def test_a_cell_leaves_no_process_state_behind(tmp_path: Path) -> None:
    for seed_from in (random.seed, np.random.seed, torch.manual_seed):
        seed_from(11)
    before = _snapshot()
    for seed_from in (random.seed, np.random.seed, torch.manual_seed):
        seed_from(11)
    log = tmp_path / "cell.log"
    assert bundle.run_isolated(_meddle, log) == 1  # the crash is the cell's exit status, not the worker's
    after = _snapshot()
    assert after == before
    text = log.read_text()
    assert "cell output" in text and "RuntimeError: and then it crashed" in text


@pytest.mark.slow
def test_twenty_cells_in_one_worker_keep_open_files_and_memory_flat(fashion_root: Path, tmp_path: Path) -> None:
    tiny = {"max_train_samples": 256, "max_val_samples": 128}
    configs = [write_cell(tmp_path / f"c{i:02d}.yaml", tmp_path / f"c{i:02d}", seed=i, data=tiny,
                          model={"arch": "resnet_demo" if i % 2 else "convnext_demo"}) for i in range(20)]
    proc = subprocess.run([sys.executable, "-m", "launch.worker.bundle", "--log-dir", str(tmp_path / "logs"),
                           *map(str, configs)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = [(int(fds), float(rss)) for fds, rss in
             re.findall(r"exit 0 \(open fds (\d+), rss ([\d.]+) MiB\)", proc.stderr)]
    assert len(stats) == 20
    (fds_first, rss_first), (fds_last, rss_last) = stats[0], stats[-1]
    assert fds_last == fds_first, f"open files grew from {fds_first} to {fds_last} over 20 cells"
    assert rss_last <= 1.10 * rss_first, f"RSS grew from {rss_first:.0f} to {rss_last:.0f} MiB over 20 cells"
