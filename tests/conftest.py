"""Shared fixtures: small, fast cell configs on real Fashion-MNIST, and the CI rule that skips are failures."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pipeline.models.zoo  # noqa: F401  (registers the demo and HorNet variants)
from datamodules.errors import UserError
from datamodules.sources.fashion_mnist import locate_fashion_mnist
from pipeline.config import CellConfig, from_dict

REQUIRE_ALL = os.environ.get("MKF_REQUIRE_ALL_TESTS") == "1"
REPO = Path(__file__).resolve().parents[1]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]):  # type: ignore[no-untyped-def]
    """In CI (MKF_REQUIRE_ALL_TESTS=1) a skipped test is a failure: CI runs as root and must run everything."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped and call.when in ("setup", "call"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {report.longrepr}"


@pytest.fixture(scope="session")
def fashion_root() -> Path:
    try:
        return locate_fashion_mnist(download=False)
    except UserError as exc:
        pytest.skip(f"Fashion-MNIST not installed ({exc}); `make test` installs it as root")


@pytest.fixture(scope="session")
def ffcv_installed() -> None:
    """FFCV present, else a skip at setup time (a module-level importorskip would be a collection skip, which
    escapes the CI rule above: a missing FFCV must fail CI)."""
    pytest.importorskip("ffcv", reason="FFCV is not installed (pip install '.[ffcv]'); `make test` installs it")


def cell_config(run_dir: Path, **sections: dict[str, Any]) -> CellConfig:
    """A cell that trains in a few seconds on CPU: convnext_demo, 512 Fashion-MNIST images, one epoch."""
    base: dict[str, Any] = {
        "run_dir": str(run_dir),
        "seed": 0,
        "data": {"split": {"kind": "random_halves", "seed": 0}, "half": "B", "batch_size": 64,
                 "max_train_samples": 512, "max_val_samples": 256},
        "model": {"arch": "convnext_demo"},
        "optim": {"lr": 0.004, "warmup_steps": 2},
        "trainer": {"max_epochs": 1, "progress_bar": False, "accelerator": "cpu", "devices": 1,
                    "log_every_n_steps": 2},
    }
    for key, value in sections.items():
        base[key] = {**base[key], **value} if isinstance(base.get(key), dict) and isinstance(value, dict) else value
    return from_dict(CellConfig, base)


def kill_once_checkpointed(cmd: list[str], checkpoint: Path, env: dict[str, str], cwd: Path = REPO) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``checkpoint`` exists (a crash with no warning), and check it died so."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "training ended before it could be killed"


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Path]:
    """A real Slurm (munged, slurmctld, slurmd n1 + n2 on 127.0.0.1) for the whole session; SLURM_CONF exported."""
    import shutil
    import subprocess

    missing = [b for b in ("slurmctld", "slurmd", "munged", "sbatch", "scontrol") if shutil.which(b) is None
               and not Path("/usr/sbin", b).exists()]
    if os.geteuid() != 0 or missing:
        pytest.skip(f"needs root and Debian's slurm-wlm + munge (missing: {missing or 'root'}); "
                    "`make test` installs them when run as root")
    import tempfile

    # not under pytest's tmp dir: that is private to root, and munged runs as the munge user
    cluster = Path(tempfile.mkdtemp(prefix="mkf-slurm-"))
    cluster.chmod(0o711)
    up = subprocess.run(["bash", str(REPO / "slurm/testcluster/up.sh"), str(cluster)], capture_output=True, text=True)
    if up.returncode != 0:
        pytest.fail(f"test cluster did not start: {up.stdout}{up.stderr}")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster / "slurm.conf")
    try:
        yield cluster
    finally:
        subprocess.run(["bash", str(REPO / "slurm/testcluster/down.sh"), str(cluster)], capture_output=True)
        shutil.rmtree(cluster, ignore_errors=True)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
