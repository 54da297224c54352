"""Prices a period of usage: pure arithmetic on Decimal, no database.

Rules:
- Money is Decimal. A usage cost is exact (tokens × price per 1,000 / 1,000, no rounding); each
  invoice line's amount is rounded once, half up, to cents. The invoice total is the sum of its
  rounded lines, so the lines always add up to the total.
- Within one period an organization is on one plan (changes take effect at the next period), so
  each model and token kind has exactly one unit price in a period.
- The plan's included tokens cover the most expensive usage first (the customer's best case),
  ties broken by model name then prompt before completion. The allocation does not depend on
  the order in which usage happened, so an estimate and the final invoice agree.
- A plan that starts during a period (an organization's first plan) is charged for the days it
  covers: its base price and included tokens are prorated by days.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
TOKENS_PER_PRICE_UNIT = 1000

PROMPT = "prompt"
COMPLETION = "completion"
TOKEN_KINDS = (PROMPT, COMPLETION)

BASE = "base"
USAGE = "usage"


def money(amount: Decimal) -> Decimal:
    """The rounding rule of every invoice line: half up, to cents."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def usage_cost(*, tokens: int, price_per_1k: Decimal) -> Decimal:
    """The exact cost of `tokens` at a price per 1,000 tokens, unrounded."""
    return Decimal(tokens) * price_per_1k / TOKENS_PER_PRICE_UNIT


@dataclass(frozen=True)
class Rates:
    """Prices per 1,000 tokens."""

    prompt: Decimal
    completion: Decimal

    def for_kind(self, token_kind: str) -> Decimal:
        return self.prompt if token_kind == PROMPT else self.completion


@dataclass(frozen=True)
class PriceList:
    plan_name: str
    currency: str
    monthly_price: Decimal
    included_tokens: int
    default_rates: Rates
    model_rates: Mapping[str, Rates] = field(default_factory=dict)

    def rates(self, model: str) -> Rates:
        return self.model_rates.get(model, self.default_rates)


@dataclass(frozen=True)
class ModelUsage:
    model: str
    prompt_tokens: int
    completion_tokens: int

    def tokens(self, token_kind: str) -> int:
        return self.prompt_tokens if token_kind == PROMPT else self.completion_tokens


@dataclass(frozen=True)
class PricedLine:
    kind: str  # BASE or USAGE
    description: str
    unit_price: Decimal  # per 1,000 tokens; the monthly price for the base line
    amount: Decimal  # rounded to cents
    model: str = ""
    token_kind: str = ""
    tokens: int = 0
    included_tokens: int = 0
    billable_tokens: int = 0


@dataclass(frozen=True)
class PricedPeriod:
    currency: str
    lines: list[PricedLine]
    included_tokens: int  # what the plan includes for the days it covers

    @property
    def total(self) -> Decimal:
        return sum((line.amount for line in self.lines), Decimal("0.00"))

    @property
    def tokens_used(self) -> int:
        return sum(line.tokens for line in self.lines)


@dataclass(frozen=True)
class _Entry:
    """The tokens of one model and kind in the period, at their unit price."""

    model: str
    token_kind: str
    tokens: int
    unit_price: Decimal

    @property
    def display_order(self) -> tuple[str, int]:
        return (self.model, TOKEN_KINDS.index(self.token_kind))


def _plain(value: Decimal) -> str:
    """0.500000 → 0.5, 2.000000 → 2: unit prices as a person writes them."""
    return f"{value.normalize():f}"


def price_period(
    *,
    prices: PriceList,
    usage: Iterable[ModelUsage],
    period_label: str,
    plan_days: int,
    period_days: int,
) -> PricedPeriod:
    """The lines of one period: the base price, then a line per model and token kind (prompt
    before completion, models by name) for the tokens beyond what the plan includes.
    `plan_days` of the period's `period_days` were on the plan."""
    if not 0 < plan_days <= period_days:
        raise ValueError(f"plan_days must be within 1..{period_days}, not {plan_days}.")
    partial = plan_days < period_days
    base_amount = money(prices.monthly_price * plan_days / period_days)
    included = prices.included_tokens * plan_days // period_days
    base_description = f"{prices.plan_name} plan, {period_label}"
    if partial:
        base_description += f" ({plan_days} of {period_days} days)"
    lines = [
        PricedLine(
            kind=BASE, description=base_description, unit_price=prices.monthly_price, amount=base_amount
        )
    ]

    entries = sorted(
        (
            _Entry(
                model=row.model,
                token_kind=kind,
                tokens=row.tokens(kind),
                unit_price=prices.rates(row.model).for_kind(kind),
            )
            for row in usage
            for kind in TOKEN_KINDS
            if row.tokens(kind) > 0
        ),
        key=lambda entry: entry.display_order,
    )
    covered: dict[tuple[str, int], int] = {}
    remaining = included
    for entry in sorted(entries, key=lambda entry: (-entry.unit_price, entry.display_order)):
        covered[entry.display_order] = min(remaining, entry.tokens)
        remaining -= covered[entry.display_order]

    for entry in entries:
        included_here = covered[entry.display_order]
        billable = entry.tokens - included_here
        description = (
            f"{entry.model}, {entry.token_kind} tokens: {billable:,} at {_plain(entry.unit_price)} "
            f"{prices.currency.upper()} per 1,000 ({entry.tokens:,} used, {included_here:,} included)"
        )
        lines.append(
            PricedLine(
                kind=USAGE,
                description=description,
                unit_price=entry.unit_price,
                amount=money(usage_cost(tokens=billable, price_per_1k=entry.unit_price)),
                model=entry.model,
                token_kind=entry.token_kind,
                tokens=entry.tokens,
                included_tokens=included_here,
                billable_tokens=billable,
            )
        )
    return PricedPeriod(currency=prices.currency, lines=lines, included_tokens=included)
