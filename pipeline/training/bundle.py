"""Run many short cells in one long-lived process, each as if it were alone.

A demo cell spends about as long starting (importing torch, Lightning and timm, reading the data, building the
model) as training. A bundle pays the imports once per worker and keeps the decoded datasets in memory; the cells
themselves are untouched: each still goes through ``train_cell`` with its own config, seed, run directory, CSV log,
W&B run and checkpoints. What a bundle must add is isolation, so that cell k + 1 cannot tell that cell k ran
before it in the same process:

- process-wide state a cell may change is saved before it and put back after it (:class:`ProcessState`): the
  environment (``PL_GLOBAL_SEED`` and friends), every RNG, torch's global flags (deterministic algorithms, cuDNN,
  TF32, matmul precision, threads, default dtype), Lightning's rank, signal handlers and mask, warning filters;
- what a cell leaves open is closed after it (:func:`release`): its W&B run (the service process stays: after
  ``wandb.teardown()`` wandb 0.31 cannot start another run in the process), a process group,
  cyclic garbage; glibc is asked to return freed heap to the OS, so a worker's memory does not creep;
- a cell's output goes to its own log file at the file-descriptor level (:func:`cell_output`), so C/C++ code,
  Lightning's logging and subprocesses inherit it, not only ``print``.

The only state deliberately shared is read-only: the IDX arrays of Fashion-MNIST (decoded once per worker;
``np.frombuffer`` arrays are not writeable, and cells copy what they index). Results are bit-identical to a cell run
alone (tests/test_bundle.py). Scheduling, claims and attempts live in the launcher (``launch.worker.bundle``).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import random
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning  # noqa: F401  (imported before any cell: the warning filters it installs are everyone's)
import numpy as np
import torch

CELL_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


# ---- shared read-only data ----------------------------------------------------------------------------------
_IDX_CACHE: dict[tuple[str, int, int], np.ndarray] = {}


def share_datasets() -> None:
    """Decode each IDX file once per worker: cells reading the same dataset get the same read-only array.

    Patched where the in-memory datamodules look the reader up (``datamodules.loaders.memory.read_idx``), so no
    datamodule changes. Keyed by path, size and mtime: a file replaced on disk is read again.
    """
    from datamodules.loaders import memory

    if getattr(memory.read_idx, "_bundle_cached", False):
        return
    original = memory.read_idx

    def cached_read_idx(path: Path) -> np.ndarray:
        st = os.stat(path)
        key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
        if key not in _IDX_CACHE:
            array = original(path)
            array.flags.writeable = False  # shared between cells: nobody may write into it
            _IDX_CACHE[key] = array
        return _IDX_CACHE[key]

    cached_read_idx._bundle_cached = True  # type: ignore[attr-defined]
    memory.read_idx = cached_read_idx  # type: ignore[assignment]


# ---- process-wide state ---------------------------------------------------------------------------------------
class ProcessState:
    """Everything process-wide a cell may change, saved now and put back by :meth:`restore`."""

    def __init__(self) -> None:
        self.environ = dict(os.environ)
        self.python_rng = random.getstate()
        self.numpy_rng = np.random.get_state()
        self.torch_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        self.flags = torch_flags()
        self.num_threads = torch.get_num_threads()
        self.default_dtype = torch.get_default_dtype()
        self.handlers = {s: signal.getsignal(s) for s in CELL_SIGNALS}
        self.sigmask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        self.rank = _lightning_rank()

    def restore(self) -> None:
        os.environ.clear()
        os.environ.update(self.environ)
        random.setstate(self.python_rng)
        np.random.set_state(self.numpy_rng)
        torch.set_rng_state(self.torch_rng)
        if self.cuda_rng:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        set_torch_flags(self.flags)
        torch.set_num_threads(self.num_threads)
        torch.set_default_dtype(self.default_dtype)
        for signum, handler in self.handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, self.sigmask)
        _set_lightning_rank(self.rank)


def torch_flags() -> dict[str, Any]:
    """torch's global switches a Trainer or ``configure_cuda`` sets and never resets."""
    return {
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def set_torch_flags(flags: dict[str, Any]) -> None:
    torch.use_deterministic_algorithms(flags["deterministic"], warn_only=flags["deterministic_warn_only"])
    torch.backends.cudnn.benchmark = flags["cudnn_benchmark"]
    torch.backends.cudnn.deterministic = flags["cudnn_deterministic"]
    torch.backends.cudnn.allow_tf32 = flags["cudnn_allow_tf32"]
    torch.backends.cuda.matmul.allow_tf32 = flags["matmul_allow_tf32"]
    torch.set_float32_matmul_precision(flags["float32_matmul_precision"])


def _lightning_rank() -> int | None:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", None)


def _set_lightning_rank(rank: int | None) -> None:
    from lightning.fabric.utilities import rank_zero as fabric_rank_zero
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    if rank is not None:
        rank_zero_only.rank = rank
        fabric_rank_zero.rank_zero_only.rank = rank  # type: ignore[attr-defined]


def fresh_start_state(seed: int = 0) -> None:
    """What a new process would hold: default torch flags and every RNG seeded (each cell reseeds anyway)."""
    set_torch_flags(DEFAULT_FLAGS)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


DEFAULT_FLAGS = torch_flags()  # as this worker imported torch, before any cell ran


def freeze_imports() -> None:
    """Move every object alive now (the imported modules of torch, Lightning, timm: 0.52 million of them) out of
    the cyclic garbage collector's reach, for the rest of the worker's life.

    They never become garbage, yet every full collection walks them: :func:`release`'s ``gc.collect()`` took
    0.28 s per demo cell for nothing else, and the collector's own gen-2 passes during training walk them too.
    Objects a cell creates are still collected as before (``gc.freeze``; CPython >= 3.7).
    """
    gc.collect()
    gc.freeze()


# ---- what a cell leaves behind ----------------------------------------------------------------------------
def release() -> None:
    """Close what a cell opened process-wide, so the next one starts clean and memory does not creep."""
    wandb = sys.modules.get("wandb")
    if wandb is not None:
        with contextlib.suppress(Exception):
            if wandb.run is not None:
                wandb.finish()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    _malloc_trim()


def _malloc_trim() -> None:
    """Give glibc's freed arenas back to the OS (a no-op elsewhere): a worker's RSS stays that of one cell."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# ---- a cell's own log -------------------------------------------------------------------------------------
@contextlib.contextmanager
def cell_output(log: str | Path | None) -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``log`` (appended) for the cell, then back; None: leave them."""
    if log is None:
        yield
        return
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    streams = sys.stdout, sys.stderr
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        # Python's own streams too, in case they are not on fds 1 and 2 (a host that captures them, like pytest)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
            if stream not in streams:
                stream.close()
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def run_isolated(train: Callable[[], int], log: str | Path | None = None) -> int:
    """Run one cell (``train`` returns its exit code) in its own log, with the process state put back after.

    Any exception is the cell's failure, written to its log with the traceback; it never reaches the bundle, so
    the next cell still runs (``SystemExit`` too). ``KeyboardInterrupt`` still stops the worker.
    """
    state = ProcessState()
    code = 1
    with cell_output(log):
        try:
            fresh_start_state()
            with warnings.catch_warnings():  # a cell's warning filters (and "once" registry) end with it
                code = int(train() or 0)
        except KeyboardInterrupt:
            raise
        except SystemExit as exc:  # a library's sys.exit ends this cell, not the bundle
            code = exc.code if isinstance(exc.code, int) and exc.code else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            release()
            state.restore()
    return code


def open_fds() -> int:
    """Open file descriptors of this process (a leak check between cells)."""
    return len(os.listdir("/proc/self/fd"))
