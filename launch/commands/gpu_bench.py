"""`mkf bench gpu`: training throughput per arch x precision x channels_last x compile (pipeline.bench.gpu).

Torch is imported inside the command only, so `mkf --help` stays light.
"""

from __future__ import annotations

import argparse
from typing import Any


def _bools(text: str) -> list[bool]:
    values = {"yes": [True], "no": [False], "both": [False, True]}
    if text not in values:
        raise argparse.ArgumentTypeError(f"{text!r}: use yes, no or both")
    return values[text]


def cmd_bench_gpu(args: argparse.Namespace) -> int:
    from pipeline.bench.gpu import bench_gpu

    bench_gpu(archs=args.arch, precisions=args.precision, channels_last=args.channels_last, compile=args.compile,
              batch_size=args.batch_size, image_size=args.image_size, steps=args.steps, warmup=args.warmup,
              data_config=args.data, device=args.device, frozen_depth=args.frozen_depth,
              compile_backend=args.compile_backend, out_json=args.json)
    return 0


def add_parsers(bench: Any) -> None:
    """Register `mkf bench gpu` under the `bench` subcommand group."""
    s = bench.add_parser(
        "gpu", help="training images/s: arch x precision x channels_last x torch.compile, synthetic and real data",
        description="Trains each configuration on a synthetic uint8 batch already on the device and, with --data, "
                    "on a cell's real loader; prints images/s, real/synthetic (GPU- or data-bound) and the ratio "
                    "to published figures (FFCV ResNet-50 on A100 at 160 px, timm's ConvNeXt-T benchmark).")
    s.add_argument("--arch", nargs="+", default=["resnet50", "convnext_tiny"], help="timm archs (default: both "
                   "with published figures); on a CPU use convnext_demo")
    s.add_argument("--precision", nargs="+", default=["bf16-mixed", "32-true"], choices=["bf16-mixed", "32-true"])
    s.add_argument("--channels-last", type=_bools, default=[False, True], help="yes | no | both (default both)")
    s.add_argument("--compile", type=_bools, default=[False, True], help="yes | no | both (default both)")
    s.add_argument("--batch-size", type=int, default=256, help="synthetic batch (a --data cell uses its own)")
    s.add_argument("--image-size", type=int, help="synthetic resolution (default: the published figure's, resnet50 "
                   "160 px, convnext_tiny 224 px; others 224 px)")
    s.add_argument("--steps", type=int, default=50, help="timed steps per configuration")
    s.add_argument("--warmup", type=int, default=10, help="untimed steps first (cuDNN autotuning, compile)")
    s.add_argument("--data", help="a cell YAML whose data section gives the real loader (wds/ffcv/folder)")
    s.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    s.add_argument("--frozen-depth", type=int, default=0, help="freeze the first N depthwise units (AnB cells)")
    s.add_argument("--compile-backend", default="inductor", help="torch.compile backend (inductor; eager on a CPU "
                   "to check recompiles without code generation)")
    s.add_argument("--json", help="also write the figures to this JSON file")
    s.set_defaults(func=cmd_bench_gpu)
