#!/usr/bin/env python
"""Run a command and report its wall time and the peak memory of its whole process tree.

Usage: ``python tools/measure_tree.py [--interval 0.5] CMD ARGS...``

Why a tree and PSS: ``mkf sweep run --slots 2`` trains cells in child processes (and data loaders may fork more),
so the memory a user must budget is the sum over the tree, not the parent's RSS. RSS counts shared pages (torch's
libraries, copy-on-write tensors after fork) once per process and so overstates that sum; PSS splits each shared
page between the processes that map it, so the PSS sum is the tree's real footprint. Both are printed. Linux only
(``/proc/<pid>/smaps_rollup``, kernel >= 4.14). Sampling misses peaks shorter than the interval.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def _children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, from one pass over /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # the process ended while we looked
        # The command name (field 2) may hold spaces or parentheses: the fields after the last ')' are safe.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants alive now."""
    children = _children_map()
    pids, stack = [], [root]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        stack.extend(children.get(pid, []))
    return pids


def _rollup_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in KiB; (0, 0) if it has ended."""
    pss = rss = 0
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1])
        elif line.startswith("Rss:"):
            rss = int(line.split()[1])
    return pss, rss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples (default 0.5)")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="the command to run")
    args = parser.parse_args(argv)
    if not args.cmd:
        parser.error("give the command to measure, e.g. tools/measure_tree.py mkf demo")

    load_before = os.getloadavg()
    start = time.monotonic()
    proc = subprocess.Popen(args.cmd)
    peak_pss = peak_rss = peak_procs = 0
    while proc.poll() is None:
        pids = tree_pids(proc.pid)
        sizes = [_rollup_kib(pid) for pid in pids]
        peak_pss = max(peak_pss, sum(p for p, _ in sizes))
        peak_rss = max(peak_rss, sum(r for _, r in sizes))
        peak_procs = max(peak_procs, sum(1 for p, _ in sizes if p))
        time.sleep(args.interval)
    wall = time.monotonic() - start
    load_after = os.getloadavg()

    def fmt(load: tuple[float, float, float]) -> str:
        return "/".join(f"{x:.2f}" for x in load)

    print(
        f"measure_tree: exit {proc.returncode}, wall {wall:.1f} s ({wall / 60:.1f} min), "
        f"peak PSS sum {peak_pss / 1024**2:.2f} GiB, peak RSS sum {peak_rss / 1024**2:.2f} GiB, "
        f"peak processes {peak_procs}, load average 1/5/15 min before {fmt(load_before)}, after {fmt(load_after)}",
        file=sys.stderr,
    )
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
