"""The Grafana dashboards in grafana/: structure, Grafana's own schema types, and every panel
query run against a real Prometheus that scrapes the real daemons (tests/mixin.py).

No Grafana server runs here, so "returns data" is checked the way Grafana would ask:
variables resolved from their ``label_values`` queries against the same Prometheus, then
each panel query sent as an instant or range query.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from mixin import BROKEN_SIGNAL, DASHBOARDS, NOT_YET_EXPORTED, REPO, MonitoringStack, metric_name, selectors

from exporter.config import DEFAULT_SIGNALS

UIDS = {  # stable: links between the dashboards and users' bookmarks use them
    "failure-risk-overview.json": "failure-predictor-overview",
    "target-detail.json": "failure-predictor-target",
    "predictor-health.json": "failure-predictor-health",
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_COLUMNS = 24
# What Grafana substitutes for its built-in variables, at the 1 s scrape interval of the tests.
BUILTINS = {"__rate_interval": "20s", "__interval": "5s", "__range": "5m"}
RANGE_SECONDS = 120
DATA_TIMEOUT = 60.0

NPM_PACKAGES = {"@grafana/schema": "11.6.16", "typescript": "5.9.3"}  # Grafana 11 dashboard types
SCHEMA_CACHE = REPO / ".cache" / "grafana-schema"
JSON_TYPE = """
import type { Dashboard } from '@grafana/schema';

// Dashboard JSON spells enum members by value ("absolute"), which TypeScript's nominal
// string enums reject: widen every enum to the union of its values, all the way down.
type Json<T> = unknown extends T
  ? T
  : T extends string
    ? `${T}`
    : T extends number | boolean | null | undefined
      ? T
      : T extends Array<infer U>
        ? Array<Json<U>>
        : { [K in keyof T]: Json<T[K]> };

export const dashboard: Json<Dashboard> = """


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those inside rows."""
    found = []
    for panel in board.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def queries(board: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(panel, target) for panel in panels(board) for target in panel.get("targets", [])]


def test_every_dashboard_file_is_known() -> None:
    assert {path.name for path in DASHBOARDS} == set(UIDS)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.stem)
def test_dashboard_structure(path: Path) -> None:
    board = load(path)
    assert board["uid"] == UIDS[path.name]
    assert len(board["uid"]) <= 40
    assert board["id"] is None, "an exported id would clash on import"
    assert 36 <= board["schemaVersion"] <= 41, "Grafana 10/11 schema"
    assert "failure-predictor" in board["tags"]
    assert board["title"].startswith("failure-predictor / ")

    variables = board["templating"]["list"]
    assert variables[0] == {**variables[0], "name": "datasource", "type": "datasource", "query": "prometheus"}
    assert len({var["name"] for var in variables}) == len(variables)
    for var in variables[1:]:
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE, var["name"]

    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}"
    cells: set[tuple[int, int]] = set()
    for panel in panels(board):
        title, grid = panel["title"], panel["gridPos"]
        assert panel.get("description"), f"{title}: say what the panel shows"
        assert panel["datasource"] == DATASOURCE, title
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= GRID_COLUMNS, title
        covered = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not covered & cells, f"{title} overlaps another panel"
        cells |= covered
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), title
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, title
            assert target["expr"].strip(), title


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.stem)
def test_every_query_of_a_metric_selects_the_chosen_cluster(path: Path) -> None:
    """Behind Thanos or Mimir several clusters share one view: every selector filters on $cluster."""
    board = load(path)
    names = [var["name"] for var in board["templating"]["list"]]
    assert names[1] == "cluster"
    for _, target in queries(board):
        for selector in re.findall(r"[a-zA-Z_:]+\{[^}]*\}", target["expr"]):
            assert 'cluster=~"$cluster"' in selector, (path.name, selector)


def test_dashboard_uids_are_unique_and_links_resolve() -> None:
    boards = [load(path) for path in DASHBOARDS]
    uids = [board["uid"] for board in boards]
    assert len(uids) == len(set(uids))
    text = " ".join(path.read_text() for path in DASHBOARDS)
    for uid in re.findall(r"/d/([\w-]+)/", text):
        assert uid in uids, f"link to unknown dashboard uid {uid}"


def test_provisioning_files_point_grafana_at_the_dashboards() -> None:
    provider = yaml.safe_load(
        (REPO / "grafana" / "provisioning" / "dashboards" / "failure-predictor.yaml").read_text()
    )
    assert provider["apiVersion"] == 1
    (entry,) = provider["providers"]
    assert entry["type"] == "file" and entry["options"]["path"]
    datasource = yaml.safe_load(
        (REPO / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )
    assert datasource["apiVersion"] == 1
    assert datasource["datasources"][0]["type"] == "prometheus"


def test_target_detail_signal_panels_mirror_the_daemon_default_queries() -> None:
    """The input-signal panels plot what the daemon reads: the default signal queries, scoped to
    the selected pod. A change to a default query must be made to the dashboard too."""
    board = load(REPO / "grafana" / "dashboards" / "target-detail.json")
    plotted = {
        target["legendFormat"]: target["expr"]
        for _, target in queries(board)
        if target["refId"] == "A" and target["legendFormat"] in DEFAULT_SIGNALS
    }
    assert set(plotted) == set(DEFAULT_SIGNALS)

    def normalise(expr: str) -> str:
        """The panel's pod scope is what the daemon's {selector} placeholder (extra matchers) holds."""
        expr = re.sub(r"\s+", "", expr)
        expr = expr.replace('cluster=~"$cluster",namespace="$namespace",pod="$pod"}', "{selector}}")
        expr = expr.replace('cluster=~"$cluster",namespace="$namespace",pod="$pod",', "{selector}")
        return expr.replace("$__rate_interval", "{rate_window}").replace("namespace,pod", "{by}")

    for signal, expr in plotted.items():
        assert normalise(expr) == re.sub(r"\s+", "", DEFAULT_SIGNALS[signal]), signal


def npm_install(npm: str) -> Path:
    """@grafana/schema and TypeScript in a cache dir (.cache/ is git-ignored); reused when current."""
    installed = {name: SCHEMA_CACHE / "node_modules" / name / "package.json" for name in NPM_PACKAGES}
    if all(
        path.exists() and json.loads(path.read_text())["version"] == NPM_PACKAGES[name]
        for name, path in installed.items()
    ):
        return SCHEMA_CACHE
    SCHEMA_CACHE.mkdir(parents=True, exist_ok=True)
    (SCHEMA_CACHE / "package.json").write_text(json.dumps({"private": True, "dependencies": NPM_PACKAGES}))
    result = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
        cwd=SCHEMA_CACHE,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"npm install {NPM_PACKAGES} failed:\n{result.stdout}{result.stderr}"
    return SCHEMA_CACHE


def test_dashboards_type_check_against_grafana_schema(request: pytest.FixtureRequest) -> None:
    """``tsc --noEmit`` over each dashboard typed as @grafana/schema's Dashboard: unknown keys,
    wrong types and invalid enum values fail. A deliberately broken copy proves the check bites."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if not npm or not node:
        pytest.skip("npm/node not found: install Node.js 20 to type-check dashboards against @grafana/schema")
    cache = npm_install(npm)
    (cache / "check").mkdir(exist_ok=True)
    # Inside the cache, so that tsc finds node_modules; one directory per run, so runs can overlap.
    checks = Path(tempfile.mkdtemp(dir=cache / "check"))
    request.addfinalizer(lambda: shutil.rmtree(checks, ignore_errors=True))
    files = []
    for path in DASHBOARDS:
        files.append(checks / f"{path.stem}.ts")
        files[-1].write_text(JSON_TYPE + path.read_text() + ";\n")
    broken = load(DASHBOARDS[0])
    broken["panels"][0]["gridPos"]["w"] = "wide"
    broken["panels"][1]["fieldConfig"]["defaults"]["thresholds"]["mode"] = "absolut"
    broken["panels"][2]["titel"] = "typo"
    (checks / "broken.ts").write_text(JSON_TYPE + json.dumps(broken) + ";\n")
    tsc = [node, str(cache / "node_modules" / "typescript" / "bin" / "tsc")]
    options = [
        "--noEmit",
        "--strict",
        "--target",
        "es2020",
        "--module",
        "esnext",
        "--moduleResolution",
        "bundler",
    ]
    result = subprocess.run(
        [*tsc, *options, *(str(f) for f in files), str(checks / "broken.ts")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = [line for line in result.stdout.splitlines() if ": error TS" in line]
    assert not [line for line in errors if "broken.ts" not in line], result.stdout
    assert len(errors) == 3, f"the broken control should fail exactly three times:\n{result.stdout}"


def label_values(prometheus_url: str, selector: str, label: str) -> list[str]:
    response = requests.get(
        f"{prometheus_url}/api/v1/label/{label}/values", params={"match[]": selector}, timeout=10
    )
    response.raise_for_status()
    return response.json()["data"]


def substitute(text: str, values: dict[str, str]) -> str:
    """Grafana's ``$name`` and ``${name}`` substitution; an unknown variable is an error."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"undefined variable ${name} in {text!r}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, text)


def resolve_variables(board: dict[str, Any], prometheus_url: str, chosen: dict[str, str]) -> dict[str, str]:
    """Each variable's value as Grafana would pick it: All where offered, else ``chosen``
    (which must be among the options its query returns) or the first option."""
    values = dict(BUILTINS)
    for var in board["templating"]["list"]:
        name = var["name"]
        if var["type"] == "datasource":
            values[name] = "prometheus"
        elif var["type"] == "custom":
            values[name] = var["current"]["value"]
        else:
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", substitute(var["query"], values))
            assert match, f"{name}: unsupported variable query {var['query']!r}"
            options = label_values(prometheus_url, *match.groups())
            if not options and var.get("includeAll") and re.fullmatch(var["allValue"], ""):
                values[name] = var["allValue"]  # e.g. cluster in a single-cluster setup: All matches ""
                continue
            assert options, f"variable {name} ({var['query']}) has no options"
            if name in chosen:
                assert chosen[name] in options, f"{name}: {chosen[name]} is not among {options}"
                values[name] = chosen[name]
            elif var.get("includeAll"):
                values[name] = var["allValue"]
            else:
                values[name] = sorted(options)[0]
    return values


def run_query(prometheus_url: str, expr: str, instant: bool) -> list[dict[str, Any]]:
    now = time.time()
    if instant:
        path, params = "query", {"query": expr, "time": now}
    else:
        path, params = "query_range", {"query": expr, "start": now - RANGE_SECONDS, "end": now, "step": 5}
    body = requests.get(f"{prometheus_url}/api/v1/{path}", params=params, timeout=10).json()
    assert body["status"] == "success", f"{expr!r}: {body.get('error')}"
    return body["data"]["result"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.stem)
def test_every_panel_query_returns_data_from_the_real_daemons(
    mixin_stack: MonitoringStack, path: Path
) -> None:
    """Polls until every query has returned data once (the stack may have just started:
    rates need two scrapes, alert panels need an alert to have fired)."""
    board = load(path)
    url = mixin_stack.prometheus.url
    # Target detail plots the raw input signals, which only the fake workload publishes.
    chosen = {"namespace": mixin_stack.workload.namespace, "pod": mixin_stack.workload.leaky_pod}
    deadline = time.monotonic() + DATA_TIMEOUT
    pending = queries(board)
    while True:
        try:
            values = resolve_variables(board, url, chosen if path.name == "target-detail.json" else {})
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
            continue
        empty = []
        for panel, target in pending:
            expr = substitute(target["expr"], values)
            result = run_query(url, expr, instant=target.get("instant", False))
            if {metric_name(selector) for selector in selectors(expr)} & set(NOT_YET_EXPORTED):
                assert not result, f"{panel['title']}: {expr} returns data now: drop it from NOT_YET_EXPORTED"
            elif "signal_expected{" in expr and f'signal="{BROKEN_SIGNAL}"' in expr:
                # The daemon never reads this signal (its query fails), so it expects no band for it.
                assert not result, f"{panel['title']}: {expr} has a band for a signal the daemon cannot read"
            elif not result:
                empty.append((panel, target))
        if not empty:
            return
        if time.monotonic() > deadline:
            missing = [f"{p['title']} [{t['refId']}]: {substitute(t['expr'], values)}" for p, t in empty]
            pytest.fail("panel queries without data:\n" + "\n".join(missing))
        pending = empty
        time.sleep(1)
