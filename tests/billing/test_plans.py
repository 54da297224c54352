"""Plans and plan changes: a change takes effect at the start of the next period."""

from __future__ import annotations

from decimal import Decimal

import pytest
import time_machine

from accounts.models import Organization
from billing.models import Plan, Subscription
from billing.periods import Period
from billing.selectors import subscription_in_force
from billing.services import (
    BillingError,
    invoice_build,
    plan_create,
    plan_prices_check_editable,
    subscription_change,
    subscriptions_activate,
)
from billing.tasks import activate_plan_changes
from tests.billing.conftest import at, subscribe, use
from tests.conftest import Tenant

pytestmark = pytest.mark.django_db


def _limits(tenant: Tenant) -> tuple:
    organization = Organization.objects.get(pk=tenant.organization.pk)
    return organization.requests_per_minute, organization.tokens_per_minute, organization.token_quota


def test_the_first_plan_applies_its_limits_at_once(alice: Tenant, pro_plan: Plan) -> None:
    subscribe(alice.organization, pro_plan, on=at(2026, 10, 5))
    assert _limits(alice) == (100, 50_000, 5_000_000)
    assert Organization.objects.get(pk=alice.organization.pk).quota_period == "month"


def test_a_plan_sets_the_knowledge_limits_too(alice: Tenant) -> None:
    plan = plan_create(
        slug="search-heavy",
        name="Search heavy",
        monthly_price=Decimal("0"),
        prompt_price_per_1k=Decimal("0"),
        completion_price_per_1k=Decimal("0"),
        search_requests_per_minute=30,
        ingestion_token_quota=1_000_000,
    )
    subscribe(alice.organization, plan, on=at(2026, 10, 5))
    organization = Organization.objects.get(pk=alice.organization.pk)
    assert (organization.search_requests_per_minute, organization.ingestion_token_quota) == (30, 1_000_000)


def test_the_first_plans_limits_reach_the_next_request(alice: Tenant, pro_plan: Plan) -> None:
    assert alice.client().get("/api/v1/me/")["x-ratelimit-limit-requests"] == "600"  # cached before
    subscription_change(organization=alice.organization, plan=pro_plan)
    assert alice.client().get("/api/v1/me/")["x-ratelimit-limit-requests"] == "100"


def test_a_plan_change_takes_effect_at_the_next_period(
    alice: Tenant, basic_plan: Plan, pro_plan: Plan
) -> None:
    subscribe(alice.organization, basic_plan, on=at(2026, 10, 1))
    pending = subscription_change(organization=alice.organization, plan=pro_plan, now=at(2026, 11, 15))
    assert pending.starts_on.isoformat() == "2026-12-01"

    # Until then: the old plan's limits and prices, for the whole current period.
    assert _limits(alice) == (10, 5_000, 100_000)
    with time_machine.travel(at(2026, 11, 30, 23), tick=False):
        assert activate_plan_changes() == 0
    use(alice.organization, when=at(2026, 11, 20), model="small-model", prompt=1_000, completion=1_000)
    november = invoice_build(
        organization=alice.organization, period=Period.parse("2026-11"), now=at(2026, 12, 1, 2)
    )
    assert november is not None and november.plan == basic_plan
    assert november.total == Decimal("8.00")  # 5.00 + 1.00 + 2.00, Basic's prices

    # From the next period: the new plan's limits and prices.
    with time_machine.travel(at(2026, 12, 1, 0, 5), tick=False):
        assert activate_plan_changes() == 1
        assert activate_plan_changes() == 0
    assert _limits(alice) == (100, 50_000, 5_000_000)
    use(alice.organization, when=at(2026, 12, 3), model="small-model", prompt=3_000, completion=1_000)
    december = invoice_build(
        organization=alice.organization, period=Period.parse("2026-12"), now=at(2027, 1, 1, 2)
    )
    assert december is not None and december.plan == pro_plan
    # 20.00 + Pro's prices: the 2,000 included cover the 1,000 completion tokens (the dearer)
    # and 1,000 prompt tokens; the other 2,000 prompt tokens cost 0.50 per 1,000.
    assert december.total == Decimal("21.00")


def test_a_new_change_replaces_the_pending_one_and_the_current_plan_cancels_it(
    alice: Tenant, basic_plan: Plan, pro_plan: Plan
) -> None:
    enterprise = plan_create(
        slug="enterprise",
        name="Enterprise",
        monthly_price=Decimal("500"),
        prompt_price_per_1k=Decimal("0.1"),
        completion_price_per_1k=Decimal("0.2"),
    )
    subscribe(alice.organization, basic_plan, on=at(2026, 10, 1))
    subscription_change(organization=alice.organization, plan=pro_plan, now=at(2026, 11, 2))
    subscription_change(organization=alice.organization, plan=enterprise, now=at(2026, 11, 3))
    assert list(
        Subscription.objects.filter(organization=alice.organization).values_list("plan__slug", "starts_on")
    ) == [
        ("basic", at(2026, 10, 1).date()),
        ("enterprise", at(2026, 12, 1).date()),
    ]
    held = subscription_change(organization=alice.organization, plan=basic_plan, now=at(2026, 11, 4))
    assert held.plan == basic_plan
    assert Subscription.objects.filter(organization=alice.organization).count() == 1
    assert (
        subscription_in_force(organization=alice.organization, day=at(2026, 12, 5).date()).plan == basic_plan
    )


def test_a_plan_in_another_currency_is_refused(alice: Tenant, basic_plan: Plan) -> None:
    euro = plan_create(
        slug="euro",
        name="Euro",
        monthly_price=Decimal("5"),
        prompt_price_per_1k=Decimal("1"),
        completion_price_per_1k=Decimal("1"),
        currency="EUR",
    )
    subscribe(alice.organization, basic_plan, on=at(2026, 10, 1))
    with pytest.raises(BillingError, match="EUR"):
        subscription_change(organization=alice.organization, plan=euro, now=at(2026, 10, 2))


def test_a_plans_prices_freeze_once_an_organization_is_on_it(alice: Tenant, pro_plan: Plan) -> None:
    plan_prices_check_editable(plan=pro_plan)
    subscribe(alice.organization, pro_plan, on=at(2026, 10, 1))
    with pytest.raises(BillingError, match="frozen"):
        plan_prices_check_editable(plan=pro_plan)


def test_subscriptions_activate_is_idempotent_without_changes(alice: Tenant, pro_plan: Plan) -> None:
    subscribe(alice.organization, pro_plan, on=at(2026, 10, 1))
    assert subscriptions_activate(now=at(2026, 10, 2)) == 0
