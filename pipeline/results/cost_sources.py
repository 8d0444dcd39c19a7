"""The shipped cost table, derived from published figures by stated rules: every number in configs/costs.yaml
comes from here, with the source it rests on.

``python -m pipeline.results.cost_sources > configs/costs.yaml`` writes it, in the layout launch/planning/cost.py reads (a
training rate per arch, its source in a comment beside it); :func:`pipeline.results.costs.load_table` adds back
what this module states for each number (kind, source, validation rate) and the exponent, loader and source
list. tests/test_costs.py checks that the shipped numbers are exactly what :func:`published_table` gives.

**Why derived.** Few training throughputs are published for an A100 per arch. The one same-harness source that
has many archs is timm's RTX 3090 benchmark; the one same-harness source that runs one model on both a 3090 and
an A100 is Lambda's (NVIDIA's NGC ResNet-50, fp16). So: A100 = timm's RTX 3090 figure x Lambda's A100/3090 ratio,
except where an A100 figure is published (ResNet-50, NVIDIA). H100 and H200 follow from A100 by Lambda's ratios.
HorNet is in none of these benchmarks: its figures are ConvNeXt's of the same size scaled by the FLOP ratio.

**Resolution exponent.** Every CNN that timm's RTX 3090 benchmark runs at two resolutions (ConvNeXt-T/S/B/L/XL at
224 and 384, ResNetV2-50x1 and -152x2, TResNet-M/L/XL at 224 and 448) trains at images/s proportional to
resolution^-k with k = 1.95-2.12 (median 1.99, AMP NHWC): area scaling. FFCV's ResNet-50/18 tables (8 / 1 x A100)
cannot pin k down: every config spends 75-81% of its epochs at 160 px and the rest at 192, and a fit of time =
a + b x sum_epochs (res/160)^k is as good at k = 0.5 as at 2 for ResNet-50 (residuals within the table's
rounding) and best at 1.5-2 for ResNet-18. The "about 1.4x from 224 to 160 px" read off FFCV compares its A100
throughput at 160-192 px (in-memory loader, BlurPool) with a 224 px figure from another harness. The table states
k = 2 and the timm pairs as its source; `mkf costs fit` measures k per arch from cells at two or more resolutions.
"""

from __future__ import annotations

import sys
from typing import Any

SOURCES = {
    "timm-train-3090": "huggingface/pytorch-image-models results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv "
                       "@ c865028c34fc05cc7deea8e753b30d8cd1952591 (2022-07-27): train_samples_per_sec, RTX 3090, "
                       "AMP, channels_last, PyTorch 1.12, 224 px",
    "timm-infer-3090": "huggingface/pytorch-image-models results/benchmark-infer-amp-nhwc-pt112-cu113-rtx3090.csv "
                       "@ c865028c34fc05cc7deea8e753b30d8cd1952591: infer_samples_per_sec (batch 1024) and "
                       "infer_gmacs, RTX 3090, AMP, channels_last, 224 px",
    "nvidia-rn50": "NVIDIA/DeepLearningExamples PyTorch/Classification/ConvNets/resnet50v1.5/README.md @ "
                   "5843f4e5a1220dd98936e477d8597d8a77320666 (2022-10-03), 'Training performance: NVIDIA DGX A100 "
                   "(8x A100 80GB)': 1 GPU, mixed precision, 2,470 img/s (TF32 938), 224 px, DALI",
    "lambda-fp16": "lambdal/deeplearning-benchmark pytorch/pytorch-train-throughput-fp16.csv @ "
                   "4e11f6891ada05d1b317309d9b72c6072aa166d1 (2024-07-24): resnet50 (NGC PyTorch), fp16, 1 GPU: "
                   "RTX 3090 905, A100 80GB SXM4 1,582, H100 80GB SXM5 2,616 img/s",
    "lambda-fp16-v2": "lambdal/deeplearning-benchmark pytorch/pytorch-train-throughput-v2-fp16.csv @ "
                      "200af3b7ce8ee1f55c7ed6eaee0df2cafe2d7886 (2025-12-10): resnet50 fp16, 1 GPU: H200 SXM 3,079, "
                      "H100 80GB SXM5 2,790 img/s (median of its 35 single-GPU H100 SXM5 rows)",
    "mmpretrain-hornet": "open-mmlab/mmpretrain configs/hornet/README.md @ 00e25642ad5c7fd4cd405e49850c18fc911ae7ce: "
                         "HorNet-T 22.41 M params 3.98 GFLOPs, HorNet-S 49.53 M 8.83 GFLOPs (224 px; the official "
                         "models, which pipeline/models/hornet.py reproduces: 22.41 / 49.53 M)",
    "ffcv-imagenet": "libffcv/ffcv-imagenet README.md @ 4dd291a122096a2032ec9fd19633e1b9aff3577d: ResNet-50 8 x A100 "
                     "16/24/32/40/56/88 epochs in 14.9/21.7/28.7/35.6/49.4/77.2 min, ResNet-18 1 x A100 in "
                     "35.0/51.6/68.9/85.5/119.4/187.3 min; progressive 160 -> 192 px (rn*_configs/*.yaml)",
    "timm-resolution-pairs": "timm-train-3090: the CNNs benchmarked at two resolutions, k = log(rate_224 / rate_hi) "
                             "/ log(hi / 224): ConvNeXt-T 1.98, -S 2.00, -B 1.99, -L 2.00, -XL 1.96 (384 px), "
                             "ResNetV2-50x1 1.99 (448), -152x2 1.95 (384), TResNet-M 2.12, -L 2.02, -XL 1.97 (448)",
}

# published figures, images/s (a copy of the rows the sources above name)
TIMM_TRAIN_3090 = {"resnet18": 3481.78, "resnet34": 2036.51, "resnet50": 1218.01, "resnet101": 747.89,
                   "resnet152": 501.44, "convnext_tiny": 819.24, "convnext_small": 487.15, "convnext_base": 338.68,
                   "mobilenetv3_large_100": 2732.43}
TIMM_INFER_3090 = {"resnet18": 11023.6, "resnet34": 6404.45, "resnet50": 3676.35, "resnet101": 2246.09,
                   "resnet152": 1571.71, "convnext_tiny": 2379.5, "convnext_small": 1452.43, "convnext_base": 1012.72,
                   "mobilenetv3_large_100": 12955.77}
TIMM_GMACS = {"convnext_tiny": 4.47, "convnext_small": 8.71}
HORNET_GFLOPS = {"hornet_tiny_7x7": 3.98, "hornet_small_7x7": 8.83}
HORNET_PEER = {"hornet_tiny_7x7": "convnext_tiny", "hornet_small_7x7": "convnext_small"}
NVIDIA_A100 = {"resnet50": 2470.0}
LAMBDA = {"rtx3090": 905.0, "a100": 1582.0, "h100": 2616.0}
LAMBDA_V2 = {"h100": 2790.0, "h200": 3079.0}
A100_PER_3090 = LAMBDA["a100"] / LAMBDA["rtx3090"]  # 1.748
H100_PER_A100 = LAMBDA["h100"] / LAMBDA["a100"]  # 1.654
H200_PER_H100 = LAMBDA_V2["h200"] / LAMBDA_V2["h100"]  # 1.104
RESOLUTION_EXPONENT = 2.0

# the demo archs (a few hundred thousand parameters at 32 px) are in no benchmark; their GPU figures are the
# previous table's placeholders, kept so that smoke sweeps plan on a GPU column; `mkf costs fit` replaces them
DEMO_PLACEHOLDERS = {"convnext_demo": 60000, "resnet_demo": 60000, "hornet_demo": 30000, "hornet_demo_ug": 30000}

# the wds loader's images/s per worker (decode + random-resized crop), the one measurement the issue names
LOADER_WDS = {"per_worker": {"160": 485, "224": 360},
              "source": "issue 25: ~485 img/s per worker at 160 px (wds, 2 workers, the project's shared 2-core dev "
                        "machine); 224 px: x 1,177 / 1,587 (docs/data.md's `mkf bench loader` table, same machine, 160 -> "
                        "224 px); runs there move by +-40% (docs/data.md: 794 and 636 per worker at 160 px; 354 on "
                        "2026-12-06 under load). A compute node's cores differ: `mkf bench loader --json` there, then "
                        "`mkf costs fit --bench-loader` it"}

ARCHS = ("convnext_tiny", "convnext_base", "hornet_tiny_7x7", "hornet_small_7x7", "mobilenetv3_large_100",
         "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")

DATASETS = {  # training / validation images, classes (the validation split each layout reads as val)
    "fashion_mnist": {"train_images": 60000, "val_images": 10000, "classes": 10},
    "mnist_5k": {"train_images": 4000, "val_images": 1000, "classes": 10},
    "imagenet-wds": {"train_images": 1281167, "val_images": 50000, "classes": 1000},
    "imagenet-wds-mn": {"train_images": 1281167, "val_images": 50000, "classes": 1000},
    "imagenet-wds-rh": {"train_images": 1281167, "val_images": 50000, "classes": 1000},
    "food101-wds": {"train_images": 75750, "val_images": 25250, "classes": 101},
    "pets-wds": {"train_images": 3680, "val_images": 3669, "classes": 37},
    "flowers-wds": {"train_images": 2040, "val_images": 6149, "classes": 102},
    "cifar10-wds": {"train_images": 50000, "val_images": 10000, "classes": 10},
}


def _a100(arch: str) -> dict[str, Any]:
    """The A100 entry of a catalog arch: published where NVIDIA publishes one, else derived (stated rule)."""
    if arch in HORNET_PEER:
        peer = HORNET_PEER[arch]
        ratio = TIMM_GMACS[peer] / HORNET_GFLOPS[arch]
        train = TIMM_TRAIN_3090[peer] * A100_PER_3090 * ratio
        val = TIMM_INFER_3090[peer] * A100_PER_3090 * ratio
        return {"train": round(train), "val": round(val), "kind": "derived",
                "short": f"{peer} x GFLOPs {TIMM_GMACS[peer]} / {HORNET_GFLOPS[arch]} (mmpretrain-hornet), "
                         "upper bound",
                "source": f"{peer}'s A100 figures (timm-train-3090 / timm-infer-3090 x lambda-fp16 A100/3090 "
                          f"{A100_PER_3090:.3f}) x GFLOP ratio {TIMM_GMACS[peer]} / {HORNET_GFLOPS[arch]} "
                          "(timm-infer-3090, mmpretrain-hornet); an upper bound: gnConv's gates and splits take "
                          "more time per FLOP than ConvNeXt's blocks; no HorNet GPU throughput is published"}
    val = TIMM_INFER_3090[arch] * A100_PER_3090
    if arch in NVIDIA_A100:
        derived = TIMM_TRAIN_3090[arch] * A100_PER_3090
        return {"train": round(NVIDIA_A100[arch]), "val": round(val), "kind": "published",
                "short": "nvidia-rn50 (1 x A100 80GB, AMP); val: timm-infer-3090 x lambda-fp16",
                "source": f"train: nvidia-rn50 (1 x A100 80GB, AMP, DALI) {NVIDIA_A100[arch]:,.0f}; the timm "
                          f"harness derived as below would give {derived:,.0f}; val: timm-infer-3090 "
                          f"{TIMM_INFER_3090[arch]:,.2f} x lambda-fp16 A100/3090 {A100_PER_3090:.3f} (derived)"}
    return {"train": round(TIMM_TRAIN_3090[arch] * A100_PER_3090), "val": round(val), "kind": "derived",
            "short": f"timm-train-3090 {TIMM_TRAIN_3090[arch]:,.2f} x lambda-fp16 A100/3090 {A100_PER_3090:.3f}",
            "source": f"timm-train-3090 {TIMM_TRAIN_3090[arch]:,.2f} / timm-infer-3090 {TIMM_INFER_3090[arch]:,.2f} "
                      f"x lambda-fp16 A100/3090 {A100_PER_3090:.3f} (1,582 / 905, NGC ResNet-50 fp16 on both)"}


def published_table() -> dict[str, Any]:
    """The shipped table: A100 / H100 / H200 columns for the catalog archs (published or derived, each sourced),
    the demo archs' placeholders, the resolution exponent, the loader's measured figures and the datasets."""
    a100, h100, h200 = {}, {}, {}
    for arch in ARCHS:
        base = _a100(arch)
        a100[arch] = base
        h100[arch] = {"train": round(base["train"] * H100_PER_A100), "val": round(base["val"] * H100_PER_A100),
                      "kind": "derived", "short": f"a100 x lambda-fp16 H100 / A100 {H100_PER_A100:.3f}",
                      "source": f"the A100 entry x lambda-fp16 H100 SXM5 / A100 SXM4 {H100_PER_A100:.3f} "
                                "(2,616 / 1,582)"}
        h200[arch] = {"train": round(h100[arch]["train"] * H200_PER_H100),
                      "val": round(h100[arch]["val"] * H200_PER_H100), "kind": "derived",
                      "short": f"h100 x lambda-fp16-v2 H200 / H100 {H200_PER_H100:.3f}",
                      "source": f"the H100 entry x lambda-fp16-v2 H200 / H100 SXM5 {H200_PER_H100:.3f} "
                                "(3,079 / 2,790)"}
    for arch, rate in DEMO_PLACEHOLDERS.items():
        a100[arch] = {"train": rate, "kind": "assumed", "short": "placeholder: no benchmark runs a demo arch",
                      "source": "placeholder (the previous table's; a demo arch is in no benchmark): run "
                                "`mkf costs fit` on finished cells to replace it"}
    return {
        "gpu": "a100",
        "reference_image_size": 224,
        "resolution_exponent": {"value": RESOLUTION_EXPONENT,
                                "source": "timm-resolution-pairs (median 1.99, range 1.95-2.12; 224 -> 384/448 px); "
                                          "ffcv-imagenet constrains it only weakly (see pipeline/results/"
                                          "cost_sources.py)"},
        "throughput": {"a100": a100, "h100": h100, "h200": h200},
        "loader": {"default_workers": 8, "wds": LOADER_WDS},
        "datasets": DATASETS,
        "sources": SOURCES,
    }


HEADER = (
    "What a cell costs, for `mkf sweep plan` (launch/planning/cost.py) and pipeline/results/costs.py (docs/costs.md). Written "
    "by `python -m pipeline.results.cost_sources` from published figures and stated rules: every number's source is "
    "the comment beside it, spelled out (with its validation rate) in pipeline/results/cost_sources.py. Edit freely; "
    "an edited number reads as unsourced until a source is named. `mkf costs fit DIR` refits entries from finished "
    "cells.",
    "throughput.<device>.<arch>: training images/s per device (mixed precision, channels_last) at "
    "reference_image_size. A cell at another resolution scales by (reference / size)^k: k = {k} ({k_source}).",
    "A cell's device-hours = training images / rate + one validation pass per epoch (pipeline/results/costs.py); a "
    "loader ceiling caps the rate: wds {wds} img/s per worker at 160 / 224 px ({wds_source}).",
    "datasets: training / validation images and classes; a class-split half counts its share of the classes "
    "(Yosinski's man-made half: 551 of 1,000).",
)


def render(table: dict[str, Any]) -> str:
    """The table in the layout launch/planning/cost.py reads, each number with its source as a comment."""
    import textwrap

    wds = table["loader"]["wds"]
    values = {"k": table["resolution_exponent"]["value"], "k_source": table["resolution_exponent"]["source"],
              "wds": " / ".join(str(v) for v in wds["per_worker"].values()), "wds_source": wds["source"]}
    lines: list[str] = []
    for paragraph in HEADER:
        lines += textwrap.wrap(paragraph.format(**values), width=116, initial_indent="# ", subsequent_indent="# ")
        lines.append("#")
    lines.append("# sources:")
    for key, text in table["sources"].items():
        lines += textwrap.wrap(f"{key}: {text}", width=116, initial_indent="#   ", subsequent_indent="#     ")
    lines += [f"gpu: {table['gpu']}", f"reference_image_size: {table['reference_image_size']}",
              "throughput:                # training images/s per device at reference_image_size"]
    for device, archs in table["throughput"].items():
        lines.append(f"  {device}:")
        for arch, entry in archs.items():
            lines.append(f"    {arch + ':':<23}{entry['train']:>6}   # {entry['kind']}: {entry['short']}")
    lines.append("datasets:")
    for name, entry in table["datasets"].items():
        fields = ", ".join(f"{k}: {v}" for k, v in entry.items())
        lines.append(f"  {name}: {{{fields}}}")
    return "\n".join(lines) + "\n"


def main() -> int:
    from pipeline.results.costs import check_table

    sys.stdout.write(render(check_table(published_table())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
