"""What an operator sees: one log line per request, admission outcomes and charged tokens in
/metrics, and /metrics closed to strangers."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from django.test import Client
from prometheus_client import REGISTRY

from tests.conftest import Tenant

pytestmark = pytest.mark.django_db


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_every_request_has_one_log_line_with_who_what_and_how(
    alice: Tenant, openai_backend: str, caplog: Any
) -> None:
    with caplog.at_level(logging.INFO, logger="platform.access"):
        response = alice.client().post(
            "/api/v1/generate/",
            {"prompt": "hi", "max_tokens": 3},
            format="json",
            HTTP_X_REQUEST_ID="log-me-1",
        )
    assert response.status_code == 200
    (line,) = [r for r in caplog.records if r.name == "platform.access"]
    fields = {
        "request_id": "log-me-1",
        "method": "POST",
        "route": "api/v1/generate/",
        "status": 200,
        "organization_id": alice.organization.pk,
        "key_prefix": alice.api_key.prefix,
        "admission": "admitted",
    }
    assert {name: getattr(line, name) for name in fields} == fields
    assert line.duration_ms > 0 and line.tokens_held > 3
    # As the JSON formatter writes it on stdout.
    from common.logging import JSONFormatter

    written = json.loads(JSONFormatter().format(line))
    assert {name: written[name] for name in fields} == fields


def test_admission_outcomes_and_charged_tokens_are_counted(alice: Tenant, openai_backend: str) -> None:
    alice.organization.requests_per_minute = 1
    alice.organization.save()
    admitted = _sample("llmp_admissions_total", {"outcome": "admitted"})
    limited = _sample("llmp_admissions_total", {"outcome": "rate_limited"})
    completion = _sample("llmp_tokens_total", {"kind": "completion", "model": "fake-model"})
    body = {"prompt": "hi", "max_tokens": 3}
    assert alice.client().post("/api/v1/generate/", body, format="json").status_code == 200
    assert alice.client().post("/api/v1/generate/", body, format="json").status_code == 429
    assert _sample("llmp_admissions_total", {"outcome": "admitted"}) == admitted + 1
    assert _sample("llmp_admissions_total", {"outcome": "rate_limited"}) == limited + 1
    assert _sample("llmp_tokens_total", {"kind": "completion", "model": "fake-model"}) == completion + 3


def test_metrics_need_the_token_or_an_allowed_address(settings: Any) -> None:
    settings.METRICS_TOKEN = "scrape-secret"
    stranger = Client(REMOTE_ADDR="203.0.113.9")
    refused = stranger.get("/metrics")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_metrics_token"
    assert stranger.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert stranger.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret").status_code == 200
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 200
    settings.METRICS_TOKEN = ""
    assert stranger.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 401
