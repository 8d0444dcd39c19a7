"""`mkf layers`: an architecture's transfer units, or the mapping of one's onto another's
(:mod:`launch.views.layers`)."""

from __future__ import annotations

import argparse


def cmd_layers(args: argparse.Namespace) -> int:
    from launch.views.layers import print_layers

    return print_layers(args)
