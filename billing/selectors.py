from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal

from django.db.models import Q, QuerySet, Sum

from accounts.models import Organization
from billing.models import Invoice, Plan, Subscription, default_currency
from billing.periods import Period, today_utc
from billing.pricing import ModelUsage, PricedPeriod, PriceList, Rates, price_period, usage_cost
from usage.models import UsageDaily, UsageRecord

COST_GROUPS = ("day", "model")
# A cost report shows list cost to a millionth: per day and model, cents would round most of it away.
REPORT_QUANTUM = Decimal("0.000001")


def plan_price_list(*, plan: Plan) -> PriceList:
    return PriceList(
        plan_name=plan.name,
        currency=plan.currency,
        monthly_price=plan.monthly_price,
        included_tokens=plan.included_tokens,
        default_rates=Rates(prompt=plan.prompt_price_per_1k, completion=plan.completion_price_per_1k),
        model_rates={
            price.model: Rates(prompt=price.prompt_price_per_1k, completion=price.completion_price_per_1k)
            for price in plan.model_prices.all()
        },
    )


def plan_is_in_use(*, plan: Plan) -> bool:
    """Whether an organization has been (or will be) on the plan, which freezes its prices."""
    return plan.pk is not None and Subscription.objects.filter(plan=plan).exists()


def subscription_in_force(*, organization: Organization, day: date) -> Subscription | None:
    return (
        Subscription.objects.select_related("plan")
        .filter(organization=organization, starts_on__lte=day)
        .order_by("-starts_on")
        .first()
    )


def subscription_pending(*, organization: Organization, day: date) -> Subscription | None:
    return (
        Subscription.objects.select_related("plan")
        .filter(organization=organization, starts_on__gt=day)
        .order_by("starts_on")
        .first()
    )


@dataclass(frozen=True)
class PlanChoice:
    """What an organization may choose, and where it stands: the plan in force today and the
    change waiting for the next period."""

    plans: list[Plan]
    current: Subscription | None
    pending: Subscription | None


def plan_choice(*, organization: Organization, day: date) -> PlanChoice:
    """The public plans, plus the organization's current and pending plans when an operator
    gave it one that is not public."""
    current = subscription_in_force(organization=organization, day=day)
    pending = subscription_pending(organization=organization, day=day)
    own = [subscription.plan_id for subscription in (current, pending) if subscription is not None]
    plans = list(
        Plan.objects.filter(Q(public=True) | Q(pk__in=own))
        .prefetch_related("model_prices")
        .order_by("monthly_price", "name")
    )
    return PlanChoice(plans=plans, current=current, pending=pending)


def plan_get_choosable(*, organization: Organization, slug: str, day: date) -> Plan | None:
    """The plan `slug` when the organization may choose it: a public plan, or the one it is on
    (choosing it again withdraws a pending change). None for an unknown plan and for another
    private one alike, so that private plans' names do not leak."""
    plan = Plan.objects.filter(slug=slug).first()
    if plan is None:
        return None
    if plan.public:
        return plan
    current = subscription_in_force(organization=organization, day=day)
    return plan if current is not None and current.plan_id == plan.pk else None


@dataclass(frozen=True)
class PeriodPlan:
    subscription: Subscription
    first_day: date  # the first day of the period on the plan
    plan_days: int


def period_plan(*, organization: Organization, period: Period) -> PeriodPlan | None:
    """The plan that bills the period, and the days of it the plan covers; None when the
    organization had no plan in the period."""
    subscription = subscription_in_force(organization=organization, day=period.end)
    if subscription is None:
        return None
    first_day = max(period.start, subscription.starts_on)
    return PeriodPlan(
        subscription=subscription, first_day=first_day, plan_days=(period.end - first_day).days + 1
    )


def period_usage(*, organization: Organization, start: date, end: date) -> list[ModelUsage]:
    """Tokens per model over [start, end] (inclusive days), from the daily rollups."""
    rows = (
        UsageDaily.objects.filter(organization=organization, day__gte=start, day__lte=end)
        .values("model")
        .annotate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
        .order_by("model")
    )
    return [
        ModelUsage(
            model=row["model"], prompt_tokens=int(row["prompt"]), completion_tokens=int(row["completion"])
        )
        for row in rows
    ]


@dataclass(frozen=True)
class PeriodPrice:
    subscription: Subscription
    priced: PricedPeriod


def period_price(
    *, organization: Organization, period: Period, through: date | None = None
) -> PeriodPrice | None:
    """The period's lines at the prices of the plan in force, from usage up to `through`
    (default: the whole period); None when the organization had no plan in the period."""
    found = period_plan(organization=organization, period=period)
    if found is None:
        return None
    last_day = min(period.end, through) if through is not None else period.end
    usage = period_usage(organization=organization, start=found.first_day, end=last_day)
    priced = price_period(
        prices=plan_price_list(plan=found.subscription.plan),
        usage=usage,
        period_label=period.key,
        plan_days=found.plan_days,
        period_days=period.days,
    )
    return PeriodPrice(subscription=found.subscription, priced=priced)


def invoice_list(*, organization: Organization) -> QuerySet[Invoice]:
    """The organization's issued invoices; drafts can still change and are not shown."""
    return (
        Invoice.objects.filter(organization=organization)
        .exclude(status=Invoice.Status.DRAFT)
        .select_related("plan")
        .order_by("-period_start")
    )


def invoice_get(*, organization: Organization, invoice_id: int) -> Invoice | None:
    return invoice_list(organization=organization).prefetch_related("lines").filter(pk=invoice_id).first()


@dataclass(frozen=True)
class Estimate:
    period: Period
    as_of: datetime
    subscription: Subscription | None
    pending: Subscription | None
    priced: PricedPeriod | None


def invoice_estimate(*, organization: Organization, now: datetime) -> Estimate:
    """What the open period's invoice would be if it closed now."""
    today = today_utc(now)
    period = Period.of(today)
    price = period_price(organization=organization, period=period, through=today)
    return Estimate(
        period=period,
        as_of=now,
        subscription=subscription_in_force(organization=organization, day=today),
        pending=subscription_pending(organization=organization, day=today),
        priced=price.priced if price is not None else None,
    )


class _PlanHistory:
    """The organization's plans by day, loaded once for a report."""

    def __init__(self, *, organization: Organization) -> None:
        subscriptions = list(
            Subscription.objects.filter(organization=organization)
            .select_related("plan")
            .prefetch_related("plan__model_prices")
            .order_by("starts_on")
        )
        self._starts = [subscription.starts_on for subscription in subscriptions]
        self._prices = [plan_price_list(plan=subscription.plan) for subscription in subscriptions]
        # One currency per organization: subscription_change refuses a plan in another one.
        self.currency = self._prices[-1].currency if self._prices else default_currency()

    def prices_on(self, day: date) -> PriceList | None:
        index = bisect.bisect_right(self._starts, day) - 1
        return self._prices[index] if index >= 0 else None


def usage_record_cost(*, record: UsageRecord) -> Decimal:
    """The record's cost at the price in force when it happened, before the plan's included
    tokens (those are allocated per period, on the invoice). Zero when no plan was in force."""
    found = subscription_in_force(organization=record.organization, day=today_utc(record.created_at))
    if found is None:
        return Decimal(0)
    rates = plan_price_list(plan=found.plan).rates(record.model)
    return usage_cost(tokens=record.prompt_tokens, price_per_1k=rates.prompt) + usage_cost(
        tokens=record.completion_tokens, price_per_1k=rates.completion
    )


@dataclass(frozen=True)
class CostRow:
    group: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal


@dataclass
class _CostTotals:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = Decimal(0)


@dataclass(frozen=True)
class CostReport:
    currency: str
    rows: list[CostRow]


def usage_cost_report(*, organization: Organization, start: date, end: date, group_by: str) -> CostReport:
    """Usage over [start, end] with its list cost (each day at the prices of the plan in force
    that day, before included tokens), one row per day or per model."""
    if group_by not in COST_GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(COST_GROUPS)}.")
    history = _PlanHistory(organization=organization)
    rows = (
        UsageDaily.objects.filter(organization=organization, day__gte=start, day__lte=end)
        .values("day", "model")
        .annotate(
            requests_sum=Sum("requests"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens")
        )
        .order_by("day", "model")
    )
    totals: dict[str, _CostTotals] = defaultdict(_CostTotals)
    for row in rows:
        total = totals[row["day"].isoformat() if group_by == "day" else row["model"]]
        prompt, completion = int(row["prompt"]), int(row["completion"])
        total.requests += int(row["requests_sum"])
        total.prompt_tokens += prompt
        total.completion_tokens += completion
        prices = history.prices_on(row["day"])
        if prices is not None:
            rates = prices.rates(row["model"])
            total.cost += usage_cost(tokens=prompt, price_per_1k=rates.prompt)
            total.cost += usage_cost(tokens=completion, price_per_1k=rates.completion)
    return CostReport(
        currency=history.currency,
        rows=[
            CostRow(
                group=group,
                requests=total.requests,
                prompt_tokens=total.prompt_tokens,
                completion_tokens=total.completion_tokens,
                cost=total.cost.quantize(REPORT_QUANTUM, rounding=ROUND_HALF_UP),
            )
            for group, total in sorted(totals.items())
        ],
    )
