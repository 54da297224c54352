"""The shipped dashboard and alert rules (deploy/) query only what the platform exports: every
metric they name is on /metrics under that name, with those labels, so neither stays silently
empty after a rename. (promtool is not on the CI machine; this reads the PromQL itself.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.django_db

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "rate", "increase", "histogram_quantile", "clamp_min", "by",
    "without", "and", "or", "unless", "offset",
}  # fmt: skip
# The platform's labels, and those Prometheus adds to every scraped series.
LABELS = {"method", "route", "status", "kind", "model", "outcome", "stage", "le", "instance", "job"}
_SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}


def _exported() -> set[str]:
    """Every sample name /metrics can carry, read from its HELP/TYPE lines (a labelled metric
    that has counted nothing yet still declares itself)."""
    response = Client(REMOTE_ADDR="127.0.0.1").get("/metrics")
    assert response.status_code == 200
    names = set()
    for family in text_string_to_metric_families(response.content.decode()):
        if family.name.startswith("llmp_"):
            names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def _expressions() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "llm-platform.json").read_text())
    expressions += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return expressions


def _problems(expr: str, exported: set[str]) -> list[str]:
    problems = []
    if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
        problems.append("unbalanced brackets")
    for metric, matchers in re.findall(r"(llmp_\w+)(?:\{([^}]*)\})?", expr):
        if metric not in exported:
            problems.append(f"{metric} is not exported")
        problems += [
            f"{metric} has no label {name}"
            for name in re.findall(r"(\w+)\s*[=!]~?", matchers)
            if name not in LABELS
        ]
    bare = re.sub(r'"[^"]*"|\{[^}]*\}|\[[^\]]*\]|offset\s+\d+[smhdwy]', " ", expr)
    for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", bare):
        if not word.startswith("llmp_") and word not in PROMQL_WORDS | LABELS:
            problems.append(f"unknown word {word}")
    return problems


def test_every_alert_and_panel_queries_only_exported_metrics() -> None:
    exported = _exported()
    expressions = _expressions()
    assert len(expressions) >= 20
    problems = {expr: _problems(expr, exported) for expr in expressions}
    assert {expr: found for expr, found in problems.items() if found} == {}


def test_the_check_catches_a_metric_that_does_not_exist() -> None:
    exported = _exported()
    assert _problems("sum(rate(llmp_http_requests_totl[5m]))", exported) == [
        "llmp_http_requests_totl is not exported"
    ]
    assert _problems('sum(rate(llmp_tokens_total{tenant="a"}[5m]))', exported) == [
        "llmp_tokens_total has no label tenant"
    ]
    assert _problems("sum(rat(llmp_tokens_total[5m]))", exported) == ["unknown word rat"]


def test_alerts_cover_what_an_operator_is_paged_for() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    by_metric = " ".join(rule["expr"] for group in rules["groups"] for rule in group["rules"])
    for metric in (
        'llmp_http_requests_total{status=~"5.."}',  # error rate
        "llmp_time_to_first_token_seconds_bucket",  # TTFT p95
        "llmp_engine_queue_depth",
        "llmp_usage_stream_pending",
        "llmp_usage_dead_letters",
        'llmp_admissions_total{outcome="insufficient_quota"}',  # budget refusals spike
    ):
        assert metric in by_metric, metric
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"page", "warning"} and rule["annotations"]["summary"]
