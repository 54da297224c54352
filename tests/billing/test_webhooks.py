"""Stripe webhooks, signed with Stripe's scheme, move an organization through paid, past due,
suspended and back."""

from __future__ import annotations

from typing import Any

import pytest
import stripe
import time_machine

from accounts.models import Organization
from billing.models import Invoice, Plan, StripeEvent
from billing.periods import Period
from billing.services import SUSPENDED_FOR_NON_PAYMENT, period_bill
from billing.tasks import suspend_past_due
from tests.billing.conftest import at, invoice_event, october_usage, signed_delivery, subscribe
from tests.conftest import Tenant, assert_error_shape

pytestmark = pytest.mark.django_db

OCTOBER = Period.parse("2026-10")


@pytest.fixture
def sent_invoice(alice: Tenant, pro_plan: Plan, stripe_client: stripe.StripeClient) -> Invoice:
    """Alice's October invoice, sent to Stripe (localstripe) on November 1."""
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    october_usage(alice.organization)
    (invoice,) = period_bill(period=OCTOBER, now=at(2026, 11, 1, 2)).invoices
    invoice.refresh_from_db()
    assert invoice.stripe_invoice_id
    return invoice


def _organization(tenant: Tenant) -> Organization:
    return Organization.objects.get(pk=tenant.organization.pk)


def test_invoice_paid_marks_the_invoice_paid(sent_invoice: Invoice) -> None:
    with time_machine.travel(at(2026, 11, 3), tick=False):
        response = signed_delivery(invoice_event("invoice.paid", sent_invoice.stripe_invoice_id))
    assert response.status_code == 200, response.content
    assert response.json() == {"received": True, "duplicate": False, "outcome": "invoice paid"}
    sent_invoice.refresh_from_db()
    assert sent_invoice.status == Invoice.Status.PAID and sent_invoice.paid_at == at(2026, 11, 3)


def test_failed_payment_then_grace_then_payment_moves_the_organization_through_every_state(
    alice: Tenant, sent_invoice: Invoice
) -> None:
    with time_machine.travel(at(2026, 11, 2, 10), tick=False):
        response = signed_delivery(invoice_event("invoice.payment_failed", sent_invoice.stripe_invoice_id))
    assert response.status_code == 200 and response.json()["outcome"] == "payment failed"
    organization = _organization(alice)
    assert organization.past_due_since == at(2026, 11, 2, 10)
    assert organization.status == Organization.Status.ACTIVE  # within the grace period
    sent_invoice.refresh_from_db()
    assert sent_invoice.status == Invoice.Status.OPEN and sent_invoice.payment_failures == 1

    with time_machine.travel(at(2026, 11, 9, 9, 59), tick=False):
        assert suspend_past_due() == 0
        assert alice.client().get("/api/v1/billing/current/").status_code == 200

    with time_machine.travel(at(2026, 11, 9, 10), tick=False):
        assert suspend_past_due() == 1
        organization = _organization(alice)
        assert organization.status == Organization.Status.SUSPENDED
        assert organization.status_reason == SUSPENDED_FOR_NON_PAYMENT
        assert_error_shape(alice.client().get("/api/v1/me/"), status=403, code="organization_suspended")
        # Its billing stays open to it, so that it can see what it owes and pay it.
        assert alice.client().get("/api/v1/billing/current/").status_code == 200

    with time_machine.travel(at(2026, 11, 10), tick=False):
        response = signed_delivery(invoice_event("invoice.paid", sent_invoice.stripe_invoice_id))
        assert response.status_code == 200
        organization = _organization(alice)
        assert organization.status == Organization.Status.ACTIVE and organization.past_due_since is None
        assert alice.client().get("/api/v1/me/").status_code == 200
    sent_invoice.refresh_from_db()
    assert sent_invoice.status == Invoice.Status.PAID


def test_a_failure_reported_after_the_grace_period_suspends_at_once(
    alice: Tenant, sent_invoice: Invoice
) -> None:
    with time_machine.travel(at(2026, 11, 2), tick=False):
        signed_delivery(invoice_event("invoice.payment_failed", sent_invoice.stripe_invoice_id))
    with time_machine.travel(at(2026, 11, 20), tick=False):
        signed_delivery(invoice_event("invoice.payment_failed", sent_invoice.stripe_invoice_id))
    organization = _organization(alice)
    assert organization.status == Organization.Status.SUSPENDED
    assert organization.past_due_since == at(2026, 11, 2)  # from the first failure


def test_paying_does_not_reactivate_an_organization_an_operator_suspended(
    alice: Tenant, sent_invoice: Invoice
) -> None:
    from accounts.services import organization_suspend

    organization_suspend(organization=_organization(alice), reason="Terms of service")
    signed_delivery(invoice_event("invoice.paid", sent_invoice.stripe_invoice_id))
    organization = _organization(alice)
    assert (
        organization.status == Organization.Status.SUSPENDED
        and organization.status_reason == "Terms of service"
    )


def test_a_redelivered_event_is_applied_once(sent_invoice: Invoice) -> None:
    event = invoice_event("invoice.payment_failed", sent_invoice.stripe_invoice_id, event_id="evt_twice")
    first = signed_delivery(event)
    second = signed_delivery(event)
    assert first.status_code == 200 and first.json()["duplicate"] is False
    assert second.status_code == 200 and second.json() == {
        "received": True,
        "duplicate": True,
        "outcome": "already applied",
    }
    sent_invoice.refresh_from_db()
    assert sent_invoice.payment_failures == 1
    assert StripeEvent.objects.filter(event_id="evt_twice").count() == 1


@pytest.mark.parametrize(
    "signature",
    [
        "t=1795000000,v1=" + "0" * 64,  # not the HMAC of this payload
        "",  # no Stripe-Signature header at all
        "garbage",
    ],
    ids=["wrong-signature", "missing-signature", "malformed-signature"],
)
def test_a_delivery_that_does_not_verify_is_400_and_changes_nothing(
    alice: Tenant, sent_invoice: Invoice, signature: str
) -> None:
    response = signed_delivery(
        invoice_event("invoice.paid", sent_invoice.stripe_invoice_id), signature=signature
    )
    assert_error_shape(response, status=400, code="invalid_signature")
    sent_invoice.refresh_from_db()
    assert sent_invoice.status == Invoice.Status.OPEN
    assert not StripeEvent.objects.exists()


def test_a_delivery_signed_with_another_secret_is_400(sent_invoice: Invoice) -> None:
    response = signed_delivery(
        invoice_event("invoice.paid", sent_invoice.stripe_invoice_id), secret="whsec_someone_else"
    )
    assert_error_shape(response, status=400, code="invalid_signature")
    sent_invoice.refresh_from_db()
    assert sent_invoice.status == Invoice.Status.OPEN


def test_events_of_other_types_and_unknown_invoices_are_acknowledged_and_ignored(db: None) -> None:
    other = signed_delivery({**invoice_event("invoice.paid", "in_x"), "type": "customer.created"})
    unknown = signed_delivery(invoice_event("invoice.paid", "in_not_ours"))
    assert other.status_code == 200 and other.json()["outcome"] == "ignored"
    assert unknown.status_code == 200 and unknown.json()["outcome"] == "unknown invoice in_not_ours"


def test_without_a_signing_secret_webhooks_are_refused(settings: Any, db: None) -> None:
    settings.STRIPE_WEBHOOK_SECRET = ""
    response = signed_delivery(invoice_event("invoice.paid", "in_x"), secret="whsec_anything")
    assert_error_shape(response, status=503, code="service_unavailable")
    assert not StripeEvent.objects.exists()
