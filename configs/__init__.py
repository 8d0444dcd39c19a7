"""Package data: the demo sweep, cluster profiles, paper/study sweeps and recipes, read with importlib.resources.

`mkf` finds them here whether it runs from a source checkout or from an installed wheel (`pip install .`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from importlib.resources import as_file, files
from pathlib import Path


def config_file(*parts: str) -> AbstractContextManager[Path]:
    """A shipped config as a real file path (``with config_file("profiles.yaml") as path: ...``)."""
    return as_file(files(__name__).joinpath(*parts))


def config_path(*parts: str) -> Path:
    """The path of a shipped config: the package is always installed as plain files (never zipped)."""
    return Path(str(files(__name__).joinpath(*parts)))
