"""`mkf train`: one cell from its config, in this process (:mod:`launch.worker.train`)."""

from __future__ import annotations

import argparse


def cmd_train(args: argparse.Namespace) -> int:
    from launch.worker.train import train_config

    return train_config(args.config, run_dir=args.run_dir, num_nodes=args.num_nodes, devices=args.devices,
                        accelerator=args.accelerator)
