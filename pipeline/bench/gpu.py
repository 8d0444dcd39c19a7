"""`mkf bench gpu`: training images/s per arch x precision x channels_last x torch.compile, against published figures.

Each configuration trains the project's own module (:class:`ImageClassifier`: the timm model, its loss, timm's
AdamW groups) for ``steps`` timed steps after ``warmup`` untimed ones, on

- **synthetic** data: a fixed uint8 batch already on the device, normalised there like the wds/FFCV loaders do
  (the device's own ceiling: no loader, no copy), and
- the **real loader** of a cell config (``--data CELL.yaml``): that cell's datamodule with the same hooks the
  Trainer calls (host batch -> device -> uint8 normalisation), plus the loader alone without a model.

real / synthetic says whether a run is GPU-bound (close to 1) or starved by its data pipeline; the ratio to a
published figure says how far the device is from what others measured for the same model. With ``frozen_depth``
the first depthwise units are frozen as in an AnB cell, and the compiled runs count TorchDynamo's compiled frames
after the first step: a recompile in the steady state (a guard on ``requires_grad`` or the train/eval flag failing
every step) shows up there.

On a CPU the same code runs (use a tiny arch); figures then only prove the code path.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from datamodules.loaders.augment import normalize_batch
from pipeline.config import ModelConfig, OptimConfig
from pipeline.training.classifier import ImageClassifier


@dataclass(frozen=True)
class Published:
    """A published training throughput to compare with (images/s per device)."""

    images_per_s: float
    image_size: int
    source: str


# Published training throughputs, per device. They come from other GPUs and software; the ratio is a sanity check
# ("is this machine in the same league?"), not a score.
PUBLISHED: dict[str, Published] = {
    "resnet50": Published(3500.0, 160, "FFCV ResNet-50 on A100, 160 px, AMP + channels_last (ffcv-imagenet rn50 "
                                       "configs; ~3,500 img/s/A100, the figure issue 9 cites)"),
    "convnext_tiny": Published(819.24, 224, "timm results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv: "
                                            "convnext_tiny 819.24 img/s, batch 256, 224 px, AMP, NHWC, RTX 3090"),
}


@dataclass
class BenchCase:
    arch: str
    precision: str  # bf16-mixed | 32-true
    channels_last: bool
    compile: bool
    data: str  # synthetic | the loader's name


@dataclass
class BenchResult:
    case: BenchCase
    images_per_s: float
    ms_per_step: float
    compile_s: float | None  # first step's wall time with compile (tracing + codegen)
    recompiles: int | None  # frames compiled after the first step (0 = no recompiles)
    published_ratio: float | None

    def row(self) -> dict[str, Any]:
        return {**asdict(self.case), **{k: v for k, v in asdict(self).items() if k != "case"}}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16-mixed":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "32-true":
        return contextlib.nullcontext()
    raise ValueError(f"unsupported precision {precision!r}; use bf16-mixed or 32-true")


def _compiled_frames() -> int:
    from torch._dynamo.utils import counters

    return int(counters["frames"]["ok"])


def freeze_first_units(module: ImageClassifier, depth: int) -> int:
    """Freeze the first ``depth`` depthwise units as an AnB cell does (``transfer.freeze: kernel``, the default:
    the kernels only); returns the frozen parameter count."""
    if depth <= 0:
        return 0
    from pipeline.models.layer_plan import plan_units
    from pipeline.transfer.apply import frozen_parameter_names

    modules = dict(module.model.named_modules())
    for unit in plan_units(module.model, "depthwise")[:depth]:
        for name in unit.modules:
            for pname in frozen_parameter_names(modules[name], "depthwise", "kernel"):
                getattr(modules[name], pname).requires_grad_(False)
    return module.frozen_parameters()


def build_module(case: BenchCase, num_classes: int, device: torch.device, frozen_depth: int,
                 compile_backend: str) -> ImageClassifier:
    """The cell's module with the case's memory format; compiled in place (nn.Module.compile) as cells are."""
    module = ImageClassifier(ModelConfig(arch=case.arch, channels_last=case.channels_last), OptimConfig(),
                             num_classes=num_classes)
    freeze_first_units(module, frozen_depth)
    module.to(device)
    if case.compile:
        module.model.compile(backend=compile_backend)
    return module.train()


def train_steps(module: ImageClassifier, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], steps: int,
                warmup: int, device: torch.device, precision: str) -> tuple[float, float | None, int | None]:
    """(seconds for the timed steps, first step's seconds, frames compiled after the first step)."""
    optimizer, _ = module.configure_optimizers_plain(steps + warmup)
    first_s: float | None = None
    frames_after_first = 0
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        t0 = time.perf_counter()
        images, labels = next(batches)
        with _autocast(device, precision):
            loss = module.loss(module(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step == 0:
            _sync(device)
            first_s = time.perf_counter() - t0
            frames_after_first = _compiled_frames()
    _sync(device)
    elapsed = time.perf_counter() - start
    return elapsed, first_s, _compiled_frames() - frames_after_first


def synthetic_batches(batch_size: int, image_size: int, num_classes: int, device: torch.device,
                      channels_last: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One uint8 batch on the device, normalised every step as the wds/FFCV hooks do."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8, generator=g)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    images = images.to(device)
    labels = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)
    while True:
        yield normalize_batch(images), labels


class _LoaderTrainer:
    """What the datamodules' transfer hooks read from a Trainer (training flag, rank, epoch), without one."""

    training = True
    current_epoch = 0
    global_rank = 0
    world_size = 1
    lightning_module = None

    def __init__(self, device: torch.device) -> None:
        from types import SimpleNamespace

        self.strategy = SimpleNamespace(root_device=device)


def loader_batches(datamodule: Any, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless training batches of a cell's datamodule, through the hooks the Trainer calls, on ``device``."""
    datamodule.trainer = _LoaderTrainer(device)
    epoch = 0
    while True:
        datamodule.trainer.current_epoch = epoch
        for batch in datamodule.train_dataloader():
            batch = datamodule.on_before_batch_transfer(batch, 0)
            batch = tuple(t.to(device, non_blocking=True) for t in batch)
            yield datamodule.on_after_batch_transfer(batch, 0)
        epoch += 1


def loader_only(datamodule: Any, device: torch.device, batches: int) -> float:
    """Images/s of the loader alone (to the device, normalised), the ceiling a model can be fed at."""
    stream = loader_batches(datamodule, device)
    next(stream)  # workers start, first batch
    _sync(device)
    start, count = time.perf_counter(), 0
    for _ in range(batches):
        images, _labels = next(stream)
        count += images.shape[0]
    _sync(device)
    return count / (time.perf_counter() - start)


def bench_gpu(archs: list[str], precisions: list[str], channels_last: list[bool], compile: list[bool],
              batch_size: int = 256, image_size: int | None = None, steps: int = 50, warmup: int = 10,
              data_config: str | None = None, device: str = "auto", frozen_depth: int = 0,
              compile_backend: str = "inductor", num_classes: int = 1000, out_json: str | None = None,
              console: Console | None = None) -> dict[str, Any]:
    """Run every case, print the table and the verdicts, return the figures."""
    import sys

    console = console or (Console() if sys.stdout.isatty() else Console(width=150))  # a log gets the whole table
    dev = _device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    datamodule, data_name, loader_rate = None, None, None
    if data_config:
        from pipeline.config import load_cell_config
        from pipeline.training.train import build_datamodule_for

        cell = load_cell_config(data_config)
        datamodule = build_datamodule_for(cell)
        datamodule.setup("fit")
        num_classes, batch_size, data_name = datamodule.num_classes, cell.data.batch_size, cell.data.loader
        if data_name == "default":
            data_name = cell.data.dataset
        loader_rate = loader_only(datamodule, dev, batches=max(steps, 5))
        # synthetic at the loader's resolution, so that real / synthetic compares like with like
        image_size = image_size or _train_resolution(datamodule)
    results: list[BenchResult] = []
    for arch, precision, cl, comp in itertools.product(archs, precisions, channels_last, compile):
        sources: list[tuple[str, Any]] = [("synthetic", None)]
        if datamodule is not None:
            sources.append((data_name or "loader", datamodule))
        for name, dm in sources:
            case = BenchCase(arch, precision, cl, comp, name)
            torch.manual_seed(0)
            if comp:
                torch._dynamo.reset()
            module = build_module(case, num_classes, dev, frozen_depth, compile_backend)
            if dm is None:  # an arch with a published figure runs at its resolution unless told otherwise
                size = image_size or (PUBLISHED[arch].image_size if arch in PUBLISHED else 224)
                batches = synthetic_batches(batch_size, size, num_classes, dev, cl)
            else:
                size = _train_resolution(dm)
                batches = loader_batches(dm, dev)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            elapsed, first_s, recompiles = train_steps(module, batches, steps, warmup, dev, precision)
            rate = batch_size * steps / elapsed
            ref = PUBLISHED.get(arch)
            ratio = rate / ref.images_per_s if ref is not None and ref.image_size == size and dev.type == "cuda" \
                else None
            results.append(BenchResult(case, rate, 1000 * elapsed / steps, first_s if comp else None,
                                       recompiles if comp else None, ratio))
    _print(console, results, dev, batch_size, image_size, frozen_depth, loader_rate)
    out = {"device": _device_name(dev), "batch_size": batch_size, "image_size": image_size, "steps": steps,
           "frozen_depth": frozen_depth, "compile_backend": compile_backend, "loader_only_images_per_s": loader_rate,
           "results": [r.row() for r in results], "published": {k: asdict(v) for k, v in PUBLISHED.items()}}
    if out_json:
        Path(out_json).write_text(json.dumps(out, indent=2) + "\n")
    return out


def _train_resolution(datamodule: Any) -> int:
    spec = getattr(datamodule, "spec", None)
    return int(getattr(spec, "train_resolution", 0) or getattr(datamodule, "image_size", 0) or 224)


def _device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def _print(console: Console, results: list[BenchResult], dev: torch.device, batch_size: int, image_size: int | None,
           frozen_depth: int, loader_rate: float | None) -> None:
    size = f"{image_size} px" if image_size else "each arch's published resolution (else 224 px)"
    table = Table(title=f"training images/s on {_device_name(dev)}, batch {batch_size}, synthetic at {size}"
                        + (f", first {frozen_depth} depthwise units frozen" if frozen_depth else ""))
    for col in ("arch", "precision", "channels_last", "compile", "data", "images/s", "ms/step", "compile s",
                "recompiles", "vs published"):
        table.add_column(col, justify="right" if col not in ("arch", "precision", "data") else "left")
    for r in results:
        c = r.case
        table.add_row(c.arch, c.precision, "yes" if c.channels_last else "no", "yes" if c.compile else "no", c.data,
                      f"{r.images_per_s:,.0f}", f"{r.ms_per_step:.1f}",
                      "" if r.compile_s is None else f"{r.compile_s:.1f}",
                      "" if r.recompiles is None else str(r.recompiles),
                      "" if r.published_ratio is None else f"{r.published_ratio:.2f}")
    console.print(table)
    if loader_rate is not None:
        console.print(f"loader alone (to the device, normalised): {loader_rate:,.0f} images/s")
    synthetic = {(r.case.arch, r.case.precision, r.case.channels_last, r.case.compile): r.images_per_s
                 for r in results if r.case.data == "synthetic"}
    for r in results:
        if r.case.data == "synthetic":
            continue
        key = (r.case.arch, r.case.precision, r.case.channels_last, r.case.compile)
        share = r.images_per_s / synthetic[key]
        if loader_rate is not None and loader_rate < synthetic[key]:
            verdict = "data-bound: the loader alone is slower than the model can train"
        elif share < 0.9:
            verdict = "loader overhead: fast enough alone, but feeding costs the step time (host contention)"
        else:
            verdict = "GPU-bound"
        console.print(f"{r.case.arch} {r.case.precision} cl={r.case.channels_last} compile={r.case.compile}: "
                      f"real loader at {share:.2f} of synthetic, loader alone at "
                      f"{(loader_rate or 0) / synthetic[key]:.1f}x the synthetic rate -> {verdict}")
    for arch, ref in PUBLISHED.items():
        if any(r.case.arch == arch for r in results):
            console.print(f"published {arch}: {ref.images_per_s:,.0f} img/s at {ref.image_size} px ({ref.source})")
    if dev.type != "cuda":
        console.print("no CUDA device: these figures only prove the code path (ratios to published GPU figures "
                      "are left out; on a shared CPU, real/synthetic moves by +-20% between runs)")
