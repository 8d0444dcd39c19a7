"""`mkf data ...` and `mkf bench loader`: shard writers, verification and the loader benchmark.

Kept apart from launch/cli.py so the data commands can grow without touching the training commands.
"""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Register the data commands on the top-level parser (``sub``) and the loader benchmark (``bench``)."""
