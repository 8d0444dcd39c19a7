"""`mkf demo`: the demo sweep run locally end to end (:mod:`launch.demo`)."""

from __future__ import annotations

import argparse


def cmd_demo(args: argparse.Namespace) -> int:
    from launch.demo import run_demo

    return run_demo(args.config, args.slots, progress=not args.no_progress)
