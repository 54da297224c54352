"""The pricing rules, as pure arithmetic (no database)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.periods import Period
from billing.pricing import ModelUsage, PriceList, Rates, money, price_period, usage_cost

PRICES = PriceList(
    plan_name="Pro",
    currency="usd",
    monthly_price=Decimal("20.00"),
    included_tokens=2_000,
    default_rates=Rates(prompt=Decimal("0.50"), completion=Decimal("1.50")),
    model_rates={"big-model": Rates(prompt=Decimal("2.00"), completion=Decimal("6.00"))},
)


def test_line_amounts_round_half_up_to_cents() -> None:
    assert money(Decimal("6.005")) == Decimal("6.01")  # half-even would give 6.00
    assert money(Decimal("6.0049999")) == Decimal("6.00")
    assert usage_cost(tokens=12_010, price_per_1k=Decimal("0.50")) == Decimal("6.005")


def test_included_tokens_cover_the_most_expensive_usage_first() -> None:
    priced = price_period(
        prices=PRICES,
        usage=[ModelUsage("small-model", 12_010, 3_000), ModelUsage("big-model", 2_500, 1_234)],
        period_label="2026-10",
        plan_days=31,
        period_days=31,
    )
    rows = [
        (line.model, line.token_kind, line.tokens, line.included_tokens, line.billable_tokens, line.amount)
        for line in priced.lines
    ]
    assert rows == [
        ("", "", 0, 0, 0, Decimal("20.00")),
        ("big-model", "prompt", 2_500, 766, 1_734, Decimal("3.47")),
        ("big-model", "completion", 1_234, 1_234, 0, Decimal("0.00")),
        ("small-model", "prompt", 12_010, 0, 12_010, Decimal("6.01")),
        ("small-model", "completion", 3_000, 0, 3_000, Decimal("4.50")),
    ]
    assert priced.total == Decimal("33.98")
    assert priced.tokens_used == 18_744


def test_the_allocation_does_not_depend_on_the_order_of_usage() -> None:
    usage = [ModelUsage("small-model", 12_010, 3_000), ModelUsage("big-model", 2_500, 1_234)]
    forward = price_period(prices=PRICES, usage=usage, period_label="x", plan_days=31, period_days=31)
    backward = price_period(prices=PRICES, usage=usage[::-1], period_label="x", plan_days=31, period_days=31)
    assert forward == backward


def test_a_plan_starting_mid_period_prorates_base_price_and_included_tokens_by_days() -> None:
    priced = price_period(
        prices=PRICES,
        usage=[ModelUsage("small-model", 1_000, 0)],
        period_label="2026-10",
        plan_days=10,
        period_days=31,
    )
    assert priced.lines[0].amount == Decimal("6.45")  # 20.00 × 10 / 31 = 6.4516…
    assert "10 of 31 days" in priced.lines[0].description
    assert priced.included_tokens == 645  # 2,000 × 10 // 31
    assert priced.lines[1].billable_tokens == 355


def test_usage_within_the_included_tokens_costs_only_the_base_price() -> None:
    priced = price_period(
        prices=PRICES,
        usage=[ModelUsage("small-model", 1_500, 500)],
        period_label="x",
        plan_days=30,
        period_days=30,
    )
    assert priced.total == Decimal("20.00")
    assert [line.billable_tokens for line in priced.lines[1:]] == [0, 0]


def test_periods_are_calendar_months() -> None:
    period = Period.parse("2028-02")
    assert (period.start.isoformat(), period.end.isoformat(), period.days) == ("2028-02-01", "2028-02-29", 29)
    assert period.previous().key == "2028-01" and period.next().key == "2028-03"
    assert Period.parse("2026-12").next().key == "2027-01"
    for bad in ("2026-13", "2026-1", "october"):
        with pytest.raises(ValueError):
            Period.parse(bad)
