"""Data preparation as a sweep stage: a dataset role may say how its shards are made, and the writes run first.

A role's ``prepare:`` section holds the arguments of ``mkf data write`` (:mod:`datamodules.shards.writer`); the
shards land in the role's own ``data.shards`` folder, which is what its cells read::

    datasets:
      B: {loader: wds, shards: /data/food101-wds,
          prepare: {source: food101:/raw/food-101, format: wds, shard_size: 1000}}

**Skipping a write.** Each write has a *plan fingerprint*: its arguments plus a cheap summary of the raw source
(names, sizes and mtimes of the source folder and its entries two levels down, not of every image: a login
node must not stat 1.3 M ImageNet files). A write that finished leaves ``prepare.json`` next to its shards,
written after the writer's own ``index.json`` (like a cell's ``result.json``: last, so its presence means
complete); a later plan with the same fingerprint skips it. A finished write whose raw source is gone is kept
(its shards are what the cells read), not an error.

**Checking the source first.** Before anything is submitted or trained, every write that will run opens its
source and lists it (the writer's own listing), so a missing folder or a malformed layout is one
:class:`UserError` naming the role and the path, not a failed CPU job an hour into the queue.

Running a write (here, before a local run; in a Slurm prepare job) is :mod:`launch.execution.prepare_run`.
Torch-free: it runs on login nodes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from datamodules.errors import UserError

MARKER = "prepare.json"  # written last, next to the shards: the write with this fingerprint is complete
INDEX = "index.json"  # the writer's own completion file (datamodules.shards.writer.INDEX_FILE)


class PrepareSpec(BaseModel):
    """A role's ``prepare:`` section: the arguments of ``mkf data write`` (``--out`` is the role's data.shards)."""

    model_config = ConfigDict(extra="forbid")

    source: str  # LAYOUT:ROOT, LAYOUT, or an ImageNet-layout folder (as `mkf data write --source`)
    format: Literal["wds", "ffcv"] = "wds"
    split: str | dict[str, Any] | None = None  # none | random_halves[:SEED] | imagenet_manmade_natural | a mapping
    shard_size: int = Field(1000, ge=1)
    max_resolution: int | None = Field(None, ge=1)
    jpeg_quality: int = Field(90, ge=1, le=100)
    compress_probability: float = Field(0.5, ge=0.0, le=1.0)
    seed: int = 0
    max_per_class: int | None = Field(None, ge=1)
    val_labels: str | None = None  # flat ImageNet val: '<file> <wnid or index>' lines
    workers: int | None = Field(None, ge=1)  # writer processes; default: the job's CPUs (locally: min(8, cores))

    def split_text(self) -> str | None:
        """The writer's split argument (its CLI syntax; a mapping becomes its JSON form)."""
        if isinstance(self.split, dict):
            return json.dumps(self.split, sort_keys=True)
        return self.split

    def args(self) -> dict[str, Any]:
        """What decides the written bytes (workers does not)."""
        return self.model_dump(exclude={"workers"})


def parse_prepare(role: str, raw: Any) -> PrepareSpec:
    """A role's raw ``prepare`` section -> a :class:`PrepareSpec`; errors are one line naming the key."""
    if not isinstance(raw, dict):
        raise UserError(f"datasets.{role}.prepare must be a mapping of `mkf data write` arguments, e.g. "
                        "{source: food101:/raw/food-101, format: wds}")
    try:
        return PrepareSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in ("datasets", role, "prepare", *err["loc"]))
        if err["type"] == "extra_forbidden":
            return _raise(f"unknown key {where}; valid keys: {', '.join(PrepareSpec.model_fields)}")
        if err["type"] == "missing":
            return _raise(f"{where} is required (the raw dataset: LAYOUT:ROOT or a folder); add it")
        return _raise(f"{where} = {err.get('input')!r} is not valid: {err['msg'].lower()}; fix it")


def _raise(message: str) -> PrepareSpec:
    raise UserError(message)


@dataclass
class PrepareJob:
    """One write: its output folder (a role's data.shards), its arguments, the roles reading it, its fingerprint."""

    out: Path
    spec: PrepareSpec
    roles: list[str] = field(default_factory=list)
    fingerprint: str = ""
    source_present: bool = True

    @property
    def key(self) -> str:
        """A short stable name (job names, book keys)."""
        return hashlib.sha1(str(self.out).encode()).hexdigest()[:10]

    @property
    def marker(self) -> Path:
        return self.out / MARKER

    def complete(self) -> bool:
        """Written, with this fingerprint (or the same arguments while the raw source is gone)."""
        done = read_marker(self.out)
        if done is None or not (self.out / INDEX).is_file():
            return False
        if done.get("fingerprint") == self.fingerprint:
            return True
        return not self.source_present and done.get("args") == jsonable(self.spec.args())

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "spec": self.spec.model_dump(), "roles": self.roles,
                "fingerprint": self.fingerprint}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PrepareJob:
        return cls(Path(data["out"]), PrepareSpec.model_validate(data["spec"]), list(data.get("roles") or []),
                   str(data.get("fingerprint") or ""))


def read_marker(out: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


# ---- the cheap source summary and the fingerprint ------------------------------------------------------------
def _source_root(spec: PrepareSpec) -> Path | None:
    """The raw dataset's folder as the writer will resolve it (None: a layout with a built-in location)."""
    from datamodules.sources.layouts import LAYOUTS

    name, sep, root = spec.source.partition(":")
    if sep and name in LAYOUTS:
        return Path(root) if root else None
    if spec.source in LAYOUTS:
        return None
    return Path(spec.source)


def source_summary(spec: PrepareSpec) -> str | None:
    """Names, sizes and mtimes of the source folder and its entries two levels down (None: the folder is gone).

    Adding, removing or replacing a class folder or a top-level archive changes it; it never reads images.
    """
    root = _source_root(spec)
    if root is None:
        return f"builtin:{spec.source}"
    if not root.is_dir():
        return None
    digest = hashlib.sha1()
    stack: list[tuple[Path, int]] = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat()
            except OSError:
                continue
            rel = os.path.relpath(entry.path, root)
            digest.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            if entry.is_dir() and depth < 1:
                stack.append((Path(entry.path), depth + 1))
    if spec.val_labels and os.path.isfile(spec.val_labels):
        st = os.stat(spec.val_labels)
        digest.update(f"val_labels|{st.st_size}|{st.st_mtime_ns}".encode())
    return digest.hexdigest()


def fingerprint(out: Path, spec: PrepareSpec, summary: str | None) -> str:
    body = json.dumps([str(out), spec.args(), summary], sort_keys=True, default=str)
    return hashlib.sha1(body.encode()).hexdigest()


# ---- which writes a sweep needs --------------------------------------------------------------------------------
def _specs_and_outs(source: Any) -> list[tuple[str, PrepareSpec, Any]]:
    """(role, spec, the role's data.shards) for every role that says how its shards are made."""
    if hasattr(source, "prepare_specs") and hasattr(source, "dataset_sections"):  # a SweepConfig, once wired
        specs = source.prepare_specs()
        sections = source.dataset_sections()
        return [(role, spec, (sections.get(role) or {}).get("shards")) for role, spec in specs.items()]
    if hasattr(source, "datasets") and hasattr(source, "dataset_sections"):  # a SweepConfig before the wiring
        source = source.datasets or {}
    if not isinstance(source, Mapping):
        raise TypeError(f"prepare_jobs takes a sweep or role sections, not {type(source).__name__}")
    out = []
    for role, section in source.items():
        if isinstance(section, Mapping) and section.get("prepare") is not None:
            out.append((str(role), parse_prepare(str(role), section["prepare"]), section.get("shards")))
    return out


def prepare_jobs(source: Any, check: bool = True) -> list[PrepareJob]:
    """The writes a sweep needs, one per output folder (roles sharing shards share a write), in role order.

    ``source``: a :class:`~launch.planning.schema.SweepConfig` (its ``prepare_specs()``) or the raw role sections
    (role -> a data section that may hold ``prepare``). With ``check``, every write that is not complete has its
    raw source opened and listed now: a missing or malformed dataset is one UserError naming role and path.
    """
    jobs: dict[Path, PrepareJob] = {}
    for role, spec, shards in _specs_and_outs(source):
        if not shards:
            raise UserError(f"datasets.{role}.prepare needs datasets.{role}.shards: the folder the write fills "
                            f"and the cells read (with loader: {spec.format}); add it")
        out = Path(str(shards)).expanduser()
        if out in jobs:
            if jobs[out].spec != spec:
                other = jobs[out].roles[0]
                raise UserError(f"datasets.{role}.prepare and datasets.{other}.prepare write the same shards "
                                f"{out} with other arguments; give one of them another data.shards")
            jobs[out].roles.append(role)
            continue
        summary = source_summary(spec)
        job = PrepareJob(out, spec, [role], fingerprint(out, spec, summary), source_present=summary is not None)
        jobs[out] = job
    result = list(jobs.values())
    if check:
        for job in result:
            if not job.complete():
                check_source(job)
    return result


def check_source(job: PrepareJob) -> None:
    """Open and list the raw dataset the way the writer will; any problem is one line naming role and path."""
    from datamodules.sources.layouts import resolve_source

    spec, role = job.spec, job.roles[0]
    where = f"datasets.{role}.prepare.source {spec.source}"
    if (job.out / INDEX).is_file():  # the writer would refuse it in the job, an hour later: say it now
        raise UserError(f"datasets.{role}.shards {job.out} already holds a write of another source or other "
                        "arguments; delete that folder to rewrite it, or give the role another data.shards")
    try:
        layout = resolve_source(spec.source, val_labels=spec.val_labels)
        listing = layout.listing()
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise UserError(f"{where}: cannot read the raw dataset ({type(exc).__name__}: {exc}); fix the path or "
                        "the layout name") from None
    if not any(listing.parts.get(part) for part in ("train", "val")):
        raise UserError(f"{where}: the raw dataset lists no images; point it at the extracted dataset")


def pending(jobs: Iterable[PrepareJob]) -> list[PrepareJob]:
    return [job for job in jobs if not job.complete()]
