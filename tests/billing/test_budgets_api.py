"""Budgets and limits through `/api/v1/organization/budgets/`: read with organization:read,
changed with organization:write, never above what the plan grants, another organization's
members and keys as missing as missing ones, every change audited and seen by every process's
key cache at once."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from accounts.models import APIKey, AuditEvent, EndUserBudget, Membership, User
from accounts.services import api_key_create, api_key_revoke
from billing.models import Plan
from tests.billing.conftest import at, key_client, member_client, subscribe
from tests.conftest import Tenant, assert_error_shape

pytestmark = pytest.mark.django_db

BUDGETS = "/api/v1/organization/budgets/"


@pytest.fixture
def on_pro(alice: Tenant, pro_plan: Plan) -> Tenant:
    """Alice on Pro: 5,000,000 tokens a month, 100 requests and 50,000 tokens a minute."""
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    alice.organization.refresh_from_db()
    return alice


def _put(client: APIClient, **body: Any) -> Any:
    return client.put(BUDGETS, body, format="json")


def _events(tenant: Tenant) -> list[AuditEvent]:
    return list(
        AuditEvent.objects.filter(organization=tenant.organization, action__startswith="budget.").order_by(
            "id"
        )
    )


@pytest.mark.parametrize(
    ("role", "reads"), [("owner", True), ("admin", True), ("member", False), ("reader", True)]
)
def test_who_reads_the_budgets(on_pro: Tenant, role: str, reads: bool) -> None:
    response = member_client(on_pro, role).get(BUDGETS)
    if not reads:
        assert assert_error_shape(response, status=403, code="missing_scope")["param"] == "organization:read"
        return
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "organization.budgets"
    assert body["plan"] == {
        "slug": "pro",
        "name": "Pro",
        "token_quota": 5_000_000,
        "requests_per_minute": 100,
        "tokens_per_minute": 50_000,
    }
    assert body["organization"] == {
        "token_quota": 5_000_000,
        "quota_period": "month",
        "requests_per_minute": 100,
        "tokens_per_minute": 50_000,
        "end_user_token_budget": None,
        "end_user_budget_period": "day",
    }
    assert {member["email"]: member["role"] for member in body["members"]}[on_pro.owner.email] == "owner"
    assert [key["prefix"] for key in body["api_keys"]] == [on_pro.api_key.prefix]


def test_the_overview_lists_each_members_keys_and_end_users_budget(on_pro: Tenant, bob: Any) -> None:
    _user, membership = bob
    client = member_client(on_pro, "owner")
    assert (
        _put(client, target="member", id=membership.pk, token_budget=1_000, budget_period="day").status_code
        == 200
    )
    assert _put(client, target="end_user", end_user="u-1", token_budget=50).status_code == 200
    revoked, _secret = api_key_create(organization=on_pro.organization, name="old")
    api_key_revoke(api_key=revoked)
    body = client.get(BUDGETS).json()
    bob_row = next(member for member in body["members"] if member["id"] == membership.pk)
    assert bob_row == {
        "id": membership.pk,
        "user_id": membership.user_id,
        "email": "bob@alice.test",
        "role": "member",
        "token_budget": 1_000,
        "budget_period": "day",
    }
    assert body["end_users"] == [{"end_user": "u-1", "token_budget": 50, "budget_period": "day"}]
    assert revoked.prefix not in [key["prefix"] for key in body["api_keys"]]


@pytest.mark.parametrize(
    ("role", "writes"), [("owner", True), ("admin", True), ("member", False), ("reader", False)]
)
def test_who_changes_the_budgets(on_pro: Tenant, role: str, writes: bool) -> None:
    response = _put(member_client(on_pro, role), target="organization", token_budget=1_000_000)
    if writes:
        assert response.status_code == 200, response.content
    else:
        assert assert_error_shape(response, status=403, code="missing_scope")["param"] == "organization:write"
    on_pro.organization.refresh_from_db()
    assert on_pro.organization.token_quota == (1_000_000 if writes else 5_000_000)


def test_a_key_needs_organization_write_to_change_and_read_to_see(on_pro: Tenant) -> None:
    reader = key_client(on_pro, ["organization:read"])
    assert reader.get(BUDGETS).status_code == 200
    assert_error_shape(_put(reader, target="organization", token_budget=1), status=403, code="missing_scope")
    assert_error_shape(key_client(on_pro, ["usage:read"]).get(BUDGETS), status=403, code="missing_scope")
    writer = key_client(on_pro, ["organization:write"])
    response = _put(writer, target="organization", token_budget=2_000_000)
    assert response.status_code == 200, response.content
    (event,) = _events(on_pro)
    assert event.actor_type == "api_key"


def test_the_organizations_budget_and_limits_change_and_are_audited(on_pro: Tenant) -> None:
    response = _put(
        member_client(on_pro, "admin"),
        target="organization",
        token_budget=1_000_000,
        budget_period="none",
        requests_per_minute=50,
    )
    assert response.json() == {
        "object": "budget",
        "target": "organization",
        "id": None,
        "end_user": None,
        "token_budget": 1_000_000,
        "budget_period": "none",
        "requests_per_minute": 50,
        "tokens_per_minute": 50_000,
    }
    on_pro.organization.refresh_from_db()
    assert (on_pro.organization.token_quota, on_pro.organization.quota_period) == (1_000_000, "none")
    assert on_pro.organization.requests_per_minute == 50
    (event,) = _events(on_pro)
    assert (event.action, event.actor_type, event.actor_label) == (
        "budget.updated",
        "member",
        "admin@alice.test",
    )
    assert event.changes == {
        "token_quota": [5_000_000, 1_000_000],
        "quota_period": ["month", "none"],
        "requests_per_minute": [100, 50],
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"target": "organization", "token_budget": 5_000_001}, "token_budget"),
        ({"target": "organization", "token_budget": None}, "token_budget"),
        ({"target": "organization", "token_budget": 1_000, "budget_period": "day"}, "budget_period"),
        (
            {"target": "organization", "token_budget": 1_000, "requests_per_minute": 101},
            "requests_per_minute",
        ),
        ({"target": "organization", "token_budget": 1_000, "tokens_per_minute": None}, "tokens_per_minute"),
        ({"target": "api_key", "token_budget": 5_000_001}, "token_budget"),
        ({"target": "api_key", "token_budget": 1, "tokens_per_minute": 50_001}, "tokens_per_minute"),
        ({"target": "member", "token_budget": 5_000_001}, "token_budget"),
        ({"target": "end_user", "end_user": "u-1", "token_budget": 5_000_001}, "token_budget"),
        ({"target": "end_user", "token_budget": 5_000_001}, "token_budget"),
    ],
)
def test_more_than_the_plan_grants_is_400_naming_the_field(
    on_pro: Tenant, bob: Any, body: dict[str, Any], param: str
) -> None:
    if body["target"] == "api_key":
        body["id"] = on_pro.api_key.pk
    if body["target"] == "member":
        body["id"] = bob[1].pk
    error = assert_error_shape(_put(on_pro.client(), **body), status=400, code="above_plan")
    assert error["param"] == param
    assert not _events(on_pro)
    on_pro.organization.refresh_from_db()
    assert on_pro.organization.token_quota == 5_000_000


def test_without_a_plan_nothing_caps_the_budgets(alice: Tenant) -> None:
    response = _put(alice.client(), target="organization", token_budget=None, requests_per_minute=None)
    assert response.status_code == 200, response.content
    assert alice.client().get(BUDGETS).json()["plan"] is None


def test_a_members_budget_reaches_their_next_request(on_pro: Tenant, bob: Any) -> None:
    user, membership = bob
    _key, secret = api_key_create(organization=on_pro.organization, name="bob's", user=user)
    bob_client = on_pro.client(secret)
    assert not [b for b in bob_client.get("/api/v1/me/").json()["budgets"] if b["scope"] == "member"]
    response = _put(on_pro.client(), target="member", id=membership.pk, token_budget=2_000)
    assert response.json()["token_budget"] == 2_000
    (member_budget,) = [b for b in bob_client.get("/api/v1/me/").json()["budgets"] if b["scope"] == "member"]
    assert (member_budget["limit"], member_budget["period"]) == (2_000, "month")
    (event,) = _events(on_pro)
    assert (event.target_type, event.target_label, event.changes) == (
        "membership",
        "bob@alice.test",
        {"token_budget": [None, 2_000]},
    )


def test_a_keys_budget_and_limits_reach_its_next_request(on_pro: Tenant) -> None:
    client = on_pro.client()
    assert client.get("/api/v1/me/").json()["limits"]["api_key"]["requests_per_minute"] is None  # now cached
    response = _put(
        client,
        target="api_key",
        id=on_pro.api_key.pk,
        token_budget=10_000,
        budget_period="day",
        requests_per_minute=7,
    )
    assert response.status_code == 200, response.content
    me = client.get("/api/v1/me/").json()
    assert me["limits"]["api_key"]["requests_per_minute"] == 7
    (key_budget,) = [b for b in me["budgets"] if b["scope"] == "api_key"]
    assert (key_budget["limit"], key_budget["period"]) == (10_000, "day")
    (event,) = _events(on_pro)
    assert event.changes["requests_per_minute"] == [None, 7]


def test_an_end_users_budget_is_set_then_removed(on_pro: Tenant) -> None:
    client = on_pro.client()
    set_ = _put(client, target="end_user", end_user="u-1", token_budget=500, budget_period="month")
    assert (set_.json()["end_user"], set_.json()["token_budget"]) == ("u-1", 500)
    (end_user_budget,) = [
        b
        for b in client.get("/api/v1/me/", {"end_user": "u-1"}).json()["budgets"]
        if b["scope"] == "end_user"
    ]
    assert end_user_budget["limit"] == 500
    removed = _put(client, target="end_user", end_user="u-1", token_budget=None)
    assert removed.json()["token_budget"] is None
    assert not EndUserBudget.objects.exists()
    assert not [
        b
        for b in client.get("/api/v1/me/", {"end_user": "u-1"}).json()["budgets"]
        if b["scope"] == "end_user"
    ]
    assert [event.action for event in _events(on_pro)] == ["budget.updated", "budget.deleted"]


def test_every_end_users_default_budget(on_pro: Tenant) -> None:
    response = _put(on_pro.client(), target="end_user", token_budget=300, budget_period="month")
    assert response.json()["token_budget"] == 300
    on_pro.organization.refresh_from_db()
    assert (on_pro.organization.end_user_token_budget, on_pro.organization.end_user_budget_period) == (
        300,
        "month",
    )


@pytest.mark.parametrize("target", ["member", "api_key"])
def test_another_organizations_member_or_key_is_404_as_a_missing_one(
    on_pro: Tenant, charlie: Tenant, target: str
) -> None:
    foreign_id = (
        Membership.objects.get(organization=charlie.organization).pk
        if target == "member"
        else charlie.api_key.pk
    )
    client = on_pro.client()
    foreign = _put(client, target=target, id=foreign_id, token_budget=1)
    missing = _put(client, target=target, id=987_654, token_budget=1)
    assert assert_error_shape(foreign, status=404, code="not_found") == assert_error_shape(
        missing, status=404, code="not_found"
    )
    assert APIKey.objects.get(pk=charlie.api_key.pk).token_budget is None
    assert Membership.objects.get(organization=charlie.organization).token_budget is None
    assert charlie.owner.email not in str(on_pro.client().get(BUDGETS).json())


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"target": "member", "token_budget": 1}, "id"),
        ({"target": "organization", "id": 1, "token_budget": 1}, "id"),
        ({"target": "organization", "end_user": "u", "token_budget": 1}, "end_user"),
        (
            {"target": "end_user", "end_user": "u", "token_budget": 1, "requests_per_minute": 1},
            "requests_per_minute",
        ),
        ({"target": "organization"}, "token_budget"),
        ({"target": "team", "token_budget": 1}, "target"),
        ({"target": "organization", "token_budget": -1}, "token_budget"),
    ],
)
def test_a_body_that_does_not_fit_its_target_is_400(on_pro: Tenant, body: dict[str, Any], param: str) -> None:
    assert assert_error_shape(_put(on_pro.client(), **body), status=400)["param"] == param
    assert not _events(on_pro)


def test_a_revoked_keys_budget_is_refused(on_pro: Tenant) -> None:
    api_key, _secret = api_key_create(organization=on_pro.organization, name="old")
    api_key_revoke(api_key=api_key)
    response = _put(on_pro.client(), target="api_key", id=api_key.pk, token_budget=1)
    assert assert_error_shape(response, status=400, code="api_key_inactive")["param"] == "id"


def test_an_unchanged_budget_writes_no_event(on_pro: Tenant) -> None:
    _put(on_pro.client(), target="organization", token_budget=5_000_000)
    assert not _events(on_pro)
    assert User.objects.count() == 1
