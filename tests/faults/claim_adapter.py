"""One rank of a multi-rank cell deciding, at the same moment as the job's other ranks, whether it trains a cell:
the one place the fault harness calls the project's Python API, because no command runs just this step.

    python tests/faults/claim_adapter.py --root DIR --rank R --ranks N --trials T --out FILE

Every rank carries the same job's Slurm ids (set by the harness: SLURM_JOB_ID, SLURM_ARRAY_JOB_ID,
SLURM_ARRAY_TASK_ID, SLURM_PROCID = R, SLURM_RESTART_COUNT). Per trial k the N ranks meet at a file barrier, then
all start the cell ``DIR/trial-k/cell`` at once; then ranks 1.. end their part, then rank 0 ends the cell. A rank
records its decision ("train", "finished", "deferred"), the exception it died of, and every write it made under
``DIR/trial-k`` while starting or ending (an audit hook: open for writing, rename/replace, remove), as JSON lines
in FILE.

The interface, whichever the code under test has:

- ``launch.worker.lifecycle.start_rank(run_dir) -> str`` ("train" | "finished" | "deferred") and
  ``launch.worker.lifecycle.end_rank(run_dir, outcome)``: the lifecycle the fixed code exposes (rank 0 claims;
  the other ranks never write or release the claim);
- else ``launch.store.claim(run_dir) -> Claim | None`` and ``launch.store.release(claim)``: what every rank of a
  Slurm step calls today (through ``run_once``): a claim is "train", None is "deferred".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any


def lifecycle() -> tuple[str, Callable[[str], str], Callable[[str, str], None]]:
    try:
        from launch.worker import lifecycle as lc  # the fixed code's interface
    except ImportError:
        lc = None
    if lc is not None and hasattr(lc, "start_rank") and hasattr(lc, "end_rank"):
        return "launch.worker.lifecycle", lc.start_rank, lc.end_rank
    from launch import store  # today's: every rank claims

    held: dict[str, Any] = {}

    def start(run_dir: str) -> str:
        claim = store.claim(run_dir)
        held[run_dir] = claim
        return "train" if claim is not None else "deferred"

    def end(run_dir: str, outcome: str) -> None:
        store.release(held.pop(run_dir, None))

    return "launch.store", start, end


class Writes:
    """An audit hook: the paths under ``root`` this process writes, renames or removes while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.root = ""
        self.hits: list[str] = []
        sys.addaudithook(self.hook)

    def _note(self, event: str, path: Any) -> None:
        if isinstance(path, bytes):
            path = path.decode(errors="replace")
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if isinstance(path, str) and os.path.abspath(path).startswith(self.root):
            self.hits.append(f"{event} {os.path.relpath(os.path.abspath(path), self.root)}")

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.on:
            return
        if event == "open":
            path, mode, flags = (list(args) + [None, None, None])[:3]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
            if writes:
                self._note("write", path)
        elif event in ("os.rename", "os.replace"):
            self._note("rename", args[0])
            self._note("rename-to", args[1])
        elif event in ("os.remove", "os.unlink", "os.rmdir", "os.truncate"):
            self._note(event.split(".")[1], args[0])


def barrier(sync: Path, name: str, rank: int, ranks: int, timeout: float = 60.0) -> None:
    folder = sync / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(rank)).touch()
    deadline = time.monotonic() + timeout
    while len(os.listdir(folder)) < ranks:
        if time.monotonic() > deadline:
            raise TimeoutError(f"barrier {name}: {len(os.listdir(folder))} of {ranks} ranks after {timeout:.0f} s")
        time.sleep(0.001)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--ranks", type=int, required=True)
    p.add_argument("--trials", type=int, required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    root = Path(args.root).absolute()
    sync = root / "sync"
    rank = args.rank
    writes = Writes()
    out = open(args.out, "a", buffering=1)  # noqa: SIM115  (opened before the hook watches anything)
    try:
        api, start, end = lifecycle()
    except Exception as exc:
        out.write(json.dumps({"rank": rank, "trial": -1, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
        return 1
    for trial in range(args.trials):
        trial_dir = root / f"trial-{trial}"
        run_dir = str(trial_dir / "cell")
        entry: dict[str, Any] = {"rank": rank, "trial": trial, "api": api, "decision": None, "error": None}
        barrier(sync, f"{trial}-go", rank, args.ranks)
        writes.root, writes.hits, writes.on = str(trial_dir), [], rank != 0
        try:
            entry["decision"] = start(run_dir)
        except BaseException as exc:  # a rank that raises here crashes its step (srun --kill-on-bad-exit)
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["trace"] = traceback.format_exc(limit=4)[-800:]
        writes.on = False
        entry["start_writes"] = list(writes.hits)
        barrier(sync, f"{trial}-started", rank, args.ranks)
        if rank != 0:
            writes.hits, writes.on = [], True
            try:
                if entry["decision"] == "train":
                    end(run_dir, "finished")
            except BaseException as exc:
                entry["error"] = entry["error"] or f"end: {type(exc).__name__}: {exc}"
            writes.on = False
            entry["end_writes"] = list(writes.hits)
        barrier(sync, f"{trial}-others-ended", rank, args.ranks)
        if rank == 0:
            try:
                if entry["decision"] == "train":
                    end(run_dir, "finished")
            except BaseException as exc:
                entry["error"] = entry["error"] or f"end: {type(exc).__name__}: {exc}"
        barrier(sync, f"{trial}-done", rank, args.ranks)
        out.write(json.dumps(entry) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
