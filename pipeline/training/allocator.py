"""glibc malloc settings for a training process: keep freed tensor memory in the process between steps.

Why: on CPU every activation and gradient of a step is a fresh ``malloc``. glibc serves a block above its mmap
threshold (which its dynamic rule never raises past 32 MiB) straight from the kernel with ``mmap`` and gives it
back with ``munmap`` on free, and it trims the top of the heap as soon as 128 KiB there are free. The next step
then faults every one of those pages in again, each zero-filled by the kernel. Measured on the demo's
``resnet_demo`` (one activation of 128 x 64 x 32 x 32 floats is 33.5 MB, above any threshold glibc would choose):
three bundled transfer cells took 21.3 s, 5.0 s of it in the kernel, with 2.1 million minor page faults; with the
settings below 14.4 s, 0.14 s in the kernel, 38 thousand faults (four convnext_demo cells: 16.3 s -> 14.6 s). PyTorch's CPU tuning guide makes the same point
by recommending jemalloc or tcmalloc; these three ``mallopt`` calls get glibc there with nothing to install.

The settings change where memory comes from, never what is computed: a cell's weights and metrics are the same
to the bit (tests/test_allocator.py). What they cost is that freed memory stays in the process up to
``TRIM_THRESHOLD``; a bundle worker still hands it back between cells (``malloc_trim`` in
:func:`pipeline.training.bundle.release`), and forked loader workers inherit the settings with the heap.

Left alone when the user chose an allocator: ``LD_PRELOAD`` naming jemalloc/tcmalloc/mimalloc, any
``MALLOC_*`` variable or ``GLIBC_TUNABLES`` in the environment, or ``MKF_MALLOC_TUNING=0``. Not glibc (macOS,
musl): nothing happens.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

# mallopt parameter numbers, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap, so a freed one is reused, not unmapped
TRIM_THRESHOLD = 1 << 30  # the heap's free top is handed back only past 1 GiB (or by malloc_trim)
TOP_PAD = 64 << 20  # grow the heap 64 MiB at a time: fewer brk calls while a step's tensors are allocated

_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")
_applied: list[bool] = []


def user_chose_allocator(environ: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """The environment already says how memory is allocated: respect it."""
    env = os.environ if environ is None else environ
    if env.get("MKF_MALLOC_TUNING", "1") in ("0", "false", "no", "off"):
        return True
    if any(name in env.get("LD_PRELOAD", "") for name in _OTHER_ALLOCATORS):
        return True
    return "GLIBC_TUNABLES" in env or any(k.startswith("MALLOC_") for k in env)


def tune_malloc() -> bool:
    """Apply the settings once per process; True if glibc took them (idempotent, never raises)."""
    if _applied:
        return _applied[0]
    ok = False
    if not user_chose_allocator():
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6")
            ok = all(libc.mallopt(param, value) == 1 for param, value in (
                (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
    _applied.append(ok)
    return ok
