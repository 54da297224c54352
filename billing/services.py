from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Min
from django.utils import timezone

from accounts.audit import Actor, audit_record, field_changes
from accounts.models import BudgetPeriod, Organization
from accounts.services import organization_reactivate, organization_suspend, organization_update
from billing import stripe_sync
from billing.models import Invoice, InvoiceLine, Plan, PlanModelPrice, StripeEvent, Subscription
from billing.periods import Period, today_utc
from billing.selectors import period_price, plan_is_in_use, subscription_in_force, subscription_pending
from common.errors import APIError
from common.progress import progress
from webhooks.services import webhook_emit

logger = logging.getLogger(__name__)

# The status reason of an organization suspended for non-payment: paying reactivates only those,
# never one an operator suspended for another reason.
SUSPENDED_FOR_NON_PAYMENT = "Suspended for non-payment"


class BillingError(APIError):
    code = "billing_error"


# --- Plans and subscriptions ---------------------------------------------------------------


@transaction.atomic
def plan_create(
    *,
    slug: str,
    name: str,
    monthly_price: Decimal,
    prompt_price_per_1k: Decimal,
    completion_price_per_1k: Decimal,
    included_tokens: int = 0,
    model_prices: Mapping[str, tuple[Decimal, Decimal]] | None = None,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    token_quota: int | None = None,
    search_requests_per_minute: int | None = None,
    ingestion_token_quota: int | None = None,
    allowed_models: list[str] | None = None,
    currency: str | None = None,
    public: bool = True,
) -> Plan:
    """Creates a plan; `model_prices` maps a model to its (prompt, completion) prices per 1,000
    tokens, replacing the plan's default prices for that model. A plan that is not `public` is
    assigned by an operator only."""
    plan = Plan(
        slug=slug,
        name=name,
        public=public,
        monthly_price=monthly_price,
        included_tokens=included_tokens,
        prompt_price_per_1k=prompt_price_per_1k,
        completion_price_per_1k=completion_price_per_1k,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
        token_quota=token_quota,
        search_requests_per_minute=search_requests_per_minute,
        ingestion_token_quota=ingestion_token_quota,
        allowed_models=list(allowed_models or []),
    )
    if currency is not None:
        plan.currency = currency.lower()
    plan.full_clean()
    plan.save()
    PlanModelPrice.objects.bulk_create(
        PlanModelPrice(plan=plan, model=model, prompt_price_per_1k=prompt, completion_price_per_1k=completion)
        for model, (prompt, completion) in (model_prices or {}).items()
    )
    return plan


def default_plan_ensure(*, slug: str) -> Plan:
    """The plan `slug`, created free when it does not exist, with limits that let one try the
    platform (`migrate` in development: DEFAULT_PLAN_AUTO_CREATE), not run a service on it."""
    existing = Plan.objects.filter(slug=slug).first()
    if existing is not None:
        return existing
    return plan_create(
        slug=slug,
        name=slug.replace("-", " ").title(),
        monthly_price=Decimal(0),
        prompt_price_per_1k=Decimal(0),
        completion_price_per_1k=Decimal(0),
        requests_per_minute=60,
        tokens_per_minute=20_000,
        token_quota=1_000_000,
    )


def plan_prices_check_editable(*, plan: Plan) -> None:
    """Raises when the plan's prices are frozen (an organization has been on it)."""
    if plan_is_in_use(plan=plan):
        raise BillingError(
            f"The prices of plan '{plan.slug}' are frozen: organizations have been on it. "
            "Create a new plan and move them to it.",
            param="plan",
        )


def organization_update_locked(*, organization: Organization, **fields: object) -> Organization:
    """organization_update on a fresh, locked row, so that a stale instance held by the caller
    never writes back old values of other fields; the caller's instance gets the new values."""
    with transaction.atomic():
        fresh = Organization.objects.select_for_update().get(pk=organization.pk)
        organization_update(organization=fresh, **fields)
    for name, value in fields.items():
        setattr(organization, name, value)
    return fresh


def _plan_limits_apply(*, organization: Organization, plan: Plan) -> dict[str, list[Any]]:
    """Gives the organization the plan's limits; returns `{field: [old, new]}` of what changed."""
    fields: dict[str, Any] = {
        "requests_per_minute": plan.requests_per_minute,
        "tokens_per_minute": plan.tokens_per_minute,
        "token_quota": plan.token_quota,
        "quota_period": BudgetPeriod.MONTH,
        "search_requests_per_minute": plan.search_requests_per_minute,
        "ingestion_token_quota": plan.ingestion_token_quota,
        "allowed_models": list(plan.allowed_models),
    }
    with transaction.atomic():
        current = Organization.objects.select_for_update().get(pk=organization.pk)
        changes = field_changes(instance=current, fields=fields)
        organization_update_locked(organization=organization, **fields)
    return changes


def subscription_change_check(*, organization: Organization, plan: Plan, now: datetime | None = None) -> None:
    """Raises BillingError when the organization cannot move to `plan`: an organization is
    billed in one currency."""
    current = subscription_in_force(organization=organization, day=today_utc(now or timezone.now()))
    if current is not None and plan.currency != current.plan.currency:
        raise BillingError(
            f"Plan '{plan.slug}' is priced in {plan.currency.upper()}, the organization is billed in "
            f"{current.plan.currency.upper()}.",
            param="plan",
        )


@transaction.atomic
def subscription_change(
    *, organization: Organization, plan: Plan, now: datetime | None = None, actor: Actor | None = None
) -> Subscription:
    """Puts the organization on `plan`.

    The first plan starts today and its limits apply at once. A later change takes effect at
    the start of the next period, never mid-period: the current period is billed entirely on
    the current plan, and the new plan's prices and limits start with the next one (its limits
    are applied then by `subscriptions_activate`). A new change replaces a pending one, and
    choosing the current plan again cancels it. Returns the subscription that will hold.

    With an `actor`, the change is written to the audit log (`subscription.changed`)."""
    now = now or timezone.now()
    today = today_utc(now)
    # Serializes the changes of one organization.
    Organization.objects.select_for_update().filter(pk=organization.pk).first()
    current = subscription_in_force(organization=organization, day=today)
    pending = subscription_pending(organization=organization, day=today)
    if current is None:
        subscription = Subscription.objects.create(organization=organization, plan=plan, starts_on=today)
        _plan_limits_apply(organization=organization, plan=plan)
        Subscription.objects.filter(pk=subscription.pk).update(limits_applied_at=now)
    else:
        subscription_change_check(organization=organization, plan=plan, now=now)
        Subscription.objects.filter(organization=organization, starts_on__gt=today).delete()
        if plan.pk == current.plan_id:
            subscription = current
        else:
            subscription = Subscription.objects.create(
                organization=organization, plan=plan, starts_on=Period.of(today).next_start
            )
    if actor is not None:
        audit_record(
            organization=organization,
            actor=actor,
            action="subscription.changed",
            target=subscription,
            target_label=f"{plan.slug} from {subscription.starts_on}",
            changes={
                "plan": [current.plan.slug if current is not None else None, plan.slug],
                "starts_on": subscription.starts_on,
                "pending_plan_replaced": pending.plan.slug if pending is not None else None,
            },
        )
    return subscription


@transaction.atomic
def subscription_pending_cancel(*, subscription: Subscription, actor: Actor) -> None:
    """Withdraws a plan change that has not started yet; the plan in force stays."""
    if subscription.starts_on <= today_utc(timezone.now()):
        raise BillingError("Only a plan change that has not started yet can be withdrawn.", param="plan")
    audit_record(
        organization=subscription.organization,
        actor=actor,
        action="subscription.pending_cancelled",
        target=subscription,
        target_label=f"{subscription.plan.slug} from {subscription.starts_on}",
        changes={"plan": subscription.plan.slug, "starts_on": subscription.starts_on},
    )
    subscription.delete()


def subscriptions_activate(*, now: datetime | None = None) -> int:
    """Applies the limits of every plan change that has taken effect; returns how many
    organizations changed. Runs periodically; applying is idempotent."""
    now = now or timezone.now()
    today = today_utc(now)
    due = (
        Subscription.objects.filter(starts_on__lte=today, limits_applied_at__isnull=True)
        .select_related("plan", "organization")
        .order_by("organization_id", "starts_on")
    )
    latest: dict[int, Subscription] = {}
    for subscription in due:
        latest[subscription.organization_id] = subscription
    for subscription in latest.values():
        with transaction.atomic():
            in_force = subscription_in_force(organization=subscription.organization, day=today)
            if in_force is not None:
                _plan_limits_apply(organization=subscription.organization, plan=in_force.plan)
            Subscription.objects.filter(
                organization_id=subscription.organization_id,
                starts_on__lte=today,
                limits_applied_at__isnull=True,
            ).update(limits_applied_at=now)
    return len(latest)


def plan_limits_apply(*, plan: Plan, now: datetime | None = None, actor: Actor | None = None) -> int:
    """Applies the plan's (edited) limits to every organization on it today; with an `actor`,
    each organization's audit log records what changed (`plan.limits_applied`)."""
    today = today_utc(now or timezone.now())
    count = 0
    for organization_id in (
        Subscription.objects.filter(plan=plan, starts_on__lte=today)
        .values_list("organization_id", flat=True)
        .distinct()
    ):
        organization = Organization.objects.get(pk=organization_id)
        in_force = subscription_in_force(organization=organization, day=today)
        if in_force is not None and in_force.plan_id == plan.pk:
            with transaction.atomic():
                changes = _plan_limits_apply(organization=organization, plan=plan)
                if actor is not None and changes:
                    audit_record(
                        organization=organization,
                        actor=actor,
                        action="plan.limits_applied",
                        target=plan,
                        target_label=plan.slug,
                        changes=changes,
                    )
            count += 1
    return count


# --- Invoices --------------------------------------------------------------------------------


@transaction.atomic
def invoice_build(
    *, organization: Organization, period: Period, now: datetime | None = None
) -> Invoice | None:
    """Builds the organization's invoice for a closed period from its usage rollups, at the
    prices of the plan in force. Idempotent: building again updates the same draft (new usage
    may have been flushed since) and leaves a finalized invoice as it is. None when the
    organization had no plan in the period."""
    now = now or timezone.now()
    if now < period.ends_at:
        raise BillingError(f"The period {period} is not over yet.", param="period")
    price = period_price(organization=organization, period=period)
    if price is None:
        return None
    priced = price.priced
    fields = {
        "period_end": period.end,
        "plan": price.subscription.plan,
        "currency": priced.currency,
        "total": priced.total,
        "tokens_used": priced.tokens_used,
        "included_tokens": priced.included_tokens,
        "built_at": now,
    }
    invoice, created = Invoice.objects.get_or_create(
        organization=organization, period_start=period.start, defaults=fields
    )
    if not created:
        invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if not invoice.is_draft:
            return invoice
        for name, value in fields.items():
            setattr(invoice, name, value)
        invoice.save()
        invoice.lines.all().delete()
    InvoiceLine.objects.bulk_create(
        InvoiceLine(
            invoice=invoice,
            position=position,
            kind=line.kind,
            description=line.description,
            model=line.model,
            token_kind=line.token_kind,
            tokens=line.tokens,
            included_tokens=line.included_tokens,
            billable_tokens=line.billable_tokens,
            unit_price=line.unit_price,
            amount=line.amount,
        )
        for position, line in enumerate(priced.lines, start=1)
    )
    return invoice


def _invoice_event(invoice: Invoice, type: str) -> None:
    """Tells the organization's webhooks (once the invoice's transaction commits)."""
    webhook_emit(
        organization_id=invoice.organization_id,
        type=type,
        data={
            "invoice": {
                "id": invoice.pk,
                "period": str(invoice.period),
                "status": invoice.status,
                "total": str(invoice.total),
                "currency": invoice.currency,
                "payment_failures": invoice.payment_failures,
            }
        },
    )


def invoice_finalize(*, invoice: Invoice, now: datetime | None = None) -> Invoice:
    """Freezes a draft: from now on its lines and amounts never change. An invoice with
    nothing to pay is paid at once."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if locked.is_draft:
            locked.finalized_at = now
            if locked.total > 0:
                locked.status = Invoice.Status.OPEN
            else:
                locked.status = Invoice.Status.PAID
                locked.paid_at = now
            locked.save()
            _invoice_event(locked, "invoice.finalized")
            if locked.status == Invoice.Status.PAID:
                _invoice_event(locked, "invoice.paid")
    return locked


def invoice_send(*, invoice: Invoice, now: datetime | None = None) -> Invoice:
    """Finalizes the invoice and, with Stripe on, pushes it there and charges it on the
    organization's default card when it has one (else Stripe collects it later). Sending again
    finishes an interrupted push and otherwise changes nothing."""
    invoice = invoice_finalize(invoice=invoice, now=now)
    if invoice.status == Invoice.Status.OPEN and stripe_sync.stripe_enabled():
        stripe_sync.invoice_push(invoice=invoice)
        # billing.payments builds on this module (it marks invoices paid or failed through it).
        from billing.payments import invoice_collect

        invoice = invoice_collect(invoice=invoice)
    return invoice


@dataclass
class BillingRun:
    period: Period
    invoices: list[Invoice] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # organization slug → error


def period_bill(
    *,
    period: Period,
    organization: Organization | None = None,
    send: bool = True,
    now: datetime | None = None,
    show_progress: bool = False,
) -> BillingRun:
    """Builds (and by default sends) the period's invoice of every organization that had a
    plan in it, or of one. A Stripe failure of one organization does not stop the others; it
    is reported, and running again resumes it. `show_progress`: the `bill` command's bar."""
    now = now or timezone.now()
    if now < period.ends_at:
        raise BillingError(f"The period {period} is not over yet.", param="period")
    organizations = Organization.objects.filter(
        pk__in=Subscription.objects.filter(starts_on__lte=period.end).values("organization_id")
    ).order_by("slug")
    if organization is not None:
        organizations = organizations.filter(pk=organization.pk)
    run = BillingRun(period=period)
    walked = (
        progress(organizations, total=organizations.count(), label="bill") if show_progress else organizations
    )
    for each in walked:
        invoice = invoice_build(organization=each, period=period, now=now)
        if invoice is None:
            continue
        if send:
            try:
                invoice = invoice_send(invoice=invoice, now=now)
            except stripe.StripeError as exc:
                logger.exception("Pushing invoice %s to Stripe failed", invoice.pk)
                run.failures[each.slug] = f"{type(exc).__name__}: {exc}"
                invoice.refresh_from_db()
        run.invoices.append(invoice)
    return run


# --- Payments ----------------------------------------------------------------------------------


def _past_due_refresh(*, organization: Organization, now: datetime) -> None:
    """Derives the organization's payment standing from its invoices: past due since the first
    failed payment of an invoice still unpaid; suspended once that is older than the grace
    period; reactivated when nothing is past due any more, if the suspension was for
    non-payment."""
    since = Invoice.objects.filter(
        organization_id=organization.pk, status=Invoice.Status.OPEN, past_due_since__isnull=False
    ).aggregate(since=Min("past_due_since"))["since"]
    fresh = Organization.objects.select_for_update().get(pk=organization.pk)
    if fresh.past_due_since != since:
        fresh = organization_update_locked(organization=fresh, past_due_since=since)
    grace = timedelta(days=settings.BILLING_GRACE_DAYS)
    if since is not None and fresh.is_active and now - since >= grace:
        organization_suspend(organization=fresh, reason=SUSPENDED_FOR_NON_PAYMENT)
    elif since is None and not fresh.is_active and fresh.status_reason == SUSPENDED_FOR_NON_PAYMENT:
        organization_reactivate(organization=fresh)
    organization.refresh_from_db()


def invoice_mark_paid(*, invoice: Invoice, now: datetime | None = None, tell_stripe: bool = True) -> Invoice:
    """Records the invoice as paid and clears the organization's past-due standing. With
    `tell_stripe` (an operator recording a payment made another way), Stripe is told first so
    that it stops collecting; a webhook reporting Stripe's own payment passes False."""
    now = now or timezone.now()
    if invoice.is_draft:
        raise BillingError("A draft invoice cannot be paid: send it first.", param="invoice")
    if (
        tell_stripe
        and invoice.stripe_invoice_id
        and invoice.status != Invoice.Status.PAID
        and stripe_sync.stripe_enabled()
    ):
        stripe_sync.invoice_mark_paid_out_of_band(stripe_invoice_id=invoice.stripe_invoice_id)
    with transaction.atomic():
        locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if locked.status != Invoice.Status.PAID:
            locked.status = Invoice.Status.PAID
            locked.paid_at = now
            locked.save()
            _invoice_event(locked, "invoice.paid")
        _past_due_refresh(organization=locked.organization, now=now)
    return locked


def invoice_payment_failed(
    *, invoice: Invoice, failed_at: datetime, now: datetime | None = None, attempt: int | None = None
) -> Invoice:
    """Records a failed payment attempt: the invoice, and its organization, are past due from
    the first failure. A failure reported for an invoice already paid changes nothing."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if locked.status != Invoice.Status.OPEN:
            return locked
        # Stripe numbers its attempts: the charge's own answer and Stripe's webhook about the
        # same attempt count it once.
        failures = max(locked.payment_failures, attempt) if attempt else locked.payment_failures + 1
        if failures == locked.payment_failures and locked.past_due_since is not None:
            return locked
        locked.payment_failures = failures
        if locked.past_due_since is None:
            locked.past_due_since = failed_at
        locked.save()
        _invoice_event(locked, "invoice.payment_failed")
        _past_due_refresh(organization=locked.organization, now=now)
    return locked


def past_due_suspend(*, now: datetime | None = None) -> int:
    """Suspends every organization past due for longer than the grace period; returns how many."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.BILLING_GRACE_DAYS)
    overdue = Organization.objects.filter(status=Organization.Status.ACTIVE, past_due_since__lte=cutoff)
    count = 0
    for organization in overdue:
        with transaction.atomic():
            _past_due_refresh(organization=organization, now=now)
        if not organization.is_active:
            count += 1
    return count


# --- Stripe webhooks --------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookOutcome:
    event_id: str
    type: str
    duplicate: bool
    outcome: str


def stripe_webhook_receive(*, payload: bytes, signature: str | None) -> WebhookOutcome:
    """Verifies and applies one webhook delivery. An event is applied once: its id is stored
    in the same transaction as its effects, so a redelivery finds it and changes nothing, and
    a failure stores nothing, so Stripe's retry applies it."""
    event = stripe_sync.webhook_event_construct(payload=payload, signature=signature)
    event_id, event_type = event.get("id"), event.get("type")
    if not event_id or not event_type:
        raise BillingError("The webhook body is not a Stripe event (no id or type).")
    with transaction.atomic():
        try:
            with transaction.atomic():
                record = StripeEvent.objects.create(event_id=event_id, type=event_type, outcome="")
        except IntegrityError:
            return WebhookOutcome(
                event_id=event_id, type=event_type, duplicate=True, outcome="already applied"
            )
        invoice, outcome = _stripe_event_apply(event)
        record.invoice = invoice
        record.outcome = outcome
        record.save(update_fields=["invoice", "outcome"])
    return WebhookOutcome(event_id=event_id, type=event_type, duplicate=False, outcome=outcome)


def _stripe_event_apply(event: dict[str, Any]) -> tuple[Invoice | None, str]:
    event_type = event["type"]
    # Stripe sends invoice.payment_succeeded beside invoice.paid for a charged invoice (stand-ins
    # only the former); marking paid twice changes nothing.
    if event_type not in ("invoice.paid", "invoice.payment_succeeded", "invoice.payment_failed"):
        return None, "ignored"
    try:
        stripe_invoice_id = str(event["data"]["object"]["id"])
        created = int(event["created"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BillingError(f"The {event_type} event has no invoice id or creation time.") from exc
    # The platform records a Stripe invoice's id before finalizing it, so any invoice that can
    # be paid or fail is found here.
    invoice = (
        Invoice.objects.select_related("organization").filter(stripe_invoice_id=stripe_invoice_id).first()
    )
    if invoice is None:
        logger.warning("Stripe event %s names an unknown invoice %s", event["id"], stripe_invoice_id)
        return None, f"unknown invoice {stripe_invoice_id}"
    if event_type in ("invoice.paid", "invoice.payment_succeeded"):
        invoice_mark_paid(invoice=invoice, tell_stripe=False)
        return invoice, "invoice paid"
    failed_at = datetime.fromtimestamp(created, tz=UTC)
    attempt = event["data"]["object"].get("attempt_count")
    invoice_payment_failed(
        invoice=invoice, failed_at=failed_at, attempt=attempt if isinstance(attempt, int) else None
    )
    return invoice, "payment failed"
