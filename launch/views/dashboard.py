"""`mkf sweep dashboard`: the sweep's W&B workspace, built with ``wandb-workspaces`` from the sweep's plan.

A sweep's cells each log one W&B run (grouped by the sweep, job type = stage) and ``mkf report`` logs one more, the
report run, holding the figure and the tables. W&B's default workspace shows those thousands of runs as hundreds
of auto-generated panels; this module builds the three views a reader of the paper wants instead:

1. **the figure of the sweep's kind**: the report's figure and tables (relative top-1 by depth with its CI, per
   arch and variant) and, live from the cells' own runs, top-1 by transfer depth;
2. **training health**: loss, top-1, learning rates, images/s, data-wait share, memory, step time;
3. **the filter grids** of the DS-CNN cells (Figure-1 grids, kernel-family shares, DoG share per unit).

The runset is filtered to the sweep's W&B group(s) and grouped by arch and variant, one workspace per W&B
(entity, project) the sweep's cells log to (read from the planned cell configs, never assumed).

Building a workspace is offline (the ``wandb_workspaces`` models are plain pydantic objects); only saving it
talks to the server. Online (an API key configured, ``WANDB_MODE`` not offline) the workspace is saved and its
URL printed; offline, what would be created is printed and the workspace is kept in the sweep folder
(:data:`DASHBOARD_FILE`, the exact wire spec W&B receives), saved by the next online ``mkf sweep dashboard`` or by
``mkf sweep sync``. A saved view's name is kept there too, so a later call updates the same view instead of
adding another.

Torch-free: a login-node command. ``wandb_workspaces`` (the ``dashboard`` extra) is imported only when a
workspace is built or saved.
"""

from __future__ import annotations

import json
import netrc
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from rich.console import Console

from datamodules.errors import UserError
from pipeline.models.unit_counts import unit_count

if TYPE_CHECKING:
    from launch.core.plan import SweepPlan

DASHBOARD_FILE = "dashboard.json"
INSTALL_HINT = "pip install 'masterkey-filters[dashboard]'"

# ---- what the report run holds ------------------------------------------------------------------------------
# Logged by launch.views.wandb_sync.log_report (which takes these names from here: this module must stay torch-free,
# and that one imports the training loggers): the figure, the per-cell table, and one table per CSV the report
# writes besides results.csv (summary.csv; retention.csv or matrix.csv for those kinds), named by the file's stem
# (launch/views/report.py).
REPORT_FIGURE_KEY = "figure"
REPORT_RESULTS_KEY = "results"
REPORT_TABLES = {"depth_curve": ("summary",), "retention": ("summary", "retention"), "matrix": ("summary", "matrix")}


def report_table_keys(kind: str) -> tuple[str, ...]:
    return REPORT_TABLES.get(kind, ("summary",))

# ---- what the cells log -------------------------------------------------------------------------------------
# The keys below are written by the training code (torch-side modules a login-node command must not import):
# pipeline/training/classifier.py (train/, val/), Lightning's LearningRateMonitor (lr-<Optimizer>[/pg<N>]),
# pipeline/training/monitoring.py (perf/), pipeline/filters/dashboard.py (filters/). tests/test_dashboard.py
# trains a planned cell with W&B offline and checks that its run holds every key a panel reads.
TRAIN_LOSS = "train/loss"
VAL_LOSS = "val/loss"
TRAIN_TOP1 = "train/top1"
VAL_TOP1 = "val/top1"
LR_REGEX = "lr-.*"  # one key per optimizer parameter group: lr-AdamW/pg1, lr-AdamW/pg2, ...
IMAGES_PER_S = "perf/images_per_s"  # all ranks
IMAGES_PER_S_DEVICE = "perf/images_per_s_device"
DATA_WAIT_SHARE = "perf/data_wait_share"
STEP_TIME = "perf/step_time_s"
EPOCH_TIME = "perf/epoch_time_s"
HOST_MEMORY = "perf/peak_host_memory_gb"
DEVICE_MEMORY = "perf/peak_device_memory_gb"  # CUDA runs only
FILTER_GRID = "filters/grid"
# kernel shares per family (pipeline/filters/families.py SHARE_KEYS, whose scipy import would cost a login-node
# command 2 s; tests/test_dashboard.py checks the two agree): over all depthwise kernels, and per unit (1-based)
SHARE_FAMILIES = ("delta", "gauss", "dog", "dog_on", "dog_off", "d1", "laplacian", "d2", "other")
FAMILY_SHARE = "filters/share/{}"
FAMILY_SHARE_UNIT = "filters/share/{}/unit_{}"
# config keys of a cell's run (the planner's labels, launch.core.plan.build_config; W&B config = the cell config)
ARCH, VARIANT, DEPTH, SOURCE, TARGET = (f"labels.{k}" for k in ("arch", "variant", "depth", "source", "target"))
GROUP_BY = (ARCH, VARIANT)

FIGURE_SECTION = {"depth_curve": "Figure: relative top-1 by transfer depth",
                  "retention": "Figure: retention per model size",
                  "matrix": "Figure: source x target matrix"}
HEALTH_SECTION = "Training health"
FILTER_SECTION = "Filter grids (depthwise units)"


@dataclass
class Target:
    """Where a sweep's runs live in W&B: one (entity, project), its groups, and what its cells train."""

    entity: str  # "" when the cells name none: the API key's default entity, resolved when saving
    project: str
    groups: list[str]
    archs: list[str] = field(default_factory=list)
    depthwise_units: int = 0  # the most depthwise units of any arch here (0: no filter grids)


def wandb_targets(plan: SweepPlan) -> list[Target]:
    """The W&B (entity, project) pairs the plan's cells log to, from their resolved configs."""
    found: dict[tuple[str, str], Target] = {}
    for cell in plan.cells:
        w = plan.configs[cell.id]["wandb"]
        if not w.get("enabled"):
            continue
        key = (w.get("entity") or "", w["project"])
        target = found.setdefault(key, Target(key[0], key[1], []))
        group = w.get("group") or plan.name
        if group not in target.groups:
            target.groups.append(group)
        if cell.arch not in target.archs:
            target.archs.append(cell.arch)
    if not found:
        raise UserError(f"sweep {plan.name}: its cells do not log to W&B (wandb.enabled is false); set "
                        "`wandb: {enabled: true, project: ...}` in the sweep, re-plan, then build the dashboard")
    for target in found.values():
        target.depthwise_units = max(unit_count(a, "depthwise") for a in target.archs)
    return list(found.values())


# ---- building ---------------------------------------------------------------------------------------------
def _modules() -> tuple[Any, Any]:
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError:
        raise UserError(f"`mkf sweep dashboard` needs the wandb-workspaces package; {INSTALL_HINT}") from None
    return ws, wr


def figure_panels(kind: str, wr: Any) -> list[Any]:
    """The report run's figure and tables, then the cells' own top-1 along the kind's axis."""
    panels = [wr.MediaBrowser(title=f"the report's figure ({kind}, `mkf report`)", media_keys=[REPORT_FIGURE_KEY],
                              layout=wr.Layout(w=16, h=10))]
    # (default sizes: wandb-workspaces reloads a table panel's layout as the default, so a pending spec would
    # not come back as written)
    panels += [wr.WeavePanelSummaryTable(table_name=t) for t in (*report_table_keys(kind), REPORT_RESULTS_KEY)]
    top1 = wr.SummaryMetric(VAL_TOP1)
    if kind == "depth_curve":
        panels += [wr.ScatterPlot(title="top-1 by transfer depth n (each cell)", x=wr.Config(DEPTH), y=top1),
                   wr.BarPlot(title="top-1 per variant (mean over depths, seeds)", metrics=[top1],
                              groupby=wr.Config(VARIANT), groupby_aggfunc="mean", groupby_rangefunc="stderr")]
    elif kind == "retention":
        panels.append(wr.BarPlot(title="top-1 per model size", metrics=[top1], groupby=wr.Config(ARCH),
                                 groupby_aggfunc="mean", groupby_rangefunc="stderr"))
    else:
        panels += [wr.BarPlot(title=f"top-1 per {axis}", metrics=[top1], groupby=wr.Config(key),
                              groupby_aggfunc="mean", groupby_rangefunc="stderr")
                   for axis, key in (("source", SOURCE), ("target", TARGET))]
    return panels


def health_panels(wr: Any) -> list[Any]:
    """Per-step curves of every cell: is it learning, is it fed, does it fit?"""
    return [wr.LinePlot(title="loss", y=[TRAIN_LOSS, VAL_LOSS]),
            wr.LinePlot(title="top-1", y=[TRAIN_TOP1, VAL_TOP1]),
            wr.LinePlot(title="learning rate (every parameter group)", metric_regex=LR_REGEX),
            wr.LinePlot(title="images/s (all ranks, one rank)", y=[IMAGES_PER_S, IMAGES_PER_S_DEVICE]),
            wr.LinePlot(title="data-wait share (time outside the training step)", y=[DATA_WAIT_SHARE],
                        range_y=(0, 1)),
            wr.LinePlot(title="peak memory, GiB (host; device on CUDA)", y=[HOST_MEMORY, DEVICE_MEMORY]),
            wr.LinePlot(title="step time, s", y=[STEP_TIME]),
            wr.LinePlot(title="epoch time, s", y=[EPOCH_TIME])]


def filter_panels(units: int, wr: Any) -> list[Any]:
    """The Figure-1 grid each finished DS-CNN cell logs, its kernels' family shares, and the DoG share per unit."""
    dog = FAMILY_SHARE.format("dog")
    return [wr.MediaBrowser(title="filter grids: first, middle, last depthwise unit", media_keys=[FILTER_GRID],
                            gallery_axis="run", layout=wr.Layout(w=16, h=10)),
            wr.BarPlot(title="DoG share (on + off, all depthwise kernels) per variant", metrics=[wr.SummaryMetric(dog)],
                       groupby=wr.Config(VARIANT), groupby_aggfunc="mean", groupby_rangefunc="stderr"),
            wr.BarPlot(title="kernel families (share of all depthwise kernels)",
                       metrics=[wr.SummaryMetric(FAMILY_SHARE.format(f)) for f in SHARE_FAMILIES],
                       orientation="v", layout=wr.Layout(w=12, h=8)),
            wr.BarPlot(title="DoG share per depthwise unit",
                       metrics=[wr.SummaryMetric(FAMILY_SHARE_UNIT.format("dog", i)) for i in range(1, units + 1)],
                       orientation="v", layout=wr.Layout(w=12, h=8))]


def workspace_name(plan: SweepPlan, target: Target) -> str:
    return f"mkf sweep {plan.name}" + (f" ({', '.join(target.groups)})" if target.groups != [plan.name] else "")


def build_workspace(plan: SweepPlan, target: Target) -> Any:
    """The workspace of one (entity, project) of the sweep: built offline, saved by :func:`save_entries`."""
    ws, wr = _modules()
    sections = [ws.Section(name=FIGURE_SECTION.get(plan.kind, f"Figure ({plan.kind})"), is_open=True,
                           panels=figure_panels(plan.kind, wr)),
                ws.Section(name=HEALTH_SECTION, is_open=True, panels=health_panels(wr),
                           layout_settings=ws.SectionLayoutSettings(columns=4, rows=2))]
    if target.depthwise_units:
        sections.append(ws.Section(name=FILTER_SECTION, is_open=True, panels=filter_panels(target.depthwise_units, wr)))
    group = ws.Metric("Group")
    only_sweep = group == target.groups[0] if len(target.groups) == 1 else group.isin(target.groups)
    return ws.Workspace(
        entity=target.entity, project=target.project, name=workspace_name(plan, target), sections=sections,
        settings=ws.WorkspaceSettings(max_runs=100),  # per panel: groups (arch x variant), not runs, when grouped
        runset_settings=ws.RunsetSettings(filters=[only_sweep], groupby=[ws.Config(k) for k in GROUP_BY]),
    )


def build_workspaces(plan: SweepPlan) -> list[Any]:
    return [build_workspace(plan, t) for t in wandb_targets(plan)]


# ---- the pending / saved record (dashboard.json) ----------------------------------------------------------
def to_spec(workspace: Any) -> dict[str, Any]:
    """The wire form W&B receives (entity, project, view name and the view spec), as JSON."""
    return workspace._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)


def from_spec(spec: dict[str, Any]) -> Any:
    """:func:`to_spec`'s inverse (the same loader ``Workspace.from_url`` uses on a view from the server)."""
    ws, _ = _modules()
    from wandb_workspaces.workspaces import internal

    return ws.Workspace._from_model(internal.View.model_validate(spec))


def read_record(sweep_dir: Path) -> list[dict[str, Any]]:
    path = sweep_dir / DASHBOARD_FILE
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text())["workspaces"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path} is not a dashboard record; delete it and run `mkf sweep dashboard` again") from None


def write_record(sweep_dir: Path, entries: list[dict[str, Any]]) -> Path:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / DASHBOARD_FILE
    tmp = path.with_name(DASHBOARD_FILE + ".tmp")
    tmp.write_text(json.dumps({"updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "workspaces": entries}, indent=1)
                   + "\n")
    tmp.replace(path)
    return path


def _same_view(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a["project"], a["name"]) == (b["project"], b["name"]) and (not a["entity"] or not b["entity"]
                                                                       or a["entity"] == b["entity"])


def new_entries(workspaces: Iterable[Any], previous: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pending entries for freshly built workspaces, keeping the view ids of the ones saved before."""
    entries = []
    for workspace in workspaces:
        entry = {"entity": workspace.entity, "project": workspace.project, "name": workspace.name,
                 "status": "pending", "url": None, "view_name": None, "view_id": None}
        for old in previous:
            if _same_view(entry, old) and old.get("view_name"):
                entry.update(entity=entry["entity"] or old["entity"], view_name=old["view_name"],
                             view_id=old["view_id"], url=old.get("url"))
        entry["spec"] = to_spec(workspace)
        entries.append(entry)
    return entries


# ---- online or not, and saving ---------------------------------------------------------------------------
def wandb_online() -> bool:
    """Whether a workspace can be saved from here: an API key for the W&B server, and not told to stay offline.

    The cells' ``wandb.mode`` is not consulted: it says where the *compute nodes* log (often offline), while the
    dashboard is built from wherever ``mkf`` runs (a login node or a laptop).
    """
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled"):
        return False
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or ""
    try:
        return netrc.netrc(os.environ.get("NETRC") or None).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def save_entries(entries: list[dict[str, Any]], console: Console) -> list[str]:
    """Save every pending entry to W&B (updating a view saved before); returns the URLs. Entries change in place."""
    import wandb

    urls = []
    for entry in entries:
        if entry["status"] != "pending":
            continue
        workspace = from_spec(entry["spec"])
        try:
            if not workspace.entity:
                workspace.entity = wandb.Api().default_entity or ""
            if entry.get("view_name"):  # the view saved before: update it rather than add another
                workspace._internal_name, workspace._internal_id = entry["view_name"], entry["view_id"] or ""
            workspace.save()
            url = workspace.url
        except Exception as exc:  # the network, the key, the server: the entry stays pending, the user is told
            raise UserError(f"could not save the W&B workspace {entry['name']!r} to "
                            f"{workspace.entity or '?'}/{workspace.project} ({type(exc).__name__}: {exc}); "
                            "it stays pending: check the API key (`wandb login`) and run `mkf sweep dashboard` "
                            "again") from None
        entry.update(status="saved", url=url, entity=workspace.entity, view_name=workspace._internal_name,
                     view_id=workspace._internal_id, spec=to_spec(workspace))
        console.print(f"saved the W&B workspace {entry['name']!r}: {url}")
        urls.append(url)
    return urls


def save_pending(sweep_dir: Path, console: Console) -> list[str]:
    """Save the workspaces an offline `mkf sweep dashboard` left pending (used by `mkf sweep sync`)."""
    entries = read_record(sweep_dir)
    if not any(e["status"] == "pending" for e in entries):
        return []
    if not wandb_online():
        console.print(f"W&B is offline here: the pending workspaces in {sweep_dir / DASHBOARD_FILE} stay pending")
        return []
    try:
        return save_entries(entries, console)
    finally:
        write_record(sweep_dir, entries)  # what was saved is recorded even if a later one failed


# ---- what the command prints ------------------------------------------------------------------------------
def panel_keys(panel: Any) -> list[str]:
    """The W&B keys a panel reads (history, summary or config keys; media and table names)."""
    def name(metric: Any) -> str:
        return metric if isinstance(metric, str) else f"{type(metric).__name__.replace('Metric', '').lower()}:" \
                                                       f"{metric.name}"

    kind = type(panel).__name__
    if kind == "LinePlot":
        return [name(m) for m in panel.y] + ([f"regex:{panel.metric_regex}"] if panel.metric_regex else [])
    if kind == "ScatterPlot":
        return [name(panel.x), name(panel.y)]
    if kind == "BarPlot":
        return [name(m) for m in panel.metrics] + ([f"by {name(panel.groupby)}"] if panel.groupby else [])
    if kind == "MediaBrowser":
        return [f"media:{k}" for k in panel.media_keys]
    if kind == "WeavePanelSummaryTable":
        return [f"table:{panel.table_name}"]
    return []


def describe(workspace: Any) -> list[str]:
    """One line per section and panel: what the workspace holds, from the workspace object itself."""
    rs = workspace.runset_settings
    lines = [f"W&B workspace {workspace.name!r} in {workspace.entity or '<your default entity>'}/"
             f"{workspace.project}: runs where {rs.filters}, grouped by "
             f"{', '.join(g.name for g in rs.groupby)}"]
    for section in workspace.sections:
        lines.append(f"  section {section.name!r}: {len(section.panels)} panels")
        for panel in section.panels:
            title = getattr(panel, "title", None) or getattr(panel, "table_name", "")
            lines.append(f"    {type(panel).__name__:<22} {title}  [{', '.join(panel_keys(panel))}]")
    return lines


def make_dashboard(plan: SweepPlan, dry_run: bool = False, console: Console | None = None) -> list[dict[str, Any]]:
    """`mkf sweep dashboard`: build the sweep's workspace(s); save them online, record them as pending offline."""
    console = console or Console()
    workspaces = build_workspaces(plan)
    for workspace in workspaces:
        for line in describe(workspace):
            console.print(line, markup=False, highlight=False)
    previous = read_record(plan.output_dir)
    entries = new_entries(workspaces, previous)
    if dry_run:
        console.print("dry run: nothing saved, nothing written")
        return entries
    if not wandb_online():
        path = write_record(plan.output_dir, entries)
        console.print(f"W&B is offline here (no API key, or WANDB_MODE=offline): nothing saved. The workspace is "
                      f"pending in {path}; the next online `mkf sweep dashboard` or `mkf sweep sync` saves it.")
        return entries
    try:
        save_entries(entries, console)
    finally:
        write_record(plan.output_dir, entries)
    return entries
