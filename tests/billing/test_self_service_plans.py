"""Tenants choose their plan through the API (owners only); operators create plans and assign
any of them, private ones included, with commands and the admin. Every change is audited."""

from __future__ import annotations

from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.test import Client

from accounts.models import AuditEvent, Organization, User
from billing.models import Plan, Subscription
from billing.services import plan_create
from tests.billing.conftest import PASSWORD, at, key_client, member_client, subscribe
from tests.conftest import Tenant, assert_error_shape

pytestmark = pytest.mark.django_db

PLANS = "/api/v1/billing/plans/"
SUBSCRIPTION = "/api/v1/billing/subscription/"


@pytest.fixture
def private_plan(db: Any) -> Plan:
    return plan_create(
        slug="enterprise-acme",
        name="Enterprise (Acme)",
        monthly_price=Decimal("900.00"),
        prompt_price_per_1k=Decimal("0.10"),
        completion_price_per_1k=Decimal("0.30"),
        public=False,
    )


def _events(organization: Organization, action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(organization=organization, action=action).order_by("id"))


@pytest.mark.parametrize("role", ["owner", "admin", "member", "reader"])
def test_every_member_sees_the_public_plans_and_its_own(
    alice: Tenant, pro_plan: Plan, basic_plan: Plan, private_plan: Plan, role: str
) -> None:
    subscribe(alice.organization, basic_plan, on=at(2026, 9, 15))
    body = member_client(alice, role).get(PLANS).json()
    assert [plan["slug"] for plan in body["data"]] == ["basic", "pro"]
    assert body["current_plan"] == {"slug": "basic", "name": "Basic"}
    assert body["pending_plan"] is None
    pro = body["data"][1]
    assert (pro["object"], pro["monthly_price"], pro["prompt_price_per_1k"], pro["token_quota"]) == (
        "plan",
        "20.00",
        "0.500000",
        5_000_000,
    )
    assert pro["model_prices"] == [
        {"model": "big-model", "prompt_price_per_1k": "2.000000", "completion_price_per_1k": "6.000000"}
    ]


def test_a_private_plan_shows_only_to_the_organization_on_it(
    alice: Tenant, charlie: Tenant, pro_plan: Plan, private_plan: Plan
) -> None:
    call_command("set_plan", "--org", "alice", "enterprise-acme", stdout=StringIO())
    alice_body = alice.client().get(PLANS).json()
    assert [plan["slug"] for plan in alice_body["data"]] == ["pro", "enterprise-acme"]
    assert alice_body["current_plan"]["slug"] == "enterprise-acme"
    assert [plan["slug"] for plan in charlie.client().get(PLANS).json()["data"]] == ["pro"]


def test_the_owners_first_plan_starts_at_once_with_its_limits(alice: Tenant, pro_plan: Plan) -> None:
    with time_machine.travel(at(2026, 10, 10), tick=False):
        client = member_client(alice, "owner")
        response = client.post(SUBSCRIPTION, {"plan": "pro"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json() == {
        "object": "billing.subscription",
        "plan": {"slug": "pro", "name": "Pro"},
        "starts_on": "2026-10-10",
        "current_plan": {"slug": "pro", "name": "Pro"},
        "pending_plan": None,
    }
    alice.organization.refresh_from_db()
    assert (alice.organization.requests_per_minute, alice.organization.token_quota) == (100, 5_000_000)
    (event,) = _events(alice.organization, "subscription.changed")
    assert (event.actor_type, event.actor_label, event.actor_user) == (
        "member",
        alice.owner.email,
        alice.owner,
    )
    assert event.changes["plan"] == [None, "pro"]
    assert event.ip == "127.0.0.1"


def test_a_change_waits_for_the_next_period_and_the_current_plan_withdraws_it(
    alice: Tenant, pro_plan: Plan, basic_plan: Plan
) -> None:
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    with time_machine.travel(at(2026, 10, 10), tick=False):
        client = member_client(alice, "owner")
        changed = client.post(SUBSCRIPTION, {"plan": "basic"}, format="json").json()
        listed = client.get(PLANS).json()
        withdrawn = client.post(SUBSCRIPTION, {"plan": "pro"}, format="json").json()
    assert (changed["plan"]["slug"], changed["starts_on"]) == ("basic", "2026-11-01")
    assert changed["current_plan"]["slug"] == "pro"
    assert changed["pending_plan"] == {"slug": "basic", "name": "Basic", "starts_on": "2026-11-01"}
    assert listed["pending_plan"] == changed["pending_plan"]
    assert (withdrawn["plan"]["slug"], withdrawn["pending_plan"]) == ("pro", None)
    assert not Subscription.objects.filter(organization=alice.organization, plan=basic_plan).exists()
    alice.organization.refresh_from_db()
    assert alice.organization.token_quota == 5_000_000  # pro's limits hold until the period ends
    first, second = _events(alice.organization, "subscription.changed")
    assert first.changes["plan"] == ["pro", "basic"]
    assert second.changes["pending_plan_replaced"] == "basic"


@pytest.mark.parametrize("role", ["admin", "member", "reader"])
def test_only_an_owner_changes_the_plan(alice: Tenant, pro_plan: Plan, role: str) -> None:
    response = member_client(alice, role).post(SUBSCRIPTION, {"plan": "pro"}, format="json")
    assert assert_error_shape(response, status=403, code="missing_scope")["param"] == "billing:write"
    assert not Subscription.objects.exists()
    assert not _events(alice.organization, "subscription.changed")


def test_a_key_needs_billing_write(alice: Tenant, pro_plan: Plan) -> None:
    refused = key_client(alice, ["billing:read", "organization:write"]).post(
        SUBSCRIPTION, {"plan": "pro"}, format="json"
    )
    assert_error_shape(refused, status=403, code="missing_scope")
    assert key_client(alice, ["billing:read"]).get(PLANS).status_code == 200
    allowed = key_client(alice, ["billing:write"]).post(SUBSCRIPTION, {"plan": "pro"}, format="json")
    assert allowed.status_code == 200, allowed.content
    (event,) = _events(alice.organization, "subscription.changed")
    assert event.actor_type == "api_key"


def test_an_unknown_plan_and_a_private_one_are_the_same_404(
    alice: Tenant, charlie: Tenant, private_plan: Plan
) -> None:
    call_command("set_plan", "--org", "charlie", "enterprise-acme", stdout=StringIO())
    client = member_client(alice, "owner")
    missing = client.post(SUBSCRIPTION, {"plan": "no-such-plan"}, format="json")
    private = client.post(SUBSCRIPTION, {"plan": "enterprise-acme"}, format="json")
    assert assert_error_shape(missing, status=404, code="not_found") == assert_error_shape(
        private, status=404, code="not_found"
    )
    assert not Subscription.objects.filter(organization=alice.organization).exists()


def test_the_private_plan_an_organization_is_on_can_be_chosen_again(
    charlie: Tenant, pro_plan: Plan, private_plan: Plan
) -> None:
    call_command("set_plan", "--org", "charlie", "enterprise-acme", stdout=StringIO())
    client = charlie.client()
    assert client.post(SUBSCRIPTION, {"plan": "pro"}, format="json").json()["pending_plan"]["slug"] == "pro"
    again = client.post(SUBSCRIPTION, {"plan": "enterprise-acme"}, format="json")
    assert again.status_code == 200
    assert again.json()["pending_plan"] is None


def test_a_body_without_a_plan_is_400(alice: Tenant) -> None:
    error = assert_error_shape(alice.client().post(SUBSCRIPTION, {}, format="json"), status=400)
    assert error["param"] == "plan"


def test_a_plan_in_another_currency_is_400(alice: Tenant, pro_plan: Plan) -> None:
    plan_create(
        slug="euro",
        name="Euro",
        monthly_price=Decimal(10),
        prompt_price_per_1k=Decimal(1),
        completion_price_per_1k=Decimal(1),
        currency="eur",
    )
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    response = alice.client().post(SUBSCRIPTION, {"plan": "euro"}, format="json")
    assert assert_error_shape(response, status=400, code="billing_error")["param"] == "plan"


# --- Operators: commands and the admin ------------------------------------------------------


def test_create_plan_makes_a_public_or_private_plan() -> None:
    out = StringIO()
    call_command(
        "create_plan",
        "starter",
        "--name",
        "Starter",
        "--monthly-price",
        "9.50",
        "--prompt-price",
        "0.25",
        "--completion-price",
        "0.75",
        "--included-tokens",
        "1000",
        "--rpm",
        "30",
        "--tpm",
        "10000",
        "--token-quota",
        "500000",
        stdout=out,
    )
    plan = Plan.objects.get(slug="starter")
    assert (plan.monthly_price, plan.prompt_price_per_1k, plan.completion_price_per_1k) == (
        Decimal("9.50"),
        Decimal("0.25"),
        Decimal("0.75"),
    )
    assert (plan.included_tokens, plan.requests_per_minute, plan.tokens_per_minute, plan.token_quota) == (
        1000,
        30,
        10_000,
        500_000,
    )
    assert plan.public
    assert "Created public plan starter" in out.getvalue()
    call_command(
        "create_plan",
        "vip",
        "--name=VIP",
        "--monthly-price=0",
        "--prompt-price=0",
        "--completion-price=0",
        "--private",
        stdout=StringIO(),
    )
    assert not Plan.objects.get(slug="vip").public


@pytest.mark.parametrize(
    ("slug", "price", "message"),
    [("pro", "1", "slug"), ("cheap", "-1", "zero or more"), ("cheap", "abc", "not an amount")],
)
def test_create_plan_refuses_a_taken_slug_or_a_bad_price(
    pro_plan: Plan, slug: str, price: str, message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        call_command(
            "create_plan",
            slug,
            "--name=X",
            f"--monthly-price={price}",
            "--prompt-price=1",
            "--completion-price=1",
            stdout=StringIO(),
        )
    assert Plan.objects.count() == 1


def test_set_plan_assigns_any_plan_and_is_audited_as_the_operator(alice: Tenant, private_plan: Plan) -> None:
    out = StringIO()
    call_command("set_plan", "--org", "alice", "enterprise-acme", stdout=out)
    assert "alice is on enterprise-acme" in out.getvalue()
    (event,) = _events(alice.organization, "subscription.changed")
    assert (event.actor_type, event.actor_label, event.actor_user, event.ip) == (
        "operator",
        "manage.py set_plan",
        None,
        None,
    )


@pytest.mark.parametrize(("org", "plan"), [("nobody", "enterprise-acme"), ("alice", "nothing")])
def test_set_plan_refuses_an_unknown_organization_or_plan(
    alice: Tenant, private_plan: Plan, org: str, plan: str
) -> None:
    with pytest.raises(CommandError, match="No "):
        call_command("set_plan", "--org", org, plan, stdout=StringIO())
    assert not Subscription.objects.exists()


def test_the_admins_plan_assignment_and_withdrawal_are_audited(
    alice: Tenant, pro_plan: Plan, basic_plan: Plan
) -> None:
    User.objects.create_superuser("ops@platform.test", PASSWORD)
    operator = Client()
    operator.login(email="ops@platform.test", password=PASSWORD)
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    response = operator.post(
        "/admin/billing/subscription/add/", {"organization": alice.organization.pk, "plan": basic_plan.pk}
    )
    assert response.status_code == 302, response.content
    (changed,) = _events(alice.organization, "subscription.changed")
    assert (changed.actor_type, changed.actor_label) == ("operator", "operator ops@platform.test")
    assert changed.changes["plan"] == ["pro", "basic"]
    pending = Subscription.objects.get(organization=alice.organization, plan=basic_plan)
    response = operator.post(f"/admin/billing/subscription/{pending.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302, response.content
    assert not Subscription.objects.filter(pk=pending.pk).exists()
    (withdrawn,) = _events(alice.organization, "subscription.pending_cancelled")
    assert (withdrawn.actor_type, withdrawn.changes["plan"]) == ("operator", "basic")


def test_a_plans_limits_edited_in_the_admin_are_audited_in_each_organization_on_it(
    alice: Tenant, charlie: Tenant, pro_plan: Plan, basic_plan: Plan
) -> None:
    User.objects.create_superuser("ops@platform.test", PASSWORD)
    operator = Client()
    operator.login(email="ops@platform.test", password=PASSWORD)
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    subscribe(charlie.organization, basic_plan, on=at(2026, 9, 15))
    form = {
        "name": "Pro",
        "slug": "pro",
        "public": "on",
        "requests_per_minute": "120",
        "tokens_per_minute": "50000",
        "token_quota": "5000000",
        "model_prices-TOTAL_FORMS": "0",
        "model_prices-INITIAL_FORMS": "0",
    }
    response = operator.post(f"/admin/billing/plan/{pro_plan.pk}/change/", form)
    assert response.status_code == 302, response.content
    (event,) = _events(alice.organization, "plan.limits_applied")
    assert (event.actor_type, event.target_label, event.changes) == (
        "operator",
        "pro",
        {"requests_per_minute": [100, 120]},
    )
    assert not _events(charlie.organization, "plan.limits_applied")
