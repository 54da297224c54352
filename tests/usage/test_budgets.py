from __future__ import annotations

from datetime import UTC, datetime

import pytest
import time_machine
from django.core.management import call_command

from accounts.services import api_key_create
from tests.conftest import Tenant, assert_error_shape
from usage.services import usage_stream_flush

pytestmark = pytest.mark.django_db


def _generate(tenant: Tenant, secret: str | None = None, **body):
    # `raw`: the prompt's token count stays that of "hello", whatever the chat framing costs.
    return tenant.client(secret).post(
        "/api/v1/generate/", {"prompt": "hello", "max_tokens": 10, "raw": True, **body}, format="json"
    )


def test_exhausted_budget_is_429_insufficient_quota_naming_the_budget(
    alice: Tenant, openai_backend: str
) -> None:
    call_command("set_budget", "--org", "alice", "--key", alice.api_key.prefix, "--tokens", "15")
    assert _generate(alice).status_code == 200
    error = assert_error_shape(_generate(alice), status=429, code="insufficient_quota")
    assert error["type"] == "insufficient_quota"
    assert f"API key 'alice-key' ({alice.api_key.prefix}…) token budget" in error["message"]


def test_every_applicable_budget_is_enforced(alice: Tenant, openai_backend: str) -> None:
    call_command("set_budget", "--org", "alice", "--end-user", "u-1", "--tokens", "12")
    assert _generate(alice, user_id="u-1").status_code == 200
    error = assert_error_shape(_generate(alice, user_id="u-1"), status=429, code="insufficient_quota")
    assert "end user 'u-1'" in error["message"]
    assert _generate(alice, user_id="u-2").status_code == 200  # another end user is not affected


def test_default_end_user_budget_applies_to_every_end_user(alice: Tenant, openai_backend: str) -> None:
    alice.organization.end_user_token_budget = 12
    alice.organization.save()
    for end_user in ("a", "b"):
        assert _generate(alice, user_id=end_user).status_code == 200
        assert _generate(alice, user_id=end_user).status_code == 429


def test_member_budget_applies_to_the_members_keys(alice: Tenant, openai_backend: str) -> None:
    call_command("set_budget", "--org", "alice", "--user", alice.owner.email, "--tokens", "15")
    _key, second_secret = api_key_create(organization=alice.organization, name="second", user=alice.owner)
    assert _generate(alice).status_code == 200
    error = assert_error_shape(_generate(alice, secret=second_secret), status=429, code="insufficient_quota")
    assert "member 'owner@alice.test'" in error["message"]


def test_me_lists_every_budget_with_used_reserved_and_remaining(alice: Tenant, openai_backend: str) -> None:
    call_command("set_budget", "--org", "alice", "--tokens", "1000", "--period", "month")
    call_command(
        "set_budget", "--org", "alice", "--key", alice.api_key.prefix, "--tokens", "500", "--period", "day"
    )
    assert _generate(alice).status_code == 200
    budgets = {b["scope"]: b for b in alice.client().get("/api/v1/me/").json()["budgets"]}
    assert set(budgets) == {"organization", "api_key"}
    org = budgets["organization"]
    assert org["limit"] == 1000 and org["used"] == 11 and org["reserved"] == 0 and org["remaining"] == 989
    assert org["period"] == "month"
    assert budgets["api_key"]["period"] == "day" and budgets["api_key"]["used"] == 11


@pytest.mark.parametrize("end_user", ["nul\x00byte", "x" * 129])
def test_me_for_an_end_user_no_request_can_name_is_400(alice: Tenant, end_user: str) -> None:
    # A NUL reached the end-user budget query (a 500 on PostgreSQL).
    error = assert_error_shape(alice.client().get("/api/v1/me/", {"end_user": end_user}), status=400)
    assert error["param"] == "end_user", error


def test_budget_resets_at_its_period_boundary(alice: Tenant, openai_backend: str) -> None:
    call_command("set_budget", "--org", "alice", "--tokens", "15", "--period", "day")
    with time_machine.travel(datetime(2026, 11, 27, 23, 59, 50, tzinfo=UTC), tick=False):
        assert _generate(alice).status_code == 200
        assert _generate(alice).status_code == 429
        usage_stream_flush()
    with time_machine.travel(datetime(2026, 11, 28, 0, 0, 5, tzinfo=UTC), tick=False):
        assert _generate(alice).status_code == 200


def test_request_over_the_requests_per_minute_limit_is_429_with_retry_after(alice: Tenant) -> None:
    call_command("set_rate_limit", "--org", "alice", "--rpm", "2")
    client = alice.client()
    first = client.get("/api/v1/me/")
    assert first["x-ratelimit-limit-requests"] == "2"
    assert first["x-ratelimit-remaining-requests"] == "1"
    assert first["x-ratelimit-limit-tokens"] and first["x-ratelimit-remaining-tokens"]
    assert first["x-ratelimit-reset-requests"].endswith("s")
    client.get("/api/v1/me/")
    refused = client.get("/api/v1/me/")
    error = assert_error_shape(refused, status=429, code="rate_limit_exceeded")
    assert error["type"] == "requests"
    assert int(refused["Retry-After"]) >= 1


def test_key_limit_can_be_stricter_than_the_organizations(alice: Tenant) -> None:
    call_command("set_rate_limit", "--org", "alice", "--rpm", "100")
    call_command("set_rate_limit", "--org", "alice", "--key", alice.api_key.prefix, "--rpm", "1")
    client = alice.client()
    assert client.get("/api/v1/me/").status_code == 200
    assert_error_shape(client.get("/api/v1/me/"), status=429, code="rate_limit_exceeded")


def test_tokens_per_minute_limit_refuses_before_inference(alice: Tenant, openai_backend: str) -> None:
    call_command("set_rate_limit", "--org", "alice", "--tpm", "30")
    assert _generate(alice, max_tokens=20).status_code == 200
    error = assert_error_shape(_generate(alice, max_tokens=20), status=429, code="rate_limit_exceeded")
    assert error["type"] == "tokens"


def test_generation_counts_each_request_once_whether_admitted_or_refused(
    alice: Tenant, openai_backend: str
) -> None:
    """Generation routes count their rate limits with the reservation; a request the view
    refuses before reserving (bad input) still counts, once."""
    call_command("set_rate_limit", "--org", "alice", "--rpm", "3")
    first = _generate(alice)
    assert first.status_code == 200 and first["x-ratelimit-remaining-requests"] == "2"
    bad = _generate(alice, prompt="")
    assert_error_shape(bad, status=400)
    assert bad["x-ratelimit-remaining-requests"] == "1"
    assert _generate(alice)["x-ratelimit-remaining-requests"] == "0"
    refused = _generate(alice)
    error = assert_error_shape(refused, status=429, code="rate_limit_exceeded")
    assert error["type"] == "requests"
    assert int(refused["Retry-After"]) >= 1
    assert refused["x-ratelimit-remaining-requests"] == "0"


def test_request_refused_for_budget_adds_no_tokens_per_minute(alice: Tenant, openai_backend: str) -> None:
    call_command("set_rate_limit", "--org", "alice", "--tpm", "1000")
    call_command("set_budget", "--org", "alice", "--tokens", "5")
    refused = _generate(alice, max_tokens=20)
    assert_error_shape(refused, status=429, code="insufficient_quota")
    assert refused["x-ratelimit-remaining-tokens"] == "1000"
    assert alice.client().get("/api/v1/me/")["x-ratelimit-remaining-tokens"] == "1000"


def test_usage_report_groups_and_csv(alice: Tenant, openai_backend: str) -> None:
    assert _generate(alice, user_id="u-1").status_code == 200
    assert _generate(alice, user_id="u-2").status_code == 200
    usage_stream_flush()
    today = datetime.now(UTC).date().isoformat()
    report = (
        alice.client().get("/api/v1/usage/", {"start": today, "end": today, "group_by": "end_user"}).json()
    )
    assert [row["end_user"] for row in report["data"]] == ["u-1", "u-2"]
    assert all(row["requests"] == 1 and row["total_tokens"] == 11 for row in report["data"])
    csv_response = alice.client().get(
        "/api/v1/usage/", {"start": today, "end": today, "group_by": "model", "format": "csv"}
    )
    assert csv_response["Content-Type"] == "text/csv"
    lines = csv_response.content.decode().strip().splitlines()
    assert lines[0] == "model,requests,prompt_tokens,completion_tokens,total_tokens"
    assert lines[1] == "fake-model,2,2,20,22"


def test_usage_of_one_organization_is_never_visible_to_another(
    alice: Tenant, charlie: Tenant, openai_backend: str
) -> None:
    assert _generate(alice).status_code == 200
    usage_stream_flush()
    today = datetime.now(UTC).date().isoformat()
    report = charlie.client().get("/api/v1/usage/", {"start": today, "end": today, "group_by": "key"}).json()
    assert report["data"] == []
    assert (
        alice.client().get("/api/v1/usage/", {"start": today, "end": today}).json()["data"][0]["requests"]
        == 1
    )


def test_usage_report_command_prints_the_month(alice: Tenant, openai_backend: str, capsys) -> None:
    assert _generate(alice).status_code == 200
    usage_stream_flush()
    month = datetime.now(UTC).strftime("%Y-%m")
    call_command("usage_report", "--org", "alice", "--month", month)
    out = capsys.readouterr().out
    assert out.splitlines()[-1].split() == ["total", "1", "1", "10", "11"]


def test_stream_closed_before_its_body_started_releases_the_reservation(
    alice: Tenant, openai_backend: str
) -> None:
    call_command("set_budget", "--org", "alice", "--tokens", "1000")
    response = alice.client().post(
        "/api/v1/generate/", {"prompt": "hi", "max_tokens": 50, "stream": True}, format="json"
    )
    assert response.status_code == 200
    response.close()  # the client left before reading anything: the server closes the response
    budgets = alice.client().get("/api/v1/me/").json()["budgets"]
    assert [(b["used"], b["reserved"]) for b in budgets] == [(0, 0)]


def test_an_end_users_budget_is_counted_per_organization(
    alice: Tenant, charlie: Tenant, openai_backend: str
) -> None:
    """Two tenants whose end users share an id (their own "u-1") share nothing."""
    for tenant in (alice, charlie):
        tenant.organization.end_user_token_budget = 12
        tenant.organization.save()
    assert _generate(alice, user_id="u-1").status_code == 200
    assert _generate(alice, user_id="u-1").status_code == 429
    assert _generate(charlie, user_id="u-1").status_code == 200  # Charlie's u-1 has spent nothing


def test_a_members_budget_in_one_organization_ignores_their_work_in_another(
    alice: Tenant, charlie: Tenant, openai_backend: str
) -> None:
    from accounts.services import membership_create

    membership_create(organization=charlie.organization, user=alice.owner)
    _key, in_charlie = api_key_create(
        organization=charlie.organization, name="alice-at-charlie", user=alice.owner
    )
    call_command("set_budget", "--org", "alice", "--user", alice.owner.email, "--tokens", "15")
    call_command("set_budget", "--org", "charlie", "--user", alice.owner.email, "--tokens", "15")
    assert _generate(charlie, secret=in_charlie).status_code == 200
    assert _generate(alice).status_code == 200  # what she spent at Charlie's is not Alice's budget
    assert _generate(alice).status_code == 429
