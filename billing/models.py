from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q

from accounts.models import Organization, validate_model_names
from billing.periods import Period


def default_currency() -> str:
    return str(settings.BILLING_CURRENCY).lower()


def _price_field(*, help_text: str = "") -> models.DecimalField:
    # Six decimals: a price per 1,000 tokens is often a fraction of a cent.
    return models.DecimalField(max_digits=14, decimal_places=6, default=Decimal(0), help_text=help_text)


def _money_field(*, help_text: str = "") -> models.DecimalField:
    return models.DecimalField(max_digits=14, decimal_places=2, default=Decimal(0), help_text=help_text)


class Plan(models.Model):
    """What an organization pays each period and the limits it gets.

    Prices are frozen once an organization has been on the plan (as Stripe's prices are): the
    cost of usage must stay the price in force when it happened, so a new price is a new plan
    that organizations move to at their next period. Limits are not prices and stay editable."""

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=100)
    public = models.BooleanField(
        default=True,
        help_text="Tenants may choose it themselves (the plans API); otherwise only an operator assigns it.",
    )
    currency = models.CharField(max_length=3, default=default_currency)
    monthly_price = _money_field(help_text="Charged each period, prorated by days in the first one.")
    included_tokens = models.PositiveBigIntegerField(
        default=0, help_text="Tokens per period that the monthly price covers."
    )
    prompt_price_per_1k = _price_field(help_text="Per 1,000 prompt tokens beyond the included ones.")
    completion_price_per_1k = _price_field(help_text="Per 1,000 completion tokens beyond the included ones.")

    # The limits the plan grants; empty means unlimited.
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    token_quota = models.PositiveBigIntegerField(null=True, blank=True, help_text="Tokens per month.")
    search_requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    ingestion_token_quota = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Tokens embedded by document ingestion per month."
    )
    allowed_models = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_model_names],
        help_text="The models (public names) the plan includes; empty: every model served.",
    )

    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("monthly_price", "name")
        constraints = [
            models.CheckConstraint(
                condition=Q(monthly_price__gte=0)
                & Q(prompt_price_per_1k__gte=0)
                & Q(completion_price_per_1k__gte=0),
                name="plan_prices_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class PlanModelPrice(models.Model):
    """A model-specific price that replaces the plan's default prices for that model."""

    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="model_prices")
    model = models.CharField(max_length=128)
    prompt_price_per_1k = _price_field()
    completion_price_per_1k = _price_field()

    class Meta:
        verbose_name = "per-model price"
        constraints = [
            models.UniqueConstraint(fields=("plan", "model"), name="one_price_per_plan_model"),
            models.CheckConstraint(
                condition=Q(prompt_price_per_1k__gte=0) & Q(completion_price_per_1k__gte=0),
                name="model_prices_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model} on {self.plan}"


class Subscription(models.Model):
    """An organization on a plan from `starts_on` (a UTC day) until its next subscription starts.

    The rows of an organization are its plan history: the plan in force on a day is the row
    with the latest `starts_on` on or before it. The first plan starts the day it is assigned;
    every later change starts at the next period, so a period has one plan. A row starting in
    the future is the pending change."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    starts_on = models.DateField()
    limits_applied_at = models.DateTimeField(
        null=True, blank=True, help_text="When the plan's limits were applied to the organization."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("organization", "starts_on")
        constraints = [
            models.UniqueConstraint(fields=("organization", "starts_on"), name="one_plan_per_start"),
        ]

    def __str__(self) -> str:
        return f"{self.organization} on {self.plan} from {self.starts_on}"


class Invoice(models.Model):
    """One organization's bill for one period. A draft is rebuilt in place; once finalized its
    lines and amounts never change."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        OPEN = "open", "Open (finalized, awaiting payment)"
        PAID = "paid", "Paid"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    period_start = models.DateField(help_text="The first day of the month billed.")
    period_end = models.DateField(help_text="The last day of the month billed.")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="invoices")
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.DRAFT)
    total = _money_field()
    tokens_used = models.PositiveBigIntegerField(default=0)
    included_tokens = models.PositiveBigIntegerField(default=0)

    built_at = models.DateTimeField()
    finalized_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    payment_failures = models.PositiveIntegerField(
        default=0, help_text="Failed payment attempts reported by Stripe."
    )
    past_due_since = models.DateTimeField(
        null=True, blank=True, help_text="When the first payment attempt failed."
    )

    stripe_invoice_id = models.CharField(max_length=64, blank=True)
    hosted_invoice_url = models.URLField(max_length=500, blank=True, help_text="Stripe's page to pay it.")
    stripe_synced_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-period_start", "organization")
        constraints = [
            models.UniqueConstraint(fields=("organization", "period_start"), name="one_invoice_per_period"),
            models.UniqueConstraint(
                fields=("stripe_invoice_id",),
                condition=~Q(stripe_invoice_id=""),
                name="unique_stripe_invoice",
            ),
            models.CheckConstraint(condition=Q(total__gte=0), name="invoice_total_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.organization} {self.period}"

    @property
    def period(self) -> Period:
        return Period(start=self.period_start)

    @property
    def is_draft(self) -> bool:
        return self.status == self.Status.DRAFT


class InvoiceLine(models.Model):
    class Kind(models.TextChoices):
        BASE = "base", "Base price"
        USAGE = "usage", "Usage"

    class TokenKind(models.TextChoices):
        NONE = "", "—"
        PROMPT = "prompt", "Prompt"
        COMPLETION = "completion", "Completion"

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveSmallIntegerField()
    kind = models.CharField(max_length=8, choices=Kind.choices)
    description = models.CharField(max_length=300)
    model = models.CharField(max_length=128, blank=True)
    token_kind = models.CharField(max_length=16, choices=TokenKind.choices, blank=True)
    tokens = models.PositiveBigIntegerField(default=0)
    included_tokens = models.PositiveBigIntegerField(default=0)
    billable_tokens = models.PositiveBigIntegerField(default=0)
    unit_price = _price_field(help_text="Per 1,000 tokens; the monthly price on the base line.")
    amount = _money_field()
    stripe_invoice_item_id = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ("invoice", "position")
        constraints = [
            models.UniqueConstraint(fields=("invoice", "position"), name="one_line_per_position"),
        ]

    def __str__(self) -> str:
        return self.description


class StripeEvent(models.Model):
    """A webhook event already applied; its id is how a redelivery is recognized."""

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    invoice = models.ForeignKey(Invoice, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    outcome = models.CharField(max_length=200)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-received_at",)

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class SpendAlert(models.Model):
    """One alert sent: a budget (or this period's cost) reached one of its thresholds. Unique per
    budget, period and threshold, so each crossing is sent once per period whatever checks it."""

    class Kind(models.TextChoices):
        TOKENS = "tokens", "Token budget"
        COST = "cost", "Cost"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    budget = models.CharField(
        max_length=200, help_text="Which budget: organization, member:<id>, key:<id>, …"
    )
    period = models.CharField(max_length=16)
    threshold = models.CharField(max_length=32, help_text="A fraction of the budget, or an amount of money.")
    used = models.DecimalField(max_digits=20, decimal_places=2)
    limit = models.DecimalField(max_digits=20, decimal_places=2)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at",)
        constraints = [
            models.UniqueConstraint(
                fields=("organization", "budget", "period", "threshold"),
                name="one_alert_per_threshold_period",
            )
        ]

    def __str__(self) -> str:
        return f"{self.organization} {self.budget} {self.threshold} ({self.period})"
