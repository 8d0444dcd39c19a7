"""Per-rank randomness through real 2-rank (gloo) fits of a cell with drop path, Mixup/CutMix and random erasing.

Every rank must draw its own masks and boxes (a seed shared by all ranks gives identical drop-path masks and Mixup
boxes on every GPU: N ranks regularise like one), while the model starts identical on every rank; and a run
resumed mid-epoch must draw exactly what the uninterrupted run drew from the checkpointed step on.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from pipeline.config import CellConfig
from pipeline.training.train import train_cell
from tests.test_checkpoint_policy import _CrashAt, free_port, join_ranks, leave_ranks, two_rank_cell


def _rng_digest() -> str:
    """The state of every generator the training step draws from (torch: drop path, erasing, flips; NumPy and
    Python: Mixup/CutMix), without drawing from them."""
    h = hashlib.sha256(torch.get_rng_state().numpy().tobytes())
    _, keys, pos, *_ = np.random.get_state()
    h.update(keys.tobytes() + str(pos).encode() + repr(random.getstate()).encode())
    return h.hexdigest()[:16]


class _Probe(L.Callback):
    def __init__(self) -> None:
        self.draws: dict[int, str] = {}
        self.init = ""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # before DDP broadcasts rank 0's weights: each rank's own build
        self.init = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in pl_module.parameters())).hexdigest()

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.draws[trainer.global_step] = _rng_digest()


def _rank(rank: int, world: int, port: int, cfg: CellConfig, out: str, crash_at: int | None) -> None:
    join_ranks(rank, world, port)
    probe = _Probe()
    try:
        train_cell(cfg, callbacks=[probe] + ([_CrashAt(crash_at)] if crash_at is not None else []))
    except RuntimeError as exc:
        assert "crash" in str(exc)
    finally:
        leave_ranks()
    Path(out, f"rank{rank}.json").write_text(json.dumps({"draws": probe.draws, "init": probe.init}))


def _run(cfg: CellConfig, out: Path, crash_at: int | None = None) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(_rank, args=(2, free_port(), cfg, str(out), crash_at), nprocs=2, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ranks_draw_apart_start_alike_and_repeat_their_draws_after_a_resume(tmp_path: Path) -> None:
    recipe = {"data": {"batch_size": 32}, "model": {"arch": "convnext_demo", "drop_path_rate": 0.1},
              "augment": {"mixup": 0.8, "cutmix": 1.0, "reprob": 0.25},
              "trainer": {"checkpoint_every_n_steps": 3}}  # 8 steps per rank
    whole = _run(two_rank_cell(tmp_path / "whole", **recipe), tmp_path / "a")
    assert whole[0]["init"] == whole[1]["init"], "model init must be identical on every rank"
    steps = sorted(whole[0]["draws"], key=int)
    assert len(steps) == 8
    for step in steps:
        assert whole[0]["draws"][step] != whole[1]["draws"][step], f"ranks share their random streams at {step}"
    cfg = two_rank_cell(tmp_path / "cut", **recipe)
    _run(cfg, tmp_path / "b", crash_at=5)  # last.ckpt at step 3, then a crash mid-epoch
    resumed = _run(cfg, tmp_path / "c")
    for rank in (0, 1):
        after = resumed[rank]["draws"]
        assert sorted(after, key=int) == [str(s) for s in range(3, 8)]
        assert after == {s: whole[rank]["draws"][s] for s in after}, f"rank {rank} drew differently after resume"
