"""A cell's log says what the cell did, not what third-party libraries would like to sell or suggest.

Lightning prints, into every cell log: an ``srun`` hint whenever Slurm's client is installed (also on a local run,
where it is wrong), a "💡 Tip" advertising its cloud services, a line per ``limit_*_batches=1.0`` spelling out the
default, and a warning that modules are in eval mode (our frozen BatchNorms, on purpose); PyTorch adds a
deprecation warning from Lightning's own code. None of it is actionable by a user of this project, and all of it
pushed the lines that are (errors, the result) out of view. Everything else Lightning logs or warns stays.
"""

from __future__ import annotations

import logging
import os
import warnings

_NOISE_LOG = ("💡 Tip:", "was configured so")
_NOISE_WARNINGS = (
    r".*module\(s\) in eval mode at the start of training.*",  # frozen units' BatchNorms, deliberately
    r".*isinstance\(treespec, LeafSpec\).*",  # Lightning's own use of a deprecated torch API
)
_SRUN_HINT = r"The `srun` command is available on your system but is not used.*"


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(part in message for part in _NOISE_LOG)


def quiet_third_party() -> None:
    """Install the filters (idempotent). Warning filters are process state a bundle resets between cells, so every
    cell calls this; the srun hint is dropped only outside a Slurm step, where it is wrong."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    for pattern in _NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    if "SLURM_STEP_ID" not in os.environ:
        warnings.filterwarnings("ignore", message=_SRUN_HINT)
