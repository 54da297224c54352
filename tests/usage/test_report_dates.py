"""`start` and `end` of the usage and cost reports are optional: by default the current period
(the UTC calendar month) up to today."""

from __future__ import annotations

from decimal import Decimal

import pytest
import time_machine

from billing.services import plan_create
from tests.billing.conftest import at, subscribe, use
from tests.conftest import Tenant, assert_error_shape

pytestmark = pytest.mark.django_db


@pytest.fixture
def usage_around_october(alice: Tenant) -> None:
    use(alice.organization, when=at(2026, 9, 30, 23, 59), model="m", prompt=1, completion=0)
    use(alice.organization, when=at(2026, 10, 1, 0, 0), model="m", prompt=20, completion=0)
    use(alice.organization, when=at(2026, 10, 20, 9), model="m", prompt=300, completion=0)
    use(alice.organization, when=at(2026, 10, 21, 9), model="m", prompt=4_000, completion=0)


def _report(tenant: Tenant, url: str, **params: str) -> dict:
    with time_machine.travel(at(2026, 10, 20, 23, 30), tick=False):
        response = tenant.client().get(url, params)
    assert response.status_code == 200, response.content
    return response.json()


def _tokens(body: dict) -> int:
    return sum(row["prompt_tokens"] for row in body["data"])


def test_usage_without_dates_is_this_month_up_to_today(alice: Tenant, usage_around_october: None) -> None:
    body = _report(alice, "/api/v1/usage/")
    assert (body["start"], body["end"]) == ("2026-10-01", "2026-10-20")
    assert [row["day"] for row in body["data"]] == ["2026-10-01", "2026-10-20"]
    assert _tokens(body) == 320


def test_usage_with_only_an_end_starts_on_the_first_of_its_month(
    alice: Tenant, usage_around_october: None
) -> None:
    body = _report(alice, "/api/v1/usage/", end="2026-09-30")
    assert (body["start"], body["end"]) == ("2026-09-01", "2026-09-30")
    assert _tokens(body) == 1


def test_usage_with_only_a_start_ends_today(alice: Tenant, usage_around_october: None) -> None:
    body = _report(alice, "/api/v1/usage/", start="2026-09-15")
    assert (body["start"], body["end"]) == ("2026-09-15", "2026-10-20")
    assert _tokens(body) == 321
    future = _report(alice, "/api/v1/usage/", start="2026-12-01")
    assert (future["start"], future["end"], future["data"]) == ("2026-12-01", "2026-12-01", [])


def test_usage_with_only_a_start_over_a_year_ago_covers_the_366_days_a_report_may(alice: Tenant) -> None:
    body = _report(alice, "/api/v1/usage/", start="2025-01-01")
    assert (body["start"], body["end"]) == ("2025-01-01", "2026-01-02")


def test_an_end_before_the_start_is_still_400(alice: Tenant) -> None:
    response = alice.client().get("/api/v1/usage/", {"start": "2026-10-02", "end": "2026-10-01"})
    assert assert_error_shape(response, status=400)["param"] == "end"


def test_costs_without_dates_are_this_month_up_to_today(alice: Tenant, usage_around_october: None) -> None:
    plan = plan_create(
        slug="flat",
        name="Flat",
        monthly_price=Decimal(0),
        prompt_price_per_1k=Decimal("0.50"),
        completion_price_per_1k=Decimal(0),
    )
    subscribe(alice.organization, plan, on=at(2026, 9, 1))
    body = _report(alice, "/api/v1/billing/costs/")
    assert (body["start"], body["end"]) == ("2026-10-01", "2026-10-20")
    assert [(row["day"], row["prompt_tokens"]) for row in body["data"]] == [
        ("2026-10-01", 20),
        ("2026-10-20", 300),
    ]
    assert Decimal(body["data"][1]["cost"]) == Decimal("0.15")  # 300 prompt tokens at 0.50 per 1,000
