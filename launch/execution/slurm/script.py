"""The batch scripts of a sweep's arrays: the template they are rendered from, the array's sbatch command line, and
the bundles (several short cells per array task) packed by estimated time. Pure: nothing here calls Slurm.

Array task i of an array trains the cells whose line in the array's cells file has TASK=i (one cell, or a bundle
of several), so one ``sbatch`` call covers hundreds of cells.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from launch.core.plan import Cell, SweepPlan
from launch.planning.profiles import SlurmProfile


class ScriptTemplate(Template):
    delimiter = "@"  # bash owns $


def comment_safe(value: str) -> str:
    """Values shown in script comments: no newline can end the comment and start a command."""
    return re.sub(r"[^\w.+-]", "_", value)


@dataclass
class ArraySubmission:
    """One sbatch call: cells of one (stage, profile) that wait for the same base cells; script and command line."""

    stage: str
    profile_name: str
    profile: SlurmProfile
    cells: list[Cell]
    script: Path
    cells_file: Path
    waits_for: tuple[str, ...] = ()  # the unfinished cells (ids) every cell of this array waits for
    after: list[str] = field(default_factory=list)  # their array task ids (``123_4``), afterok
    extra: list[str] = field(default_factory=list)  # more sbatch options (e.g. --hold)
    job_id: str | None = None
    bundles: list[list[Cell]] = field(default_factory=list)  # array task i trains bundles[i] (default: a cell each)

    def __post_init__(self) -> None:
        if not self.bundles:
            self.bundles = [[c] for c in self.cells]

    @property
    def tag(self) -> str:
        """Unique per submission (the script's name holds a stamp and an index): an sbatch whose reply timed out
        is found in the queue by it, so the next run does not submit the same cells again."""
        return f"mkf:{comment_safe(self.script.stem)}"

    def command(self, sweep: str, log_dir: Path) -> list[str]:
        array = f"0-{len(self.bundles) - 1}" + (f"%{self.profile.array_throttle}" if self.profile.array_throttle else "")
        cmd = ["sbatch", "--parsable", f"--job-name=mkf-{comment_safe(sweep)}-{self.stage}", f"--array={array}",
               f"--comment={self.tag}",
               f"--output={log_dir.absolute() / '%A_%a.out'}", "--open-mode=append", f"--chdir={Path.cwd()}",
               *self.profile.sbatch_options()]
        if self.after:
            # a failed (or cancelled) base task cancels this array at once instead of leaving it pending forever
            cmd += [f"--dependency=afterok:{':'.join(self.after)}", "--kill-on-invalid-dep=yes"]
        return [*cmd, *self.extra, str(self.script)]


def render_script(plan: SweepPlan, sub: ArraySubmission) -> str:
    """The array's batch script; every value that came from a config is shell-quoted."""
    p = sub.profile
    return ScriptTemplate(read_template()).substitute(
        sweep=comment_safe(plan.name), stage=sub.stage, profile=comment_safe(sub.profile_name),
        cells_file=shlex.quote(str(sub.cells_file.absolute())),
        cell_logs=_dquote(str(cell_log_dir(plan).absolute())),
        setup="\n".join(p.setup), env=env_lines(p),
        max_restarts=int(p.max_restarts), python=shlex.quote(p.python or sys.executable), nodes=int(p.nodes),
        devices=int(p.devices), accelerator=shlex.quote(p.accelerator),
        checkpoint_every_s=int(p.checkpoint_every_min * 60), preempt_check_steps=int(p.preempt_check_steps),
        cell_timeout_s=int(p.cell_timeout_s),
        one_rank=int(p.nodes * p.devices == 1), hide_gpus="" if p.gpus_per_node else "CUDA_VISIBLE_DEVICES= ",
    )


def env_lines(p: SlurmProfile) -> str:
    env = {"WANDB_MODE": p.wandb_mode, **p.env}
    return "\n".join(f"export {k}={shlex.quote(str(v))}" for k, v in env.items() if re.match(r"^[A-Z_][A-Z0-9_]*$", k))


def _dquote(text: str) -> str:
    """A path for inside a bash double-quoted string (the cell id is appended there)."""
    return re.sub(r'([\\"$`])', r"\\\1", text)


def cell_log_dir(plan: SweepPlan) -> Path:
    """Where each cell's own log lives on Slurm: beside the local executor's (``OUTPUT/logs/<cell id>.log``)."""
    return plan.output_dir / "logs"


def read_template(name: str = "cell_array.sbatch") -> str:
    """A batch script template, shipped as package data (works from a checkout and from `pip install .`)."""
    from importlib.resources import files

    return files("slurm").joinpath("templates", name).read_text()


# ---- bundles: several short cells per array task ---------------------------------------------------------------
def cell_seconds(plan: SweepPlan, cells: Sequence[Cell]) -> dict[str, float]:
    """Each cell's estimated training time (launch.planning.cost, the table's GPU); cells the table cannot price are absent."""
    from launch.planning.cost import cell_gpu_hours, load_costs

    table = load_costs()
    gpu = str(table.get("gpu", "a100"))
    per_template: dict[str, float | None] = {}
    out: dict[str, float] = {}
    for cell in cells:
        key = cell.template if cell.template is not None and cell.template in plan.templates else None
        if key is not None and key in per_template:
            hours = per_template[key]
        else:
            config = plan.templates[key] if key is not None else plan.configs[cell.id]
            hours, _ = cell_gpu_hours(config, table, gpu)
            if key is not None:
                per_template[key] = hours
        if hours is not None:
            out[cell.id] = hours * 3600
    return out


def pack_bundles(cells: Sequence[Cell], seconds: dict[str, float], target_s: float | None) -> list[list[Cell]]:
    """Cells in order, packed greedily into bundles whose estimated time stays within ``target_s``: K equal cells
    of estimate t make bundles of K = floor(target / t). A cell the table cannot price, or one at least as long
    as the target, runs alone; so does every cell without a target."""
    if not target_s:
        return [[c] for c in cells]
    bundles: list[list[Cell]] = []
    current: list[Cell] = []
    used = 0.0
    for cell in cells:
        t = seconds.get(cell.id)
        if t is None or t >= target_s:
            bundles.append([cell])
            continue
        if current and used + t > target_s * (1 + 1e-9):
            bundles.append(current)
            current, used = [], 0.0
        current.append(cell)
        used += t
    if current:
        bundles.append(current)
    return bundles
