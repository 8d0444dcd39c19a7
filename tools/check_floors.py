"""Check that this environment holds exactly the floors pyproject.toml declares for torch, torchvision, Lightning
and timm (``make install-min`` runs it in .venv-min): the floors are the versions the fast subset ran on, and the
Makefile's pins cannot drift from the declared ones without this failing."""

from __future__ import annotations

import re
import sys
from importlib.metadata import version
from pathlib import Path

import tomllib
from packaging.version import Version  # a Lightning dependency: present wherever this runs

PINNED = ("torch", "torchvision", "lightning", "timm")


def declared_floors(pyproject: Path) -> dict[str, str]:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    floors = {}
    for dep in deps:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", dep.split(";")[0].strip())
        if match and match.group(1).lower() in PINNED:
            floors[match.group(1).lower()] = match.group(2)
    return floors


def main() -> int:
    floors = declared_floors(Path(__file__).resolve().parents[1] / "pyproject.toml")
    missing = sorted(set(PINNED) - set(floors))
    if missing:
        print(f"pyproject.toml declares no '>=' floor for {', '.join(missing)}", file=sys.stderr)
        return 1
    wrong = {name: version(name) for name in PINNED
             if Version(Version(version(name)).base_version) != Version(floors[name])}  # 2.13 == 2.13.0+cu130
    if wrong:
        for name, got in wrong.items():
            print(f"{name}: installed {got}, pyproject.toml floor {floors[name]}; make them equal "
                  "(Makefile MIN_TORCH/MIN_PINS and pyproject.toml)", file=sys.stderr)
        return 1
    print("floors installed: " + ", ".join(f"{n}=={floors[n]}" for n in PINNED))
    return 0


if __name__ == "__main__":
    sys.exit(main())
