"""The malloc settings of training processes (pipeline.training.allocator): freed tensor memory is reused instead
of unmapped and faulted in again, in a bundle worker as in a lone process, without changing a bit of a cell's
outcome; an allocator the user chose is left alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.training.allocator import user_chose_allocator
from tests.conftest import REPO
from tests.test_bundle import ENV, alone, outcome, write_cell

# 40 MB tensors, allocated and freed 8 times after 16 to warm up: above the 32 MiB that glibc's own mmap threshold never passes
FAULTS = """
import gc, json, resource, sys
entry = sys.argv[1]
if entry == "worker":
    from launch.worker.bundle import Worker
    Worker()
from pipeline.training.allocator import tune_malloc
applied = tune_malloc() if entry == "tuned" else None
import torch
for _ in range(16):  # the first 5-9 grow the heap (measured): an aligned block fits a freed one only later
    x = torch.ones(10_000_000); del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    x = torch.ones(10_000_000); del x
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults": faults, "frozen": gc.get_freeze_count(), "tracked": len(gc.get_objects())}))
"""


def page_faults(entry: str, **env: str) -> dict[str, int | bool | None]:
    out = subprocess.run([sys.executable, "-c", FAULTS, entry], cwd=REPO, env={**ENV, **env}, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc and its page-fault counts: Linux")
def test_training_processes_reuse_freed_tensor_memory_instead_of_faulting_it_in_again() -> None:
    pages = 40_000_000 // os.sysconf("SC_PAGE_SIZE")
    default = page_faults("plain")
    assert default["faults"] > 4 * pages, "glibc's default now keeps 40 MB blocks: this test shows nothing here"
    for entry in ("tuned", "worker"):  # tune_malloc itself, and a bundle worker (which calls it first)
        tuned = page_faults(entry)
        assert tuned["faults"] < pages, f"{entry}: {tuned['faults']} page faults for reused memory " \
                                        f"(default malloc: {default['faults']})"
        assert tuned["applied"] in (True, None)
    # MKF_MALLOC_TUNING=0 (or an allocator the user preloads) gives glibc's default back
    off = page_faults("tuned", MKF_MALLOC_TUNING="0")
    assert off["applied"] is False and off["faults"] > 4 * pages


def test_a_worker_keeps_its_imports_out_of_every_garbage_collection() -> None:
    # release() collects after every cell: it must walk the cell's objects, not torch's and Lightning's modules
    stats = page_faults("worker")
    assert stats["frozen"] > 100_000, "the worker froze nothing: each gc.collect() walks every imported object"
    assert stats["tracked"] < stats["frozen"] // 10


def test_an_allocator_the_user_chose_is_left_alone() -> None:
    assert not user_chose_allocator({"PATH": "/usr/bin"})
    assert user_chose_allocator({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"})
    assert user_chose_allocator({"LD_PRELOAD": "libtcmalloc_minimal.so.4"})
    assert user_chose_allocator({"MALLOC_ARENA_MAX": "2"})
    assert user_chose_allocator({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"})
    assert user_chose_allocator({"MKF_MALLOC_TUNING": "0"})
    assert not user_chose_allocator({"LD_PRELOAD": "libfakeroot.so"})


@pytest.mark.slow
def test_a_cell_trains_to_the_same_bit_with_and_without_the_malloc_settings(fashion_root: Path,
                                                                            tmp_path: Path) -> None:
    # resnet_demo at batch 128: 33.5 MB activations, the blocks the settings move from mmap into the heap
    for name, env in (("default", {"MKF_MALLOC_TUNING": "0"}), ("tuned", {})):
        config = write_cell(tmp_path / f"{name}.yaml", tmp_path / name, model={"arch": "resnet_demo"},
                            data={"batch_size": 128})
        alone(config, tmp_path / f"{name}.log", env=env)
    got, want = outcome(tmp_path / "tuned"), outcome(tmp_path / "default")
    assert got["weights"] == want["weights"], "weights differ with the malloc settings"
    assert got == want, "top-1 / metrics.csv differ with the malloc settings"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_ranks_with_loader_workers_train_to_the_same_bit_with_and_without_the_malloc_settings(
        fashion_root: Path, tmp_path: Path) -> None:
    # where the settings travel: Lightning starts rank 1 as a new `mkf train` (which tunes again), and each rank's
    # loader workers are forked from it (they inherit the heap and its settings)
    for name, env in (("default", {"MKF_MALLOC_TUNING": "0"}), ("tuned", {})):
        config = write_cell(tmp_path / f"{name}.yaml", tmp_path / name, model={"arch": "resnet_demo"},
                            data={"batch_size": 128, "num_workers": 2},
                            trainer={"devices": 2, "strategy": "ddp"})
        alone(config, tmp_path / f"{name}.log", env={**env, "MASTER_ADDR": "127.0.0.1"})
    got, want = outcome(tmp_path / "tuned"), outcome(tmp_path / "default")
    assert json.loads((tmp_path / "tuned" / "result.json").read_text())["world_size"] == 2
    assert got["weights"] == want["weights"], "weights differ with the malloc settings (2 ranks, 2 workers each)"
    assert got == want, "top-1 / metrics.csv differ with the malloc settings (2 ranks, 2 workers each)"
