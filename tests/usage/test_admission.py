"""Admission happens before the view does any work: rate limits and budgets are decided in the
middleware chain, on an estimate of the body, and what the view then refuses costs nothing."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command

from tests.conftest import Tenant, assert_error_shape
from usage.models import UsageRecord
from usage.services import get_ledger, usage_stream_flush

pytestmark = pytest.mark.django_db(transaction=True)


def _me_budget(tenant: Tenant) -> dict[str, Any]:
    (budget,) = tenant.client().get("/api/v1/me/").json()["budgets"]
    return budget


@pytest.mark.parametrize(
    "route, body",
    [
        ("/api/v1/generate/", {"prompt": "hi", "max_tokens": 5, "model": "no-such-model"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "model": "no-such-model"}),
        ("/api/v1/rag/", {"prompt": "hi", "max_tokens": 5, "model": "no-such-model"}),
        ("/v1/embeddings", {"input": "hi", "model": "no-such-model"}),
    ],
)
def test_a_caller_over_its_rate_limit_is_refused_before_the_view_looks_at_the_request(
    alice: Tenant, openai_backend: str, route: str, body: dict[str, Any]
) -> None:
    alice.organization.requests_per_minute = 1
    alice.organization.save()
    first = alice.client().post(route, body, format="json")
    assert_error_shape(first, status=404, code="model_not_found")  # the view ran: unknown model
    second = alice.client().post(route, body, format="json")
    # Refused by admission: the view never saw the unknown model.
    assert_error_shape(second, status=429, code="rate_limit_exceeded")


def test_a_caller_out_of_budget_is_refused_before_the_view_looks_at_the_request(
    alice: Tenant, openai_backend: str
) -> None:
    alice.organization.token_quota = 10
    alice.organization.save()
    response = alice.client().post(
        "/api/v1/rag/", {"prompt": "hi", "max_tokens": 50, "model": "no-such-model"}, format="json"
    )
    assert_error_shape(response, status=429, code="insufficient_quota")


def test_what_the_view_refuses_costs_nothing_and_leaves_nothing_held(
    alice: Tenant, openai_backend: str
) -> None:
    alice.organization.token_quota = 1_000
    alice.organization.save()
    for body in (
        {"prompt": "hi", "max_tokens": 5, "model": "no-such-model"},
        {"prompt": "hi", "max_tokens": 5, "temperature": 9},
    ):
        response = alice.client().post("/api/v1/generate/", body, format="json")
        assert response.status_code in (400, 404)
        assert (
            response["x-ratelimit-remaining-requests"] if "x-ratelimit-limit-requests" in response else True
        )
    budget = _me_budget(alice)
    assert (budget["used"], budget["reserved"]) == (0, 0)
    assert get_ledger().active_reservations() == 0
    usage_stream_flush()
    assert not UsageRecord.objects.exists()


def test_an_admitted_request_counts_once_against_the_requests_limit(
    alice: Tenant, openai_backend: str
) -> None:
    alice.organization.requests_per_minute = 3
    alice.organization.save()
    statuses = [
        alice.client().post("/api/v1/generate/", {"prompt": "hi", "max_tokens": 2}, format="json").status_code
        for _ in range(4)
    ]
    assert statuses == [200, 200, 200, 429]


def test_the_view_gets_the_reservation_admission_made(alice: Tenant, openai_backend: str) -> None:
    alice.organization.token_quota = 1_000
    alice.organization.save()
    response = alice.client().post(
        "/api/v1/generate/", {"prompt": "one two three", "max_tokens": 4}, format="json"
    )
    assert response.status_code == 200
    usage_stream_flush()
    (record,) = UsageRecord.objects.all()
    assert record.reservation_id.startswith("rsv_")
    assert (record.prompt_tokens, record.completion_tokens) == (3, 4)
    assert _me_budget(alice)["used"] == 7


def test_a_search_is_metered_and_admitted_before_its_query_is_embedded(alice: Tenant) -> None:
    alice.organization.requests_per_minute = 2
    alice.organization.save()
    search = {"query": "how do I run the tests", "top_k": 3}
    assert alice.client().post("/api/v1/search/", search, format="json").status_code == 200
    # Bad input after admission: the view refuses it, and it costs nothing.
    assert alice.client().post("/api/v1/search/", {**search, "top_k": 0}, format="json").status_code == 400
    assert_error_shape(
        alice.client().post("/api/v1/search/", search, format="json"), status=429, code="rate_limit_exceeded"
    )
    usage_stream_flush()
    (record,) = UsageRecord.objects.all()
    assert (record.endpoint, record.model, record.completion_tokens) == ("search", "all-MiniLM-L6-v2", 0)
    assert record.prompt_tokens > 0


@pytest.mark.parametrize(
    "route, raw",
    [
        ("/api/v1/generate/", b"[" * 100_000 + b"]" * 100_000),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}',
        ),
        ("/api/v1/generate/", b'{"prompt": "hi", "max_tokens": 1000000000000000000000000000000}'),
        ("/api/v1/generate/", b'{"prompt": "hi", "max_tokens": "many"}'),
    ],
)
def test_a_body_admission_cannot_estimate_is_the_views_400_not_a_500_or_a_429(
    alice: Tenant, openai_backend: str, route: str, raw: bytes
) -> None:
    alice.organization.tokens_per_minute = 1_000
    alice.organization.save()
    response = alice.client().post(route, raw, content_type="application/json")
    assert_error_shape(response, status=400)
    assert get_ledger().active_reservations() == 0


@pytest.mark.parametrize(
    "route, body",
    [
        ("/api/v1/generate/", {"prompt": "hi", "max_tokens": 2, "user_id": "nul\x00byte"}),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "user": "nul\x00byte"},
        ),
        ("/v1/embeddings", {"input": "hi", "user": "nul\x00byte"}),
    ],
)
def test_an_end_user_postgresql_cannot_hold_is_the_views_400_not_a_500(
    alice: Tenant, openai_backend: str, route: str, body: dict[str, Any]
) -> None:
    # Found by schemathesis (tests/test_api_fuzz.py): admission looked the end user's budget up
    # in the database before the view refused the name.
    error = assert_error_shape(alice.client().post(route, body, format="json"), status=400)
    assert error["param"] in ("user_id", "user")
    assert get_ledger().active_reservations() == 0


def test_an_end_user_is_counted_as_the_view_reads_it(alice: Tenant, openai_backend: str) -> None:
    """The view trims the name: spaces around it do not make another end user with a fresh budget."""
    call_command("set_budget", "--org", "alice", "--end-user", "u-1", "--tokens", "12")
    body = {"prompt": "hello", "max_tokens": 10, "raw": True}
    first = alice.client().post("/api/v1/generate/", {**body, "user_id": "u-1"}, format="json")
    assert first.status_code == 200
    second = alice.client().post("/api/v1/generate/", {**body, "user_id": " u-1 "}, format="json")
    assert_error_shape(second, status=429, code="insufficient_quota")


def test_searches_have_their_own_requests_limit(alice: Tenant, openai_backend: str) -> None:
    alice.organization.search_requests_per_minute = 1
    alice.organization.requests_per_minute = 100
    alice.organization.save()
    search = {"query": "classes", "top_k": 1}
    assert alice.client().post("/api/v1/search/", search, format="json").status_code == 200
    assert_error_shape(
        alice.client().post("/api/v1/search/", search, format="json"), status=429, code="rate_limit_exceeded"
    )
    # Generation is not a search: it still has the organization's limit.
    generated = alice.client().post("/api/v1/generate/", {"prompt": "hi", "max_tokens": 2}, format="json")
    assert generated.status_code == 200


@pytest.mark.skipif(
    not settings.REDIS_URL, reason="without Redis the in-process ledger writes records at once"
)
def test_an_admitted_request_makes_no_database_query(
    alice: Tenant, openai_backend: str, django_assert_num_queries: Any
) -> None:
    """Every limit and budget admission reads comes from the key cache: a field the cache left
    out would cost a query per request."""
    organization = alice.organization
    organization.token_quota = 100_000
    organization.end_user_token_budget = 10_000
    organization.search_requests_per_minute = 100
    organization.ingestion_token_quota = 100_000
    organization.save()
    body = {"prompt": "hi", "max_tokens": 2, "user_id": "end-user-1"}
    assert alice.client().post("/api/v1/generate/", body, format="json").status_code == 200
    with django_assert_num_queries(0):
        assert alice.client().post("/api/v1/generate/", body, format="json").status_code == 200
