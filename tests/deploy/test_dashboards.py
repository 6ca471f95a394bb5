"""The Grafana dashboard and the Prometheus alert rules in deploy/: well formed, and naming only real metrics.

promtool (Debian's prometheus package; scripts/bootstrap.sh installs it) parses the rules, runs their unit
tests (deploy/prometheus/alerts_test.yml) and parses the dashboard's queries. A live worker's /metrics
decides which metric names exist: a dashboard or alert on a misspelt or renamed metric shows nothing and
never fires, and no other check would notice.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import BUSYBOX_IMAGE, REPO, TERMINAL, Devserver, WorkerProcess, free_port, sh, wait_for
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from worker_agent.ops import metrics

DASHBOARD = REPO / "deploy" / "grafana" / "job-worker-agent.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO / "deploy" / "prometheus" / "alerts_test.yml"
DATASOURCE_UID = "${datasource}"
# Labels Prometheus attaches to every scraped series itself, and the one series it makes per target.
TARGET_LABELS = frozenset({"instance", "job"})
PROMETHEUS_SERIES = {"up": frozenset[str]()}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool not installed: run scripts/bootstrap.sh (installs Debian's prometheus package)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=REPO, timeout=120)


# --- reading the two files ---


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def dashboard_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    found = [
        (f"panel {panel['title']!r} target {target['refId']}", target["expr"])
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            # Grafana's label_values(SELECTOR, LABEL) is not PromQL, but its selector is.
            definition = variable["definition"]
            call = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", definition)
            found.append((f"variable {variable['name']}", f"sum by ({call[2]}) ({call[1]})" if call else definition))
    return found


def as_promql(query: str) -> str:
    """A dashboard query as Prometheus sees it once Grafana has put in its variables."""
    for variable, duration in [("$__rate_interval", "2m"), ("$__interval", "1m"), ("$__range", "6h")]:
        query = query.replace(variable, duration)
    # The dashboard's own variables ($job, $instance) only sit inside label matcher strings.
    return re.sub(r"\$\{?\w+\}?", "x", query)


def alert_rules() -> list[dict[str, str]]:
    """Each alerting rule as flat keys: alert, expr, for, severity, summary, description.

    The venv has no YAML library, so this reads just the shape alerts.yml is written in (scalars, and
    block scalars for long expressions, under `- alert:`). promtool parses the file for real, and
    test_alert_rules_pass_promtool compares its rule count with this reader's.
    """
    rules: list[dict[str, str]] = []
    block: tuple[str, int] | None = None  # (key, its indent) while inside `key: |`
    for line in ALERTS.read_text().splitlines():
        text, indent = line.strip(), len(line) - len(line.lstrip())
        if block is not None and (not text or indent > block[1]):
            rules[-1][block[0]] += text + "\n"
            continue
        block = None
        if text.startswith("- alert:"):
            rules.append({})
        key, colon, value = text.removeprefix("- ").partition(":")
        if not rules or text.startswith("#") or not colon or not value.strip():
            continue
        value = value.strip()
        if value in {"|", "|-", ">", ">-"}:
            block, rules[-1][key] = (key, indent), ""
        elif value.startswith('"'):
            rules[-1][key] = json.loads(value)  # the escapes used here (\") mean the same in JSON
        else:
            rules[-1][key] = value.strip("'")
    return rules


# --- which metric and label names a PromQL expression uses ---

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
# An identifier not glued to a number (the m of 5m, the e of 1e3) nor followed by "(" (a function).
_NAME = re.compile(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(?!\w|\s*\()")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"inf", "nan"}
)


def referenced(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) in a PromQL expression; enough PromQL for these files, not a parser."""
    expr = _STRING.sub('""', expr)
    labels = {name for body in _MATCHERS.findall(expr) for name in _MATCHER_LABEL.findall(body)}
    labels |= {name.strip() for body in _GROUPING.findall(expr) for name in body.split(",") if name.strip()}
    expr = _RANGE.sub("", _GROUPING.sub(" ", _MATCHERS.sub(" ", expr)))
    names = {name for name in _NAME.findall(expr) if name.lower() not in _KEYWORDS}
    return names, labels


@pytest.mark.parametrize(
    ("expr", "names", "labels"),
    [
        ("up == 0", {"up"}, set()),
        (
            'histogram_quantile(0.9, sum by (instance, le) (rate(a_bucket{job=~"$job"}[$__rate_interval])))',
            {"a_bucket"},
            {"instance", "le", "job"},
        ),
        ('time() - b{x!="y, z=w"} > 3 * 30 and on (instance) c offset 5m', {"b", "c"}, {"x", "instance"}),
        ("sum without (status) (d) / ignoring(k) group_left e > 1e3", {"d", "e"}, {"status", "k"}),
    ],
)
def test_referenced_reads_names_and_labels(expr: str, names: set[str], labels: set[str]) -> None:
    assert referenced(expr) == (names, labels)


# --- the dashboard ---


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36  # datasources as {type, uid} objects
    assert board["uid"] and board["title"] and board.get("id") is None  # Grafana assigns the id on import
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["multi"] and variables["instance"]["includeAll"]
    assert "job" in variables

    found = list(panels(board))
    assert len({panel["id"] for panel in found}) == len(found), "panel ids must be unique"
    for panel in found:
        if panel["type"] == "row":
            continue
        where = f"panel {panel.get('title')!r}"
        # Every query goes to the data source picked in the variable, so one import fits any Prometheus.
        assert panel.get("datasource") == {"type": "prometheus", "uid": DATASOURCE_UID}, where
        assert panel.get("targets"), f"{where} has no query"
        assert len({target["refId"] for target in panel["targets"]}) == len(panel["targets"]), where
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"{where} target {target['refId']} has no expression"
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], where
            # Per host: every query is limited to the chosen job and hosts.
            assert 'instance=~"$instance"' in target["expr"], f"{where} target {target['refId']} ignores $instance"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, where


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool has no "parse this query" command; as recording rules the queries go through the same parser.
    queries = dashboard_queries(dashboard())
    rules = [{"record": f"dashboard:query_{n}", "expr": as_promql(query)} for n, (_, query) in enumerate(queries)]
    rules_file = tmp_path / "dashboard-queries.yml"
    rules_file.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    done = promtool("check", "rules", str(rules_file))
    legend = "\n".join(f"dashboard:query_{n} is {where}" for n, (where, _) in enumerate(queries))
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{legend}"


# --- the alert rules ---


def test_alert_rules_pass_promtool() -> None:
    done = promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    count = re.search(r"(\d+) rules found", done.stdout)
    assert count and int(count[1]) == len(alert_rules()), f"this test's reader disagrees with promtool:\n{done.stdout}"


def test_alert_rules_unit_tests() -> None:
    done = promtool("test", "rules", str(ALERTS_TEST))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_waits_has_a_severity_and_says_what_to_do() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} >= {
        "JobWorkerDown",
        "JobWorkerHeartbeatStale",
        "JobWorkerOutboxGrowing",
        "JobWorkerDockerUnhealthy",
        "JobWorkerShareUnhealthy",
        "JobWorkerJobsFailing",
        "JobWorkerThreadFailing",
    }
    for rule in rules:
        # Without `for:` one bad scrape pages someone.
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), rule["alert"]
        assert rule.get("severity") in {"critical", "warning"}, rule["alert"]
        assert rule.get("summary") and rule.get("description"), rule["alert"]


# --- against a live worker ---


def scrape_text(port: int) -> str:
    with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())
    return ""


def declared_labels() -> dict[str, frozenset[str]]:
    """Label names of each metric as ops/metrics.py declares them (prometheus_client keeps them in _labelnames)."""
    return {
        value._name: frozenset(value._labelnames)
        for value in vars(metrics).values()
        if isinstance(value, MetricWrapperBase)
    }


# The series Prometheus stores for a family of each type (the text format also has _created samples,
# which no query here uses).
SERIES_SUFFIXES = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}


def exported_series(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """Series name -> (its family, its label names) for what a scrape of `text` stores."""
    declared = declared_labels()
    series: dict[str, tuple[str, frozenset[str]]] = {}
    for family in text_string_to_metric_families(text):
        if family.samples:
            for sample in family.samples:
                known = series.get(sample.name, (family.name, frozenset[str]()))[1]
                series[sample.name] = (family.name, known | frozenset(sample.labels))
        else:
            # A labelled counter has no sample until a label value is first used, and a healthy run never
            # makes a background thread fail. prometheus_client still prints the family's # HELP and # TYPE
            # lines, so the worker does export the name; its series get the labels the code declares.
            series |= {
                family.name + suffix: (family.name, declared[family.name]) for suffix in SERIES_SUFFIXES[family.type]
            }
    return series


Make = Callable[..., WorkerProcess]


@pytest.mark.docker
def test_queries_and_rules_name_only_what_a_live_worker_exports(devserver: Devserver, make_worker: Make) -> None:
    port = free_port()
    make_worker({"METRICS_PORT": str(port)}).start()
    wait_for(lambda: scrape_text(port), 30, "the metrics endpoint")
    # One job gives the ended counter its status label and the duration histogram a count.
    job_id = devserver.submit(image=BUSYBOX_IMAGE, command=sh("echo hello"))
    assert devserver.wait_status(job_id, set(TERMINAL)) == "finished"
    text = wait_for(
        lambda: (t := scrape_text(port)) and 'opeva_worker_jobs_ended_total{status="finished"}' in t and t,
        20,
        "the job's end counted",
    )
    series = exported_series(text) | {name: ("", labels) for name, labels in PROMETHEUS_SERIES.items()}

    queries = [(f"dashboard {where}", query) for where, query in dashboard_queries(dashboard())]
    queries += [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    shown: set[str] = set()
    for where, query in queries:
        names, labels = referenced(query)
        assert names, f"{where}: no metric in {query!r}"
        unknown = names - series.keys()
        assert not unknown, f"{where}: the worker exports no {sorted(unknown)} (see src/worker_agent/ops/metrics.py)"
        known_labels = TARGET_LABELS.union(*(series[name][1] for name in names))
        assert labels <= known_labels, f"{where}: no label {sorted(labels - known_labels)} on {sorted(names)}"
        if where.startswith("dashboard"):
            shown |= {series[name][0] for name in names}

    # prometheus_client prints each counter's and histogram's creation time as a family of its own
    # (<name>_created); that is bookkeeping, not something to draw.
    families = {
        family
        for family, _ in series.values()
        if family.startswith("opeva_worker_") and not family.endswith("_created")
    }
    assert families <= shown, f"no dashboard panel shows {sorted(families - shown)}: add one to {DASHBOARD.name}"
