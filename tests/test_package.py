"""`pip install .` (a wheel, not editable) into a fresh venv runs a sweep outside the source checkout.

The venv reuses this environment's already-installed dependencies through a .pth line (so nothing is downloaded
and torch is not installed twice); the project itself comes only from the wheel. Every third-party module the
code imports must be a declared dependency (or an extra).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import tomllib
import yaml

from tests.conftest import REPO

PACKAGES = ("pipeline", "datamodules", "launch", "slurm", "configs")


_IMPORTS = """
import ast, json, sys
from pathlib import Path
mods = set()
for path in Path(sys.argv[1]).rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods.add(node.module.split(".")[0])
print(json.dumps(sorted(mods)))
"""


def _imports(package: str) -> set[str]:
    """Top-level modules imported anywhere in ``package``. Parsed in a fresh interpreter: CPython 3.11.7's
    ``ast.parse`` can raise "AST constructor recursion depth mismatch" in a process where an earlier test hit a
    RecursionError (fixed in later 3.11 releases)."""
    out = subprocess.run([sys.executable, "-c", _IMPORTS, str(REPO / package)], check=True, capture_output=True,
                         text=True).stdout
    return set(json.loads(out))


def _requirement_name(req: str) -> str:
    name = req
    for sep in "<>=!~[; ":
        name = name.split(sep)[0]
    return name.lower().replace("_", "-")


def test_every_imported_module_is_a_declared_dependency() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {_requirement_name(r) for r in project["dependencies"]}
    declared |= {_requirement_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    dists = packages_distributions()
    third_party = set().union(*(_imports(p) for p in PACKAGES)) - set(sys.stdlib_module_names) - set(PACKAGES)
    missing = {}
    for module in sorted(third_party):
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not names & declared:
            missing[module] = sorted(names)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the project installed from a wheel built from a copy of the checkout."""
    tmp = tmp_path_factory.mktemp("package")
    src = tmp / "src"
    junk = shutil.ignore_patterns(".venv*", ".git", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache")

    def ignore(folder: str, names: list[str]) -> set[str]:  # results/ and build/ of the checkout, not pipeline/results
        top = {"results", "build"} & set(names) if Path(folder) == REPO else set()
        return set(junk(folder, names)) | top

    shutil.copytree(REPO, src, ignore=ignore)
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(src)], check=True, capture_output=True)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    site = subprocess.run([str(_venv_python(venv)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # this environment's dependencies (torch, lightning, ...), without its editable copy of the project
    Path(site, "mkf_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(wheels.glob("masterkey_filters-*.whl"))
    subprocess.run([str(_venv_python(venv)), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    shutil.rmtree(src)  # no source checkout left to fall back on
    yield venv


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}


def _small_sweep(tmp_path: Path, **extra: object) -> Path:
    sweep = {"name": "pkg", "output_dir": "out", "seeds": [0],
             "data": {"dataset": "fashion_mnist", "split": {"kind": "random_halves", "seed": 0}, "batch_size": 64,
                      "max_train_samples": 256, "max_val_samples": 128},
             "archs": [{"arch": "convnext_demo", "unit_kind": "depthwise"}], "depths": [1], "variants": ["AnB"],
             "train": {"trainer": {"max_epochs": 1, "progress_bar": False}}, **extra}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def _mkf(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "mkf"), *args], cwd=cwd, env=_env(), capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.usefixtures("fashion_root")
def test_installed_wheel_runs_a_sweep_locally(installed: Path, tmp_path: Path) -> None:
    where = subprocess.run([str(_venv_python(installed)), "-c", "import launch, configs, slurm; "
                            "from configs import config_path; print(launch.__file__, config_path('demo.yaml'))"],
                           cwd=tmp_path, env=_env(), check=True, capture_output=True, text=True).stdout.split()
    assert all(p.startswith(str(installed)) for p in where), where  # code and package data come from the venv
    assert Path(where[1]).is_file()
    proc = _mkf(installed, "layers", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    sweep = _small_sweep(tmp_path)
    proc = _mkf(installed, "sweep", "run", str(sweep), "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert len(manifest["cells"]) == 3
    assert all((Path(tmp_path, c["run_dir"]) / "result.json").is_file() for c in manifest["cells"])


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.usefixtures("fashion_root", "slurm_cluster")
def test_installed_wheel_runs_a_sweep_on_slurm(installed: Path, tmp_path: Path) -> None:
    """Jobs run the venv's interpreter (the profile sets no `python`), in the submit directory, no checkout."""
    import time

    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(yaml.safe_dump({"test": {"partition": "debug", "time": "00:20:00", "cpus_per_task": 1,
                                                 "mem": "1000M", "env": {"MASTER_ADDR": "127.0.0.1"}}}))
    sweep = _small_sweep(tmp_path, slurm={"profiles": {"base": "test", "transfer": "test"}})
    proc = _mkf(installed, "sweep", "run", str(sweep), "--executor", "slurm", "--profiles", str(profiles),
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    script = next((tmp_path / "out" / "slurm").glob("base-*.sbatch")).read_text()
    assert str(installed / "bin" / "python") in script and "\ncd " not in script
    cells = json.loads((tmp_path / "out" / "manifest.json").read_text())["cells"]
    deadline = time.time() + 600
    while time.time() < deadline and not all((tmp_path / c["run_dir"] / "result.json").is_file() for c in cells):
        time.sleep(1)
    logs = "".join(p.read_text() for p in (tmp_path / "out" / "slurm" / "logs").glob("*.out"))
    assert all((tmp_path / c["run_dir"] / "result.json").is_file() for c in cells), logs[-3000:]
