"""Pushes invoices to Stripe and reads its webhooks. Off (and said once in the log) without
STRIPE_API_KEY; STRIPE_API_BASE points the client at another server (a stand-in in tests).

A push is resumable: every object created in Stripe is recorded as soon as it exists (the
customer on the organization, the invoice on the invoice, each invoice item on its line), and
every create carries an idempotency key, so a push that died halfway is finished by the next
one without duplicates."""

from __future__ import annotations

import logging
import threading
from decimal import Decimal
from typing import Any

import stripe
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from stripe.params import CustomerCreateParams

from accounts.models import Organization
from accounts.services import organization_update
from billing.models import Invoice, InvoiceLine
from common.errors import APIError, ServiceUnavailable

logger = logging.getLogger(__name__)

_sync_off_logged = False
_sync_off_lock = threading.Lock()


class InvalidSignature(APIError):
    code = "invalid_signature"


def stripe_enabled() -> bool:
    """Whether invoices go to Stripe; the first time the answer is no, the process logs it."""
    global _sync_off_logged
    if settings.STRIPE_API_KEY:
        return True
    with _sync_off_lock:
        if not _sync_off_logged:
            _sync_off_logged = True
            logger.warning("Stripe sync is off (STRIPE_API_KEY is not set): invoices stay local.")
    return False


def _client() -> stripe.StripeClient:
    base = settings.STRIPE_API_BASE
    return stripe.StripeClient(settings.STRIPE_API_KEY, base_addresses={"api": base} if base else None)


def client() -> stripe.StripeClient:
    """A client for Stripe (or `STRIPE_API_BASE`), for the payment flows in billing.payments."""
    return _client()


def _minor_units(amount: Decimal) -> int:
    # Amounts are rounded to cents, and Stripe counts cents.
    return int((amount * 100).to_integral_exact())


def customer_ensure(*, organization: Organization) -> str:
    """The organization's Stripe customer id, creating the customer the first time."""
    if organization.stripe_customer_id:
        return organization.stripe_customer_id
    current = Organization.objects.get(pk=organization.pk)
    if not current.stripe_customer_id:
        params: CustomerCreateParams = {
            "name": current.name,
            "metadata": {"organization_id": str(current.pk), "organization_slug": current.slug},
        }
        if current.billing_email:
            params["email"] = current.billing_email
        customer = _client().v1.customers.create(
            params=params,
            options={
                "idempotency_key": f"llmp-org-{current.pk}-{current.created_at.timestamp():.6f}-customer"
            },
        )
        # Written on the locked row, so that no concurrent change to the organization is lost;
        # a concurrent push that created the customer first wins (with the same idempotency
        # key, Stripe answered both with one customer anyway).
        with transaction.atomic():
            current = Organization.objects.select_for_update().get(pk=organization.pk)
            if not current.stripe_customer_id:
                organization_update(organization=current, stripe_customer_id=customer.id)
    organization.stripe_customer_id = current.stripe_customer_id
    return current.stripe_customer_id


def invoice_push(*, invoice: Invoice) -> str:
    """Creates the invoice in Stripe: a draft invoice, an invoice item on it per charged line,
    then finalized, which lets Stripe collect it. Returns the Stripe invoice id. Precondition:
    the invoice is finalized locally (its lines no longer change). Safe to call again after a
    failure (it resumes where it stopped) or a success (it changes nothing)."""
    if invoice.is_draft or invoice.finalized_at is None:
        raise ValueError("Only a finalized invoice is pushed to Stripe.")
    client = _client()
    key_prefix = f"llmp-invoice-{invoice.pk}-{invoice.finalized_at.timestamp():.6f}"
    customer_id = customer_ensure(organization=invoice.organization)
    if not invoice.stripe_invoice_id:
        # Items go on this invoice by id rather than as the customer's pending items, so an
        # interrupted push never leaves items that another invoice would pick up.
        created = client.v1.invoices.create(
            params={
                "customer": customer_id,
                "currency": invoice.currency,
                "collection_method": "charge_automatically",
                "auto_advance": False,
                "pending_invoice_items_behavior": "exclude",
                "description": f"{invoice.plan.name} plan, {invoice.period}",
                "metadata": {
                    "invoice_id": str(invoice.pk),
                    "organization_slug": invoice.organization.slug,
                    "period": invoice.period.key,
                },
            },
            options={"idempotency_key": f"{key_prefix}-invoice"},
        )
        invoice.stripe_invoice_id = created.id
        Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id=created.id)
    line: InvoiceLine
    # Lines wholly covered by the plan (amount 0) stay on the platform's invoice only.
    for line in invoice.lines.filter(stripe_invoice_item_id="").exclude(amount=0).order_by("position"):
        item = client.v1.invoice_items.create(
            params={
                "customer": customer_id,
                "invoice": invoice.stripe_invoice_id,
                "amount": _minor_units(line.amount),
                "currency": invoice.currency,
                "description": line.description,
                "metadata": {"invoice_id": str(invoice.pk), "line": str(line.position)},
            },
            options={"idempotency_key": f"{key_prefix}-item-{line.position}"},
        )
        InvoiceLine.objects.filter(pk=line.pk).update(stripe_invoice_item_id=item.id)
    remote = client.v1.invoices.retrieve(invoice.stripe_invoice_id)
    if remote.status == "draft":
        # auto_advance: Stripe attempts the payment and reports it by webhook.
        remote = client.v1.invoices.finalize_invoice(invoice.stripe_invoice_id, params={"auto_advance": True})
    # Stripe's own page for the invoice (to pay it by hand); stand-ins may have none.
    invoice.hosted_invoice_url = str(remote.to_dict().get("hosted_invoice_url") or "")
    invoice.stripe_synced_at = timezone.now()
    Invoice.objects.filter(pk=invoice.pk).update(
        stripe_synced_at=invoice.stripe_synced_at, hosted_invoice_url=invoice.hosted_invoice_url
    )
    return invoice.stripe_invoice_id


def invoice_mark_paid_out_of_band(*, stripe_invoice_id: str) -> None:
    """Tells Stripe an invoice was paid another way, so it stops collecting it."""
    client = _client()
    remote = client.v1.invoices.retrieve(stripe_invoice_id)
    if remote.status == "open":
        client.v1.invoices.pay(stripe_invoice_id, params={"paid_out_of_band": True})


def webhook_event_construct(*, payload: bytes, signature: str | None) -> dict[str, Any]:
    """The event in a webhook request, as plain data, once its signature is verified with the
    signing secret."""
    if not settings.STRIPE_WEBHOOK_SECRET:
        raise ServiceUnavailable("Stripe webhooks are not configured (STRIPE_WEBHOOK_SECRET is not set).")
    if not signature:
        raise InvalidSignature("The Stripe-Signature header is missing.", param="Stripe-Signature")
    try:
        event = stripe.Webhook.construct_event(payload, signature, settings.STRIPE_WEBHOOK_SECRET)
    except stripe.SignatureVerificationError as exc:
        raise InvalidSignature(
            f"The Stripe signature does not verify: {exc}", param="Stripe-Signature"
        ) from exc
    except ValueError as exc:
        raise APIError(f"The webhook body is not a JSON event: {exc}", code="invalid_json") from exc
    return event.to_dict()
