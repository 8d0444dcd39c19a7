"""`mkf sweep dashboard`: the sweep's W&B workspace, built offline from a real plan and checked against what the
sweep's cells and report log; saved to a stand-in W&B server (the only thing not real: a local HTTP server that
answers W&B's GraphQL), or kept pending offline and saved by `mkf sweep sync`.

Expected keys come from the code that logs them (read as source: those modules import torch), from the planned
cell configs and from real offline W&B runs of a trained sweep (the slow test), never from a list written here.
"""

from __future__ import annotations

import ast
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from configs import config_path
from launch.cli import main
from launch.planning.planner import plan_sweep
from launch.planning.schema import load_sweep
from launch.views import dashboard as dash
from launch.views.dashboard import REPORT_FIGURE_KEY, REPORT_RESULTS_KEY, report_table_keys
from pipeline.models.unit_counts import unit_count

REPO = Path(__file__).resolve().parents[1]
PROJECT = "mkf-dashboard-test"


def demo_sweep(tmp_path: Path, **changes: Any) -> Path:
    """configs/demo.yaml as shipped, into ``tmp_path/out``, with W&B on (the demo itself logs nowhere)."""
    raw = yaml.safe_load(config_path("demo.yaml").read_text())
    raw.update({"output_dir": str(tmp_path / "out"), "wandb": {"enabled": True, "project": PROJECT}, **changes})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def logged_in_source(relpath: str, prefixes: tuple[str, ...]) -> set[str]:
    """String constants (f-string parts included) starting with ``prefixes`` in a module of the project."""
    tree = ast.parse((REPO / relpath).read_text())
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and n.value.startswith(prefixes)}


def config_has(config: dict[str, Any], dotted: str) -> bool:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def panels(workspace: Any, section: str) -> list[Any]:
    (found,) = [s for s in workspace.sections if s.name == section]
    return found.panels


def names(metrics: list[Any]) -> list[str]:
    return [m if isinstance(m, str) else m.name for m in metrics]


def without_ids(spec: Any) -> Any:
    """A view spec without its panels' random ``__id__``s (a rebuilt workspace draws new ones)."""
    if isinstance(spec, dict):
        return {k: without_ids(v) for k, v in spec.items() if k != "__id__"}
    return [without_ids(v) for v in spec] if isinstance(spec, list) else spec


def pending_workspace(out: Path) -> tuple[dict[str, Any], Any]:
    (entry,) = json.loads((out / dash.DASHBOARD_FILE).read_text())["workspaces"]
    return entry, dash.from_spec(entry["spec"])


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


# ---- the stand-in W&B server ------------------------------------------------------------------------------
class FakeWandb:
    """W&B's GraphQL endpoint, enough for `wandb.Api()` and `upsertView`: records every view it is sent."""

    def __init__(self) -> None:
        self.views: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    request = json.loads(body)
                except ValueError:
                    request = {}
                query = request.get("query", "") if isinstance(request, dict) else ""
                if "upsertView" in query:
                    variables = request["variables"]
                    fake.views.append(variables)
                    name = variables.get("name")
                    view = {"id": variables.get("id") or f"view-{len(fake.views)}", "name": name}
                    data: dict[str, Any] = {"upsertView": {"view": view, "inserted": "id" not in variables}}
                elif "viewer" in query:
                    data = {"viewer": {"id": "u1", "entity": "mkf-team", "username": "mkf", "email": None,
                                       "flags": "{}", "teams": {"edges": []}}}
                else:
                    data = {}
                out = json.dumps({"data": data}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def wandb_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeWandb]:
    server = FakeWandb()
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", server.url)
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield server
    server.server.shutdown()


# ---- offline: built from the plan, checked against it ------------------------------------------------------
@pytest.mark.usefixtures("offline")
def test_offline_dashboard_of_the_demo_sweep_shows_what_its_cells_log(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    sweep = demo_sweep(tmp_path)
    plan = plan_sweep(load_sweep(sweep))
    assert main(["sweep", "dashboard", str(sweep)]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [dash.DASHBOARD_FILE]  # nothing else written
    entry, workspace = pending_workspace(out)
    assert entry["status"] == "pending" and "pending in" in printed and "mkf sweep sync" in printed

    # the pending file round-trips: loading it gives back the very spec W&B would receive
    assert dash.to_spec(workspace) == entry["spec"]
    # the runset: the W&B project, entity and group the cells log to, grouped by keys their configs hold
    configs = [plan.configs[c.id] for c in plan.cells]
    groups = {c["wandb"]["group"] for c in configs}
    (project,) = {c["wandb"]["project"] for c in configs}
    (entity,) = {c["wandb"]["entity"] or "" for c in configs}
    assert (workspace.project, workspace.entity, groups) == (project, entity, {"demo"})
    assert workspace.runset_settings.filters == f"Metric(\"Group\") == '{groups.pop()}'"
    grouped = [g.name for g in workspace.runset_settings.groupby]
    for key in grouped:
        assert all(config_has(c, key) for c in configs), key
    assert {tuple(config_has(c, k) and c["labels"][k.split(".")[1]] for k in grouped) for c in configs} == \
        {(c.arch, c.variant) for c in plan.cells}  # groups = the plan's (arch, variant) pairs
    assert [s.name for s in workspace.sections] == [dash.FIGURE_SECTION[plan.kind], dash.HEALTH_SECTION,
                                                    dash.FILTER_SECTION]
    for section in workspace.sections:  # what was printed is what was built
        assert f"section {section.name!r}: {len(section.panels)} panels" in printed

    # (1) the figure: the report run's figure and tables, the cells' top-1 along the depth axis
    figure = panels(workspace, dash.FIGURE_SECTION["depth_curve"])
    media = {k for p in figure if type(p).__name__ == "MediaBrowser" for k in p.media_keys}
    tables = {p.table_name for p in figure if type(p).__name__ == "WeavePanelSummaryTable"}
    assert media == {REPORT_FIGURE_KEY} and tables == {REPORT_RESULTS_KEY, *report_table_keys("depth_curve")}
    (scatter,) = [p for p in figure if type(p).__name__ == "ScatterPlot"]
    assert scatter.x.name == "labels.depth" and all(config_has(c, scatter.x.name) for c in configs)
    depths = {c["labels"]["depth"] for c in configs if c["labels"]["stage"] == "transfer"}
    assert depths == set(yaml.safe_load(sweep.read_text())["depths"])  # the x axis the cells fill in
    val_keys = logged_in_source("pipeline/training/classifier.py", ("train/", "val/"))
    assert scatter.y.name in val_keys
    # (2) training health: every perf/ key the monitor logs, loss and top-1 as the module logs them, every lr
    health = panels(workspace, dash.HEALTH_SECTION)
    shown = {k for p in health for k in names(p.y)}
    perf = logged_in_source("pipeline/training/monitoring.py", ("perf/",))
    assert perf and perf <= shown
    assert shown - perf <= val_keys and {"train/loss", "val/loss"} & shown == {"train/loss", "val/loss"}
    (lr,) = [p for p in health if p.metric_regex]
    lr_keys = [f"lr-{opt}/pg{i}" for opt in ("AdamW", "SGD") for i in (1, 2)] + ["lr-AdamW"]
    assert all(re.fullmatch(lr.metric_regex, k) for k in lr_keys)  # LearningRateMonitor's names
    assert not any(re.fullmatch(lr.metric_regex, k) for k in shown)
    # (3) filter grids: what pipeline/filters/dashboard.py logs, one DoG-share bar per depthwise unit of the sweep
    from pipeline.filters.families import SHARE_KEYS

    assert dash.SHARE_FAMILIES == SHARE_KEYS
    filters = panels(workspace, dash.FILTER_SECTION)
    logged = logged_in_source("pipeline/filters/dashboard.py", ("filters/",))
    assert {k for p in filters if type(p).__name__ == "MediaBrowser" for k in p.media_keys} <= logged
    units = max(unit_count(c.arch, "depthwise") for c in plan.cells)
    bars = [names(p.metrics) for p in filters if type(p).__name__ == "BarPlot"]
    assert units == 5 and [f"unit_{i}" for i in range(1, units + 1)] in [[k.split("/")[-1] for k in b] for b in bars]
    share = re.compile(r"(filters/share/)([a-z0-9_]+)(/unit_(\d+))?")  # f"filters/share/{key}[/unit_{i}]" there
    for key in {k for b in bars for k in b}:
        m = share.fullmatch(key)
        assert m and m.group(1) in logged and m.group(2) in SHARE_KEYS, key
        assert m.group(4) is None or 1 <= int(m.group(4)) <= units


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize("name", ["fig5_resnet_family.yaml", "cross_domain.yaml"])
def test_each_kind_shows_its_report_tables_and_resnets_get_no_filter_section(name: str, tmp_path: Path) -> None:
    """The catalog's retention and matrix sweeps (real configs): their kind's tables; ResNets have no DS filters."""
    raw = yaml.safe_load((REPO / "configs" / "paper" / name).read_text())
    raw["output_dir"] = str(tmp_path / "out")
    (tmp_path / name).write_text(yaml.safe_dump(raw))
    plan = plan_sweep(load_sweep(tmp_path / name))
    (workspace,) = dash.build_workspaces(plan)
    (target,) = dash.wandb_targets(plan)
    assert target.project == plan.configs[plan.cells[0].id]["wandb"]["project"]
    figure = panels(workspace, dash.FIGURE_SECTION[plan.kind])
    tables = {p.table_name for p in figure if type(p).__name__ == "WeavePanelSummaryTable"}
    assert tables == {REPORT_RESULTS_KEY, *report_table_keys(plan.kind)} and len(tables) == 3
    has_dw = any(unit_count(c.arch, "depthwise") for c in plan.cells)
    assert (dash.FILTER_SECTION in [s.name for s in workspace.sections]) == has_dw
    assert dash.to_spec(dash.from_spec(dash.to_spec(workspace))) == dash.to_spec(workspace)


@pytest.mark.usefixtures("offline")
def test_a_sweep_that_logs_nowhere_is_one_error_line_and_writes_nothing(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    sweep = demo_sweep(tmp_path, wandb={"enabled": False})
    assert main(["sweep", "dashboard", str(sweep)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mkf: error:") and "wandb.enabled" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("offline")
def test_without_wandb_workspaces_the_error_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(__import__("sys").modules, "wandb_workspaces", None)  # as if not installed
    assert main(["sweep", "dashboard", str(demo_sweep(tmp_path))]) == 2
    assert "pip install 'masterkey-filters[dashboard]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---- online: saved (to the stand-in server), updated in place, and pending ones saved by sync ---------------
def test_online_dashboard_is_saved_once_and_updated_in_place(tmp_path: Path, wandb_server: FakeWandb,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    sweep = demo_sweep(tmp_path)
    assert main(["sweep", "plan", str(sweep)]) == 0
    capsys.readouterr()
    assert main(["sweep", "dashboard", str(sweep)]) == 0
    printed = capsys.readouterr().out
    (sent,) = wandb_server.views
    assert (sent["entityName"], sent["projectName"], sent["type"]) == ("mkf-team", PROJECT, "project-view")
    spec = json.loads(sent["spec"])
    (runset,) = spec["section"]["runSets"]
    assert [(f["key"]["name"], f["value"]) for f in runset["filters"]["filters"]] == [("group", "demo")]
    entry, _ = pending_workspace(tmp_path / "out")
    assert entry["status"] == "saved" and entry["entity"] == "mkf-team"
    assert entry["url"].startswith(f"{wandb_server.url}/mkf-team/{PROJECT}?nw=") and entry["url"] in printed
    assert json.loads(json.dumps(entry["spec"]["spec"])) == spec  # the record holds what the server got

    assert main(["sweep", "dashboard", str(tmp_path / "out")]) == 0  # again, from the sweep folder
    first, second = wandb_server.views
    assert "id" not in first and second["id"] == "view-1" and second["name"] == first["name"]
    assert without_ids(json.loads(second["spec"])) == without_ids(spec)  # the same panels (fresh panel ids)


def test_sync_saves_the_dashboard_left_pending_offline(tmp_path: Path, wandb_server: FakeWandb,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    sweep = demo_sweep(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["sweep", "plan", str(sweep)]) == 0
    assert main(["sweep", "dashboard", str(tmp_path / "out")]) == 0
    assert not wandb_server.views
    pending, _ = pending_workspace(tmp_path / "out")
    assert main(["sweep", "sync", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "would save the pending W&B workspace" in capsys.readouterr().out and not wandb_server.views
    assert main(["sweep", "sync", str(tmp_path / "out")]) == 0  # still offline: it stays pending
    assert not wandb_server.views and pending_workspace(tmp_path / "out")[0]["status"] == "pending"

    monkeypatch.delenv("WANDB_MODE")
    assert main(["sweep", "sync", str(tmp_path / "out")]) == 0  # back online: no runs to upload, the view saved
    (sent,) = wandb_server.views
    assert json.loads(sent["spec"]) == pending["spec"]["spec"]  # exactly the pending spec
    saved, _ = pending_workspace(tmp_path / "out")
    assert saved["status"] == "saved" and saved["entity"] == "mkf-team" and saved["url"]
    assert main(["sweep", "sync", str(tmp_path / "out")]) == 0
    assert len(wandb_server.views) == 1  # nothing pending any more


# ---- the real thing: a trained sweep's offline runs hold every key the dashboard reads ---------------------
def read_run(path: Path) -> dict[str, Any]:
    """History (key -> last value), summary and config keys, group and project of one offline W&B run."""
    from wandb.proto import wandb_internal_pb2 as pb

    from tests.test_monitoring import _records

    [log] = list(path.glob("run-*.wandb"))
    run: dict[str, Any] = {"history": {}, "summary": set(), "config": {}, "group": None, "project": None}
    for raw in _records(log):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            run["history"].update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                   for item in record.history.item})
        elif kind == "summary":
            run["summary"].update(item.key or "/".join(item.nested_key) for item in record.summary.update)
        elif kind in ("run", "config"):
            config = record.run.config if kind == "run" else record.config
            run["config"].update({item.key: json.loads(item.value_json) for item in config.update})
            if kind == "run":
                run.update(group=record.run.run_group, project=record.run.project)
    run["config"] = {k: v.get("value", v) if isinstance(v, dict) else v for k, v in run["config"].items()}
    return run


def holds(history: dict[str, Any], key: str, media_type: str) -> bool:
    """Whether a run's history logged ``key`` as W&B media of ``media_type`` (image-file, table-file)."""
    return history.get(f"{key}/_type") == media_type


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_root")
def test_every_panel_reads_a_key_that_the_trained_sweeps_runs_hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The demo sweep cut to 3 cells, trained with W&B offline and reported; then its dashboard: every key of
    every panel is in the cells' or the report's runs (device memory aside: CUDA only), the runset filter is
    the runs' group, and the project theirs."""
    import wandb

    from launch.core.plan import materialize_configs
    from pipeline.config import load_cell_config
    from pipeline.training.train import train_cell

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    sweep = demo_sweep(tmp_path, seeds=[0], archs=[{"arch": "convnext_demo", "unit_kind": "depthwise"}],
                       depths=[1], variants=["AnB"],
                       data={"image_size": 32, "batch_size": 64, "max_train_samples": 256, "max_val_samples": 128},
                       stages={"base": {"trainer": {"max_epochs": 1}}})
    raw = yaml.safe_load(sweep.read_text())
    raw["train"]["trainer"].update(max_epochs=1, log_every_n_steps=1)  # 4 steps: each one a logger step
    sweep.write_text(yaml.safe_dump(raw))
    plan = plan_sweep(load_sweep(sweep))
    assert len(plan.cells) == 3
    materialize_configs(plan, plan.cells)
    wandb.finish()
    for cell in plan.cells:  # in planned order: bases first (in-process: the same training as `mkf train`)
        train_cell(load_cell_config(cell.config_path))
        wandb.finish()
    assert main(["sweep", "plan", str(sweep)]) == 0 and main(["report", str(tmp_path / "out")]) == 0
    wandb.teardown()  # flush every transaction log
    assert main(["sweep", "dashboard", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    _, workspace = pending_workspace(tmp_path / "out")

    cells = [read_run(p) for c in plan.cells for p in Path(c.run_dir).glob("wandb/offline-run-*")]
    (report,) = [read_run(p) for p in (tmp_path / "out").glob("wandb/offline-run-*")]
    assert len(cells) == 3
    runs = [*cells, report]
    assert {r["group"] for r in runs} == {"demo"} and {r["project"] for r in runs} == {workspace.project}
    assert workspace.runset_settings.filters == "Metric(\"Group\") == 'demo'"
    history = {k: v for r in runs for k, v in r["history"].items()}
    summary = set().union(*(r["summary"] for r in runs))

    def config_key(key: str) -> None:
        assert all(config_has(r["config"], key) for r in cells), f"config {key} not in every cell's run"

    for key in (g.name for g in workspace.runset_settings.groupby):
        config_key(key)
    missing = set()
    for section in workspace.sections:
        for panel in section.panels:
            kind = type(panel).__name__
            if kind == "LinePlot":
                missing |= set(names(panel.y)) - set(history)
                if panel.metric_regex:
                    assert any(re.fullmatch(panel.metric_regex, k) for k in history), panel.metric_regex
            elif kind == "ScatterPlot":
                config_key(panel.x.name)
                assert panel.y.name in summary
            elif kind == "BarPlot":
                missing |= set(names(panel.metrics)) - summary
                config_key(panel.groupby.name) if panel.groupby else None
            elif kind == "MediaBrowser":  # an image is logged as a dict: figure/_type, figure/path, ...
                missing |= {k for k in panel.media_keys if not holds(history, k, "image-file")}
            elif kind == "WeavePanelSummaryTable":
                assert holds(report["history"], panel.table_name, "table-file"), panel.table_name
            else:
                raise AssertionError(f"a panel this test does not check: {kind}")
    assert missing == {dash.DEVICE_MEMORY}, f"panels read keys no run holds: {sorted(missing)}"
