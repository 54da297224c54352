"""schemathesis over the whole OpenAPI schema, against the production web server (issue #11's
proof): every generated request is answered without a server error, every answer matches the
schema, and what the schema calls valid is accepted.

The server runs on PostgreSQL and Redis with the engine on the fake upstream, for a tenant whose
limits and budgets are lifted, with a key that has every scope: a 429 or a missing scope would
hide what the fuzzer is looking for. Generation is seeded, so CI runs the same cases every time.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import time
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import schemathesis
from django.conf import settings
from schemathesis.engine import StopReason, events, from_schema
from schemathesis.errors import FailureGroup
from schemathesis.openapi.checks import RejectedPositiveData

from accounts.services import organization_update
from billing.periods import Period
from billing.services import period_bill, plan_create
from inference.jobs import job_run
from knowledge.services import document_ingest
from platform.celery import app as celery_app
from tests.billing.conftest import WEBHOOK_SECRET, at, october_usage, subscribe
from tests.conftest import Tenant, make_tenant

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not settings.REDIS_URL,
        reason="the server's processes share state only through Redis (CI sets REDIS_URL)",
    ),
]

SEED = 11
# Cases per operation in the fuzzing phase; the examples and coverage phases add their own.
MAX_EXAMPLES = 100
MIN_CASES = 2000

# Not `negative_data_rejection`: DRF converts what it can (a number where a string is expected,
# "true" for a boolean), as OpenAI's API does, so data the schema calls invalid may be accepted.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "positive_data_acceptance",
)
# What positive data may get besides schemathesis's default (2xx, 3xx, 401, 403, 404, 409, 429,
# and 5xx, which `not_a_server_error` reports), where valid data cannot be told from the schema.
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
OPERATIONS = [
    # A delivery is accepted when its Stripe-Signature verifies: that takes the signing secret.
    {"name": "POST /api/v1/billing/stripe/webhook/", "statuses": [*ACCEPTED, "400"]},
    # Whether a file is a document this API reads is in its bytes (the magic numbers of PDF, zip,
    # ...) and its name: 415 for the others.
    {"name": "POST /api/v1/documents/", "statuses": [*ACCEPTED, "415"]},
    # Django's password validators (common passwords, ...) and `signup_failed` for an address
    # that has an account with another password: more than a schema says.
    {"name": "POST /api/v1/signup/", "statuses": [*ACCEPTED, "400"]},
    # Which fields a budget's target takes, and the plan's ceilings: more than a schema says.
    {"name": "PUT /api/v1/organization/budgets/", "statuses": [*ACCEPTED, "400"]},
    # A webhook's address must resolve, to public addresses only: more than a schema says.
    {"name": "POST /api/v1/organization/webhooks/", "statuses": [*ACCEPTED, "400"]},
]

DATE_RANGE_PATHS = ["/api/v1/usage/", "/api/v1/billing/costs/"]
PASSWORD = "correct horse battery staple"  # make_tenant's


def _config(secret: str, ids: dict[str, list[Any]]) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            # Half the ids are the tenant's own, so that found objects are checked too.
            "dictionaries": {name: {"values": values} for name, values in ids.items()},
            "parameters": {f"path.{name[:-1]}_id": {"dictionary": name, "probability": 0.5} for name in ids},
            "headers": {"Authorization": f"Bearer {secret}"},
            # One at a time: the cases and the order the server sees them in are the same every run.
            "workers": 1,
            "continue-on-failure": True,
            "cache": {"enabled": False},
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            # Each operation on its own: the schema has no links, and the documents and jobs
            # routes are fuzzed with ids of their own.
            "phases": {"stateful": {"enabled": False}},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
            "operations": [
                {
                    "include-name": operation["name"],
                    "checks": {"positive_data_acceptance": {"expected-statuses": operation["statuses"]}},
                }
                for operation in OPERATIONS
            ],
        }
    )


def _date_range_within_bounds(context: Any, query: dict[str, Any] | None) -> dict[str, Any] | None:
    """`end` on or after `start` and at most 366 days after it: one parameter bounding another is
    more than OpenAPI can say (the parameters' descriptions say it), so positive data keeps it."""
    if not query:
        return query
    try:
        start = datetime.date.fromisoformat(query["start"])
        end = datetime.date.fromisoformat(query["end"])
    except (KeyError, TypeError, ValueError):
        return query  # negative data: the server answers it with a 400
    days = (end - start).days % 367
    query["end"] = (start + datetime.timedelta(days=min(days, (datetime.date.max - start).days))).isoformat()
    return query


def _keep_failure(context: Any, failure: Any, case: Any, response: schemathesis.Response) -> bool:
    """Every text field refuses a NUL (DRF's CharField; PostgreSQL cannot store it), a rule of the
    whole API that no string's schema repeats: that 400 is not valid data rejected. The fuzzer
    still sends NULs, which is how it finds a query that cannot take one."""
    if isinstance(failure, RejectedPositiveData) and response.status_code == 400:
        try:
            return bool(response.json()["error"]["code"] != "null_characters_not_allowed")
        except (ValueError, KeyError, TypeError):
            return True
    return True


def _fuzz(schema: Any) -> tuple[int, list[str], float]:
    """Runs every phase; returns the number of cases, one line per distinct problem, seconds."""
    cases = 0
    problems: dict[tuple[str, ...], str] = {}
    started = time.monotonic()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            cases += len(event.recorder.cases)
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.failure_info is None:
                        continue
                    failure = check.failure_info.failure
                    key = (event.recorder.label, check.name, failure.title)
                    problems.setdefault(
                        key,
                        f"{event.recorder.label}: {failure.title} ({check.name})\n{failure.message}\n"
                        f"{check.failure_info.code_sample}",
                    )
        elif isinstance(event, events.NonFatalError):
            problems.setdefault(
                (event.label, event.info.title), f"{event.label}: {event.info.title}: {event.value!r}"
            )
        elif isinstance(event, events.FatalError):
            raise event.exception
        elif isinstance(event, events.EngineFinished) and event.stop_reason != StopReason.COMPLETED:
            problems[("run",)] = f"the run stopped early: {event.stop_reason}"
    return cases, list(problems.values()), time.monotonic() - started


def _answer_problems(schema: Any, response: requests.Response, *, expected_status: int) -> list[str]:
    label = f"{response.request.method} {urlsplit(response.url).path}"
    if response.status_code != expected_status:
        return [f"{label}: {response.status_code} instead of {expected_status}: {response.text}"]
    try:
        schema[urlsplit(response.url).path][response.request.method].validate_response(response)
    except FailureGroup as error:
        return [f"{label}: {error}"]
    return []


def _signed_webhook(secret: str) -> tuple[str, str]:
    """A Stripe event the fuzzer cannot sign: the body and its `Stripe-Signature`."""
    payload = json.dumps({"id": "evt_schemathesis", "type": "customer.created", "data": {"object": {}}})
    timestamp = int(time.time())
    digest = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return payload, f"t={timestamp},v1={digest}"


def _tenant_with_something_of_everything(base: str) -> tuple[Tenant, dict[str, list[Any]]]:
    """The fuzzed tenant, with an indexed document, a finished job and an issued invoice, so that
    the answers that carry them are checked against the schema too; their ids, for the fuzzer."""
    tenant = make_tenant("fuzz")
    pro = plan_create(
        slug="pro",
        name="Pro",
        monthly_price=Decimal("20.00"),
        included_tokens=2_000,
        prompt_price_per_1k=Decimal("0.50"),
        completion_price_per_1k=Decimal("1.50"),
    )
    subscribe(tenant.organization, pro, on=at(2026, 9, 15))
    october_usage(tenant.organization)
    (invoice,) = period_bill(
        period=Period.parse("2026-10"), organization=tenant.organization, now=at(2026, 11, 1, 2)
    ).invoices
    # Limits and budgets lifted (the plan set some): a 429 would hide what the fuzzer looks for.
    organization_update(
        organization=tenant.organization,
        token_quota=None,
        requests_per_minute=None,
        tokens_per_minute=None,
        search_requests_per_minute=None,
        ingestion_token_quota=None,
    )
    headers = {"Authorization": f"Bearer {tenant.secret}"}
    document = requests.post(
        f"{base}/api/v1/documents/",
        json={"title": "Classes", "text": "A class bundles data and the functions that act on it."},
        headers=headers,
        timeout=60,
    ).json()
    document_ingest(document_id=document["id"])
    job = requests.post(
        f"{base}/api/v1/jobs/", json={"prompt": "Explain classes"}, headers=headers, timeout=60
    )
    job_run(job_id=job.json()["id"])
    return tenant, {"documents": [document["id"]], "jobs": [job.json()["id"]], "invoices": [invoice.pk]}


def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(
    openai_backend: str, start_web_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Configured, so that the webhook verifies signatures (400) instead of answering 503.
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    base = start_web_server(workers=2, threads=8)
    tenant, ids = _tenant_with_something_of_everything(base)

    schema = schemathesis.openapi.from_url(f"{base}/api/schema/", config=_config(tenant.secret, ids))
    schema.hook("map_query").apply_to(path=DATE_RANGE_PATHS)(_date_range_within_bounds)
    schema.hook("filter_failure")(_keep_failure)
    # What the fuzzer cannot produce (and, once its failed sign-ins have throttled this address,
    # could not get): a member's sign-in, its refresh, a signed Stripe event.
    sign_in = requests.post(
        f"{base}/api/v1/auth/token/",
        json={"email": tenant.owner.email, "password": PASSWORD, "organization": "fuzz"},
        timeout=30,
    )
    refresh = requests.post(
        f"{base}/api/v1/auth/token/refresh/", json={"refresh": sign_in.json().get("refresh")}, timeout=30
    )
    payload, signature = _signed_webhook(WEBHOOK_SECRET)
    webhook = requests.post(
        f"{base}/api/v1/billing/stripe/webhook/",
        data=payload,
        headers={"Content-Type": "application/json", "Stripe-Signature": signature},
        timeout=30,
    )
    problems = [
        problem
        for response in (sign_in, refresh, webhook)
        for problem in _answer_problems(schema, response, expected_status=200)
    ]

    try:
        cases, fuzz_problems, seconds = _fuzz(schema)
    finally:
        # No worker ran: the ingestions and jobs the fuzzer queued leave with the run (its own queue).
        celery_app.control.purge()
    print(f"schemathesis {schemathesis.__version__}: {cases} cases in {seconds:.0f} s")
    problems += fuzz_problems
    assert not problems, "\n\n".join(problems)
    assert cases >= MIN_CASES
