"""Payment methods and collecting invoices through Stripe.

A tenant gives a card with Stripe.js: the platform opens a SetupIntent for the organization's
Stripe customer (`setup_intent_create`), the browser confirms it with the card (the card never
touches the platform), then the platform makes the confirmed card the customer's default
(`payment_method_set_default`). An invoice sent to Stripe is then charged on that card at once
(`invoice_collect`): paid, or a failed payment that makes the organization past due (and
suspended after the grace, reactivated once paid), as Stripe's webhooks report too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import stripe
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from stripe.params import SetupIntentCreateParams

from accounts.audit import Actor, audit_record
from accounts.models import Organization
from billing import stripe_sync
from billing.models import Invoice
from billing.services import invoice_mark_paid, invoice_payment_failed
from common.errors import APIError, NotFound


def _check_enabled() -> None:
    if not stripe_sync.stripe_enabled():  # as sign-up when it is off: a route this server lacks
        raise NotFound("Card payments are not available on this server.", code="payments_unavailable")


@dataclass(frozen=True)
class SetupIntentStart:
    setup_intent: str
    client_secret: str
    publishable_key: str
    stripe_js_url: str


def setup_intent_create(*, organization: Organization, actor: Actor) -> SetupIntentStart:
    _check_enabled()
    customer_id = stripe_sync.customer_ensure(organization=organization)
    params: SetupIntentCreateParams = {"customer": customer_id, "usage": "off_session"}
    intent = stripe_sync.client().v1.setup_intents.create(params=params)
    audit_record(
        organization=organization, actor=actor, action="payment_method.setup_started", target_label=intent.id
    )
    return SetupIntentStart(
        setup_intent=intent.id,
        client_secret=str(intent.client_secret),
        publishable_key=settings.STRIPE_PUBLISHABLE_KEY,
        stripe_js_url=settings.STRIPE_JS_URL,
    )


@dataclass(frozen=True)
class Card:
    id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    default: bool


def _default_id(customer: Any) -> str | None:
    invoice_settings = customer.to_dict().get("invoice_settings") or {}
    default = invoice_settings.get("default_payment_method")
    if isinstance(default, dict):
        return str(default.get("id")) if default.get("id") else None
    return default if isinstance(default, str) else None


def payment_methods_list(*, organization: Organization) -> list[Card]:
    if not stripe_sync.stripe_enabled() or not organization.stripe_customer_id:
        return []
    client = stripe_sync.client()
    customer = client.v1.customers.retrieve(organization.stripe_customer_id)
    default = _default_id(customer)
    methods = client.v1.payment_methods.list(
        params={"customer": organization.stripe_customer_id, "type": "card"}
    )
    return [
        Card(
            id=method.id,
            brand=str(method.card.brand) if method.card else "",
            last4=str(method.card.last4) if method.card else "",
            exp_month=int(method.card.exp_month) if method.card else 0,
            exp_year=int(method.card.exp_year) if method.card else 0,
            default=method.id == default,
        )
        for method in methods.data
    ]


def payment_method_set_default(*, organization: Organization, actor: Actor, setup_intent_id: str) -> Card:
    """Makes the card a confirmed SetupIntent of this organization's holds its default, then
    collects the organization's open invoices with it."""
    _check_enabled()
    if not organization.stripe_customer_id:
        raise NotFound("No such setup intent.", param="setup_intent")
    client = stripe_sync.client()
    try:
        intent = client.v1.setup_intents.retrieve(setup_intent_id)
    except stripe.InvalidRequestError as error:
        raise NotFound("No such setup intent.", param="setup_intent") from error
    if intent.customer != organization.stripe_customer_id or not intent.payment_method:
        raise NotFound("No such setup intent.", param="setup_intent")  # another's: as missing
    if intent.status != "succeeded":
        raise APIError(
            f"The card is not confirmed yet (the setup intent is {intent.status}).", param="setup_intent"
        )
    payment_method = (
        intent.payment_method if isinstance(intent.payment_method, str) else intent.payment_method.id
    )
    method = client.v1.payment_methods.retrieve(payment_method)
    if method.customer is None:  # Stripe attaches it when the intent succeeds; not every stand-in does
        client.v1.payment_methods.attach(payment_method, params={"customer": organization.stripe_customer_id})
    client.v1.customers.update(
        organization.stripe_customer_id,
        params={"invoice_settings": {"default_payment_method": payment_method}},
    )
    audit_record(
        organization=organization,
        actor=actor,
        action="payment_method.default_set",
        target_label=payment_method,
    )
    for invoice in Invoice.objects.filter(organization=organization, status=Invoice.Status.OPEN).exclude(
        stripe_invoice_id=""
    ):
        invoice_collect(invoice=invoice)
    return next(card for card in payment_methods_list(organization=organization) if card.id == payment_method)


def payment_method_remove(*, organization: Organization, actor: Actor, payment_method_id: str) -> None:
    _check_enabled()
    cards = {card.id for card in payment_methods_list(organization=organization)}
    if payment_method_id not in cards:
        raise NotFound("No such payment method.", param="payment_method")
    stripe_sync.client().v1.payment_methods.detach(payment_method_id)
    audit_record(
        organization=organization,
        actor=actor,
        action="payment_method.removed",
        target_label=payment_method_id,
    )


def invoice_collect(*, invoice: Invoice) -> Invoice:
    """Charges an open invoice that Stripe holds on its customer's default card, now: paid, or a
    failed payment (past due). Without a default card it stays open for Stripe to collect."""
    if (
        invoice.status != Invoice.Status.OPEN
        or not invoice.stripe_invoice_id
        or not stripe_sync.stripe_enabled()
    ):
        return invoice
    client = stripe_sync.client()
    customer = client.v1.customers.retrieve(stripe_sync.customer_ensure(organization=invoice.organization))
    if _default_id(customer) is None:
        return invoice
    now = timezone.now()
    try:
        paid = client.v1.invoices.pay(invoice.stripe_invoice_id)
    except stripe.CardError:
        remote = client.v1.invoices.retrieve(invoice.stripe_invoice_id)
        attempt = remote.to_dict().get("attempt_count")
        return invoice_payment_failed(
            invoice=invoice, failed_at=now, now=now, attempt=attempt if isinstance(attempt, int) else None
        )
    except stripe.InvalidRequestError:
        remote = client.v1.invoices.retrieve(invoice.stripe_invoice_id)
        if remote.status == "paid":  # paid meanwhile (Stripe's own attempt)
            return invoice_mark_paid(invoice=invoice, now=now, tell_stripe=False)
        raise
    if paid.status == "paid":
        return invoice_mark_paid(invoice=invoice, now=now, tell_stripe=False)
    with transaction.atomic():
        return invoice_payment_failed(invoice=invoice, failed_at=now, now=now)
