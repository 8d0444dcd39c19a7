"""Models, transfer, training one cell, results, filter analysis and benchmarks: everything between the batches of
:mod:`datamodules` and the sweeps of :mod:`launch`.

Rooms, lowest first (imports only run downwards; checked by import-linter, see pyproject.toml):
:mod:`.config` and :mod:`.results` (torch-free) < :mod:`.models` < :mod:`.transfer` < :mod:`.filters`
< :mod:`.training` < :mod:`.bench`.

``pipeline.train_cell`` is the public entry point; it is resolved on first use so that importing a torch-free
module such as :mod:`pipeline.results.run_folder` never imports torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["train_cell"]


def __getattr__(name: str) -> Any:
    if name == "train_cell":
        from pipeline.training.train import train_cell

        return train_cell
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
