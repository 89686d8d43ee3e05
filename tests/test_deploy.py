"""deploy/: the alert rules and the Grafana dashboard name only metrics (and labels) the service
really exports, so renaming a metric in ingest/metrics.py fails here, not silently in production.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from ingest.metrics import MULTIPROC_ENV, Metrics

DEPLOY: Final = Path(__file__).resolve().parent.parent / "deploy"
RULES: Final = DEPLOY / "prometheus" / "alerts.yml"
RULES_TEST: Final = DEPLOY / "prometheus" / "alerts_test.yml"
SCRAPE: Final = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD: Final = DEPLOY / "grafana" / "ingest-dashboard.json"

# Series Prometheus makes itself for every target, and the labels it adds to every series.
PROMETHEUS_SERIES: Final = frozenset({"up"})
TARGET_LABELS: Final = frozenset({"instance", "job"})

_STRING: Final = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR: Final = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER_LABEL: Final = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
_GROUPING: Final = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGE: Final = re.compile(r"\[[^\]]*\]")
_GRAFANA_VARIABLE: Final = re.compile(r"\$\{?\w+\}?")
# Not preceded by a word character or a dot, so "1e3" and "0.99" are never taken for names.
_IDENTIFIER: Final = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS: Final = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"}
)
_LABEL_VALUES: Final = re.compile(r"label_values\(\s*([A-Za-z_:][\w:]*)")


def metric_names(expr: str) -> dict[str, set[str]]:
    """Every series name a PromQL expression selects, with the label names it matches on."""
    expr = _STRING.sub('""', expr)
    expr = _GRAFANA_VARIABLE.sub("", expr)
    found: dict[str, set[str]] = {}
    for match in _SELECTOR.finditer(expr):
        labels = set(_MATCHER_LABEL.findall(match[2]))
        name = match[1]
        if name is None:  # {__name__="x"}: not used here, and would defeat the check
            raise AssertionError(f"selector without a metric name in {expr!r}")
        found.setdefault(name, set()).update(labels)
    bare = _SELECTOR.sub(lambda m: m[1] or "", expr)
    bare = _GROUPING.sub("", bare)
    bare = _RANGE.sub("", bare)
    for match in _IDENTIFIER.finditer(bare):
        if match[2] is None and match[1] not in _KEYWORDS:  # not a function call
            found.setdefault(match[1], set())
    return found


def exported() -> dict[str, set[str]]:
    """Each series name a scrape of a fresh service shows, with its label names.

    Labelled metrics have no series until a label value is used, so every one is touched first.
    """
    metrics = Metrics()
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            metric.labels(*["x"] * len(metric._labelnames))
    text = generate_latest(metrics.registry).decode()
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def unknown(used: dict[str, set[str]], available: dict[str, set[str]]) -> list[str]:
    """What ``used`` names that ``available`` does not have: metrics, then labels."""
    problems = []
    for name, labels in sorted(used.items()):
        if name in PROMETHEUS_SERIES:
            continue
        if name not in available:
            problems.append(f"{name} is not exported")
            continue
        extra = labels - available[name] - TARGET_LABELS
        if extra:
            problems.append(f"{name} has no label {', '.join(sorted(extra))}")
    return problems


def rule_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load(RULES.read_text())
    return [(rule["alert"], rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_expressions() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def dashboard_variable_metrics() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for variable in dashboard()["templating"]["list"]:
        for name in _LABEL_VALUES.findall(variable["definition"]):
            found.setdefault(name, set())
    return found


def used_by(expressions: list[tuple[str, str]]) -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for _, expr in expressions:
        for name, labels in metric_names(expr).items():
            used.setdefault(name, set()).update(labels)
    return used


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Metrics() reads its own registry only when no multiprocess directory is set."""
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)


class TestMetricNames:
    def test_reads_names_and_labels_out_of_promql(self) -> None:
        """Functions, keywords, grouping labels, durations, strings and numbers are not names."""
        expr = (
            'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{route!~"/x|/y",'
            ' instance=~"$instance"}[$__rate_interval]))) > 1e3 and on (instance) b_total'
            " offset 5m unless time() - c > 45 * 86400"
        )
        assert {"a_bucket": {"route", "instance"}, "b_total": set(), "c": set()} == (
            metric_names(expr)
        )

    def test_a_renamed_metric_is_reported(self) -> None:
        """A selector that names a metric or label the service no longer exports is caught."""
        available = exported()
        used = metric_names(
            "rate(ingest_requests_renamed_total[5m])"
            ' + rate(ingest_unavailable_total{cause="x"}[5m])'
        )
        assert unknown(used, available) == [
            "ingest_requests_renamed_total is not exported",
            "ingest_unavailable_total has no label cause",
        ]

    def test_counters_are_exported_with_total_and_histograms_with_buckets(self) -> None:
        """The names the files use are the exposition names, not the names in metrics.py."""
        available = exported()
        assert "ingest_requests_total" in available
        assert "ingest_requests" not in available
        assert {"route", "le"} <= available["ingest_request_duration_seconds_bucket"]
        assert "ingest_write_batch_size_count" in available

    def test_every_alert_names_only_exported_metrics(self) -> None:
        """alerts.yml selects only series and labels a scrape of ingest has."""
        assert unknown(used_by(rule_expressions()), exported()) == []

    def test_every_dashboard_query_names_only_exported_metrics(self) -> None:
        """The dashboard's panels and its instance variable select only exported series."""
        used = used_by(dashboard_expressions())
        for name, labels in dashboard_variable_metrics().items():
            used.setdefault(name, set()).update(labels)
        assert unknown(used, exported()) == []


class TestAlerts:
    def test_covers_what_an_operator_needs(self) -> None:
        """Errors, 503s, queue, p99, GeoIP age, durability, rejections and a dead target."""
        rules = dict(rule_expressions())
        wanted = {
            "IngestHighErrorRate": "ingest_requests_total",
            "IngestHigh503Rate": "ingest_requests_total",
            "IngestWriterQueueNearLimit": "ingest_writer_queue_events",
            "IngestHighP99Latency": "ingest_request_duration_seconds_bucket",
            "IngestGeoIPDatabaseOld": "ingest_geoip_database_build_timestamp_seconds",
            "IngestDatabaseNotDurable": "ingest_database_durable",
            "IngestEventsRejectedSpike": "ingest_events_rejected_total",
            "IngestTargetDown": "up",
        }
        for alert, metric in wanted.items():
            assert alert in rules
            assert metric in metric_names(rules[alert])

    def test_every_rule_has_a_severity_and_a_summary(self) -> None:
        """Alertmanager routes on severity; the summary is what the page says."""
        rules = yaml.safe_load(RULES.read_text())
        for rule in (r for group in rules["groups"] for r in group["rules"]):
            assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
            assert rule["annotations"]["description"], rule["alert"]

    def test_promtool_accepts_the_rules_and_their_unit_tests_pass(self) -> None:
        """promtool checks the rules and the scrape config, and runs alerts_test.yml."""
        promtool = shutil.which("promtool")
        if promtool is None:
            pytest.skip(
                "promtool is not installed (Debian: apt-get install prometheus); the "
                "metric-name checks ran without it"
            )
        for args in (
            ["check", "rules", str(RULES)],
            ["check", "config", str(SCRAPE)],
            ["test", "rules", str(RULES_TEST)],
        ):
            result = subprocess.run(
                [promtool, *args], capture_output=True, text=True, timeout=60, check=False
            )
            assert result.returncode == 0, result.stdout + result.stderr


class TestDashboard:
    def test_shows_every_figure_the_issue_asks_for(self) -> None:
        """Requests, latency, events, batches, commits, queue, 503s, pool and GeoIP."""
        used = used_by(dashboard_expressions())
        assert {
            "ingest_requests_total",
            "ingest_request_duration_seconds_bucket",
            "ingest_events_accepted_total",
            "ingest_events_duplicate_total",
            "ingest_events_rejected_total",
            "ingest_write_batch_size_bucket",
            "ingest_write_duration_seconds_bucket",
            "ingest_writer_queue_events",
            "ingest_unavailable_total",
            "ingest_pool_connections",
            "ingest_geoip_misses_total",
            "ingest_geoip_lookups_total",
            "ingest_geoip_database_build_timestamp_seconds",
        } <= set(used)

    def test_is_importable(self) -> None:
        """Grafana's import asks for the Prometheus data source that every panel uses."""
        board = dashboard()
        inputs = {i["name"] for i in board["__inputs"] if i["pluginId"] == "prometheus"}
        assert {"DS_PROMETHEUS"} == inputs
        assert board["uid"]
        assert board["title"]
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids))
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]

    def test_panels_do_not_overlap(self) -> None:
        """Every panel fits the 24-column grid, and no two cover the same cell."""
        taken: dict[tuple[int, int], str] = {}
        for panel in dashboard()["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] >= 0, panel["title"]
            assert pos["x"] + pos["w"] <= 24, panel["title"]
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                    taken[(x, y)] = panel["title"]
