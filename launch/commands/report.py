"""`mkf report DIR`: a sweep's (or a catalog run's) tables and figure (:mod:`launch.views.report`)."""

from __future__ import annotations

import argparse


def cmd_report(args: argparse.Namespace) -> int:
    from launch.views.report import report_folder

    _, passed = report_folder(args.dir, partial=args.partial)
    return 0 if passed else 1  # a report whose audit failed is written (marked), and says so by its exit status
