"""Operators' view: plans, subscriptions and invoices in the admin, with build, send and mark paid."""

from __future__ import annotations

from decimal import Decimal

import pytest
import time_machine
from django.test import Client

from accounts.models import User
from billing.models import Invoice, Plan, Subscription
from billing.periods import Period
from billing.services import invoice_build
from tests.billing.conftest import at, october_usage, subscribe
from tests.conftest import Tenant

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator() -> Client:
    User.objects.create_superuser("ops@platform.test", "correct horse battery staple")
    client = Client()
    client.login(email="ops@platform.test", password="correct horse battery staple")
    return client


def _action(operator: Client, url: str, action: str, objects: list) -> None:
    response = operator.post(url, {"action": action, "_selected_action": [obj.pk for obj in objects]})
    assert response.status_code == 302, response.content


def test_admin_pages_render(operator: Client, alice: Tenant, pro_plan: Plan) -> None:
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    october_usage(alice.organization)
    invoice = invoice_build(
        organization=alice.organization, period=Period.parse("2026-10"), now=at(2026, 11, 1, 2)
    )
    assert invoice is not None
    for url in (
        "/admin/billing/plan/",
        f"/admin/billing/plan/{pro_plan.pk}/change/",
        "/admin/billing/subscription/",
        "/admin/billing/subscription/add/",
        "/admin/billing/invoice/",
        f"/admin/billing/invoice/{invoice.pk}/change/",
        "/admin/billing/stripeevent/",
    ):
        assert operator.get(url).status_code == 200, url


def test_a_plans_prices_are_read_only_once_it_is_in_use(
    operator: Client, alice: Tenant, pro_plan: Plan
) -> None:
    before = operator.get(f"/admin/billing/plan/{pro_plan.pk}/change/").content.decode()
    assert 'name="monthly_price"' in before
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    after = operator.get(f"/admin/billing/plan/{pro_plan.pk}/change/").content.decode()
    assert 'name="monthly_price"' not in after and 'name="requests_per_minute"' in after


def test_adding_a_subscription_in_the_admin_is_a_plan_change(
    operator: Client, alice: Tenant, basic_plan: Plan, pro_plan: Plan
) -> None:
    subscribe(alice.organization, basic_plan, on=at(2026, 10, 1))
    with time_machine.travel(at(2026, 11, 15), tick=False):
        response = operator.post(
            "/admin/billing/subscription/add/", {"organization": alice.organization.pk, "plan": pro_plan.pk}
        )
    assert response.status_code == 302, response.content
    pending = Subscription.objects.get(organization=alice.organization, plan=pro_plan)
    assert pending.starts_on.isoformat() == "2026-12-01"


def test_build_send_and_mark_paid_actions(operator: Client, alice: Tenant, pro_plan: Plan) -> None:
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    october_usage(alice.organization)
    subscription = Subscription.objects.get(organization=alice.organization)
    with time_machine.travel(at(2026, 11, 3), tick=False):
        _action(operator, "/admin/billing/subscription/", "build_previous_month", [subscription])
    invoice = Invoice.objects.get(organization=alice.organization)
    assert (invoice.status, invoice.total) == (Invoice.Status.DRAFT, Decimal("33.98"))

    _action(operator, "/admin/billing/invoice/", "send", [invoice])
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.OPEN

    _action(operator, "/admin/billing/invoice/", "mark_paid", [invoice])
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID and invoice.paid_at is not None


def test_a_price_edit_posted_once_the_plan_is_in_use_changes_no_price(
    operator: Client, alice: Tenant, pro_plan: Plan
) -> None:
    form = {
        "name": "Pro",
        "slug": "pro",
        "currency": "usd",
        "monthly_price": "1.00",
        "included_tokens": "2000",
        "prompt_price_per_1k": "0.50",
        "completion_price_per_1k": "1.50",
        "requests_per_minute": "100",
        "tokens_per_minute": "50000",
        "token_quota": "5000000",
        "model_prices-TOTAL_FORMS": "0",
        "model_prices-INITIAL_FORMS": "0",
    }
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    response = operator.post(f"/admin/billing/plan/{pro_plan.pk}/change/", form)
    assert response.status_code == 302, response.content
    pro_plan.refresh_from_db()
    assert pro_plan.monthly_price == Decimal("20.00")
