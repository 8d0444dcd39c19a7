"""Cluster profiles: what a job asks Slurm for (partition, time, nodes, GPUs...) and how a node is prepared.

Profiles are YAML (``configs/profiles.yaml``), selected with ``--profile`` and per stage from the sweep's
``slurm.profiles`` (base cells may need more nodes than transfer cells).

Configuration, so it lives with the planner: the sweep schema checks a sweep's stage profiles against it when the
sweep is loaded (both stages at one world size), and the Slurm executor (:mod:`launch.execution.slurm`) turns a
profile into sbatch options.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configs import config_path
from datamodules.errors import UserError
from pipeline.config import from_dict, load_yaml

DEFAULT_PROFILES = config_path("profiles.yaml")  # package data (importlib.resources), not a checkout path
# values that end up as sbatch arguments: no spaces, quotes or shell metacharacters
_SAFE = re.compile(r"^[A-Za-z0-9_.:,=@%+/\-\[\]]+$")


@dataclass
class SlurmProfile:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = "01:00:00"  # time limit, D-HH:MM:SS
    nodes: int = 1
    gpus_per_node: int = 0  # 0 = CPU job: one task per node
    cpus_per_task: int = 4
    mem: str | None = None  # per node, e.g. 64G
    constraint: str | None = None
    extra_sbatch: list[str] = field(default_factory=list)  # more sbatch options, e.g. ["--exclusive"]
    setup: list[str] = field(default_factory=list)  # shell lines run first on the node: module load, venv...
    env: dict[str, str] = field(default_factory=dict)  # exported before training
    python: str | None = None  # the interpreter on compute nodes (after setup); default: the one running `mkf`
    signal_grace_s: int = 120  # USR1 this long before the time limit: checkpoint + requeue
    max_restarts: int = 3  # a cell that *failed* more often than this is marked failed (preemptions never count)
    checkpoint_every_min: float = 30  # time-based last.ckpt: a KILL without warning loses at most this (0 = off)
    preempt_check_steps: int = 5  # multi-rank cells agree on a preemption every N batches (one all-reduce)
    max_submit_jobs: int | None = None  # job cap per user when sacctmgr cannot tell (QOS/association MaxSubmitJobs)
    array_throttle: int | None = None  # run at most this many tasks of an array at once (--array=...%N)
    wandb_mode: str = "offline"  # compute nodes often have no internet; `mkf sweep sync` uploads later
    # bundles: cells estimated (configs/costs.yaml) shorter than this run K = floor(task_length / estimate) to one
    # array task, one after another (30min, 2h, 00:45:00); None: one cell per task
    task_length: str | None = None
    # a cell of a bundle that runs longer than this (30min, 2h, 00:45:00) is hung: charged a failure, and the rest
    # of its bundle requeued in a fresh process; None: 3x task_length when bundles are on, else no limit
    cell_timeout: str | None = None

    @property
    def cell_timeout_s(self) -> float:
        if self.cell_timeout is not None:
            return parse_duration(self.cell_timeout)
        return 3 * self.task_length_s if self.task_length_s else 0.0

    @property
    def task_length_s(self) -> float | None:
        return None if self.task_length is None else parse_duration(self.task_length)

    def cpu_only(self) -> SlurmProfile:
        """This profile without GPUs (a data-preparation or report job borrowing a stage's profile)."""
        from dataclasses import replace

        return replace(self, gpus_per_node=0, nodes=1, task_length=None)

    @property
    def devices(self) -> int:
        return max(1, self.gpus_per_node)

    @property
    def accelerator(self) -> str:
        return "gpu" if self.gpus_per_node > 0 else "cpu"

    def sbatch_options(self) -> list[str]:
        """The resource part of the sbatch command line (no shell involved: passed as argv)."""
        opts = [f"--nodes={self.nodes}", f"--ntasks-per-node={self.devices}", f"--cpus-per-task={self.cpus_per_task}",
                f"--time={self.time}", "--requeue",
                # B: the batch shell gets it and forwards it to the running step (between two steps it was lost)
                f"--signal=B:USR1@{self.signal_grace_s}"]
        for flag, value in (("partition", self.partition), ("account", self.account), ("qos", self.qos),
                            ("mem", self.mem), ("constraint", self.constraint)):
            if value:
                opts.append(f"--{flag}={value}")
        if self.gpus_per_node:
            opts.append(f"--gpus-per-node={self.gpus_per_node}")
        return opts + list(self.extra_sbatch)


_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "hours": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``30min``, ``90s``, ``2h``, ``1.5h``, or Slurm's ``[D-]HH:MM:SS`` / ``MM:SS`` -> seconds."""
    text = str(text).strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text)
    if match and match.group(2) in _UNITS:
        return float(match.group(1)) * _UNITS[match.group(2)]
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text)
    if match:
        days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
        return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    raise UserError(f"task_length {text!r} is not a duration; use e.g. 30min, 2h, 90s or 00:30:00")


def _check(name: str, profile: SlurmProfile) -> None:
    for key in ("partition", "account", "qos", "time", "mem", "constraint"):
        value = getattr(profile, key)
        if value is not None and not _SAFE.match(str(value)):
            raise UserError(f"profile {name}: {key}={value!r} has characters Slurm does not accept; fix the profile")
    for opt in profile.extra_sbatch:
        if not opt.startswith("--") or not _SAFE.match(opt):
            raise UserError(f"profile {name}: extra_sbatch {opt!r} must be one --option=value without spaces")
    if profile.nodes < 1 or profile.gpus_per_node < 0 or profile.max_restarts < 0:
        raise UserError(f"profile {name}: nodes >= 1, gpus_per_node >= 0 and max_restarts >= 0 are required")
    if profile.checkpoint_every_min < 0 or profile.preempt_check_steps < 1:
        raise UserError(f"profile {name}: checkpoint_every_min >= 0 and preempt_check_steps >= 1 are required")
    if profile.task_length is not None:
        try:
            seconds = profile.task_length_s
        except UserError as exc:
            raise UserError(f"profile {name}: {exc}") from None
        if not seconds or seconds <= 0:
            raise UserError(f"profile {name}: task_length must be positive (or absent: one cell per task)")
    if profile.cell_timeout is not None:
        try:
            profile.cell_timeout_s  # noqa: B018  (parses it: a bad duration is this profile's error)
        except UserError as exc:
            raise UserError(f"profile {name}: cell_timeout: {exc}") from None
    if profile.max_submit_jobs is not None and profile.max_submit_jobs < 1:
        raise UserError(f"profile {name}: max_submit_jobs must be >= 1 (or absent)")


def load_profiles(path: str | Path | None = None) -> dict[str, SlurmProfile]:
    """All profiles of a profiles YAML (a mapping name -> profile), validated."""
    path = Path(path or DEFAULT_PROFILES)
    raw = load_yaml(path) or {}
    if not isinstance(raw, dict):
        raise UserError(f"{path} must map profile names to profiles")
    profiles = {}
    for name, body in raw.items():
        profile = from_dict(SlurmProfile, body or {}, f"{name}.")
        _check(str(name), profile)
        profiles[str(name)] = profile
    return profiles


def pick_profile(profiles: dict[str, SlurmProfile], name: str, where: str) -> SlurmProfile:
    if name not in profiles:
        raise UserError(f"unknown profile {name!r} ({where}); defined: {', '.join(profiles) or 'none'}")
    return profiles[name]


def profile_for_stage(sweep_slurm: dict[str, Any], stage: str, default: str | None) -> str:
    """The profile of a stage: the sweep's ``slurm.profiles.<stage>``, else ``--profile``, else 'default'."""
    return str((sweep_slurm.get("profiles") or {}).get(stage) or default or "default")


def check_stage_worlds(profiles: dict[str, SlurmProfile], sweep_slurm: dict[str, Any], default: str | None,
                       where: str = "sweep") -> None:
    """Base and transfer cells of one comparison must train on the same number of devices: the world size sets
    the global batch (and with linear scaling the LR), the per-device BatchNorm batch and the epoch's split.
    Profiles whose GPUs x nodes differ between the stages are a UserError naming both."""
    worlds = {}
    for stage in ("base", "transfer"):
        name = profile_for_stage(sweep_slurm, stage, default)
        if name not in profiles:
            return  # an unknown name is reported where the profile is picked
        profile = profiles[name]
        worlds[stage] = (name, profile.devices * profile.nodes, profile)
    (b_name, b_world, b), (t_name, t_world, t) = worlds["base"], worlds["transfer"]
    if b_world != t_world:
        raise UserError(f"{where}: base cells would train on {b_world} devices (profile {b_name}: {b.nodes} "
                        f"node(s) x {b.devices}) and transfer cells on {t_world} (profile {t_name}: {t.nodes} x "
                        f"{t.devices}), so a comparison's cells would train at different global batches; give "
                        "both stages profiles of the same GPUs x nodes (slurm.profiles), and set "
                        "trainer.global_batch_size to keep the recipe's batch on fewer GPUs")


def profile_for_cpu_stage(profiles: dict[str, SlurmProfile], sweep_slurm: dict[str, Any], stage: str,
                          default: str | None) -> tuple[str, SlurmProfile]:
    """A CPU stage's profile (``prepare``, ``report``): the sweep's ``slurm.profiles.<stage>``, else the base
    stage's profile without its GPUs (same partition, account, setup: a job that surely fits where bases run)."""
    named = (sweep_slurm.get("profiles") or {}).get(stage)
    if named:
        return str(named), pick_profile(profiles, str(named), f"stage {stage}")
    base = profile_for_stage(sweep_slurm, "base", default)
    return f"{base} (cpu)", pick_profile(profiles, base, f"stage {stage}").cpu_only()
