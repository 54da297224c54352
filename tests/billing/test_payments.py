"""Cards through Stripe, against localstripe over HTTP: a card given through the SetupIntent flow
becomes the organization's default, a month billed is charged on it and paid; a card that is
declined makes the invoice past due, the organization is suspended after the grace, and a good
card pays it and reactivates the organization. Another tenant's setup intent is a 404."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
import stripe

from accounts.models import AuditEvent, Organization
from billing.models import Invoice, Plan, StripeEvent
from billing.periods import Period
from billing.services import invoice_payment_failed, past_due_suspend, period_bill
from tests.billing.conftest import (
    WEBHOOK_SECRET,
    at,
    invoice_event,
    october_usage,
    signed_delivery,
    subscribe,
)
from tests.conftest import Tenant, assert_error_shape

pytestmark = pytest.mark.django_db

GOOD_CARD = "4242424242424242"
DECLINED_ON_CHARGE = "4000000000000341"  # attaches, then every charge is declined


def _add_card(tenant: Tenant, stripe_client: stripe.StripeClient, number: str) -> dict[str, Any]:
    """What the console's card form does: open a SetupIntent, confirm it with the card as
    Stripe.js would (the card goes to Stripe, never to the platform), then make it the default."""
    started = tenant.client().post("/api/v1/billing/setup-intent/", format="json")
    assert started.status_code == 201, started.content
    body = started.json()
    assert body["client_secret"].startswith(body["setup_intent"])
    stripe_client.v1.setup_intents.confirm(
        body["setup_intent"],
        params={
            "client_secret": body["client_secret"],
            "payment_method_data": {
                "type": "card",
                "card": {"number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
            },
        },
    )
    made = tenant.client().post(
        "/api/v1/billing/payment-methods/", {"setup_intent": body["setup_intent"]}, format="json"
    )
    assert made.status_code == 200, made.content
    return made.json()


def _bill_october(tenant: Tenant, plan: Plan) -> Invoice:
    subscribe(tenant.organization, plan, on=at(2026, 9, 15))
    october_usage(tenant.organization)
    run = period_bill(
        period=Period.parse("2026-10"), organization=tenant.organization, now=at(2026, 11, 1, 2)
    )
    assert run.failures == {}
    (invoice,) = run.invoices
    invoice.refresh_from_db()
    return invoice


def test_a_card_given_through_a_setup_intent_pays_the_month(
    alice: Tenant, pro_plan: Plan, stripe_client: stripe.StripeClient
) -> None:
    card = _add_card(alice, stripe_client, GOOD_CARD)
    assert (card["brand"], card["last4"], card["default"]) == ("visa", "4242", True)
    listed = alice.client().get("/api/v1/billing/payment-methods/").json()["data"]
    assert [(c["last4"], c["default"]) for c in listed] == [("4242", True)]
    invoice = _bill_october(alice, pro_plan)
    assert invoice.status == Invoice.Status.PAID and invoice.paid_at is not None
    assert stripe_client.v1.invoices.retrieve(invoice.stripe_invoice_id).status == "paid"
    actions = set(AuditEvent.objects.filter(organization=alice.organization).values_list("action", flat=True))
    assert {"payment_method.setup_started", "payment_method.default_set"} <= actions


def test_a_declined_card_makes_the_invoice_past_due_then_a_good_one_pays_and_reactivates(
    alice: Tenant, pro_plan: Plan, stripe_client: stripe.StripeClient
) -> None:
    _add_card(alice, stripe_client, DECLINED_ON_CHARGE)
    invoice = _bill_october(alice, pro_plan)
    assert invoice.status == Invoice.Status.OPEN and invoice.payment_failures == 1
    assert invoice.past_due_since is not None
    assert past_due_suspend(now=invoice.past_due_since + timedelta(days=8)) == 1
    assert Organization.objects.get(pk=alice.organization.pk).status == "suspended"

    # Suspended, the organization may use nothing but its billing: it gives a good card.
    generate = {"prompt": "hi", "max_tokens": 5}
    assert_error_shape(
        alice.client().post("/api/v1/generate/", generate, format="json"),
        status=403,
        code="organization_suspended",
    )
    _add_card(alice, stripe_client, GOOD_CARD)
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID
    assert Organization.objects.get(pk=alice.organization.pk).status == "active"


def test_another_tenants_setup_intent_is_404_and_a_member_cannot_add_cards(
    alice: Tenant, charlie: Tenant, stripe_client: stripe.StripeClient
) -> None:
    theirs = charlie.client().post("/api/v1/billing/setup-intent/", format="json").json()
    stripe_client.v1.setup_intents.confirm(
        theirs["setup_intent"],
        params={
            "payment_method_data": {
                "type": "card",
                "card": {"number": GOOD_CARD, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
            }
        },
    )
    alice.client().post("/api/v1/billing/setup-intent/", format="json")  # alice has a customer too
    stolen = alice.client().post(
        "/api/v1/billing/payment-methods/", {"setup_intent": theirs["setup_intent"]}, format="json"
    )
    assert_error_shape(stolen, status=404)
    assert_error_shape(alice.client().delete("/api/v1/billing/payment-methods/pm_nope/"), status=404)


def test_without_stripe_card_payments_are_a_clear_404(alice: Tenant) -> None:
    response = alice.client().post("/api/v1/billing/setup-intent/", format="json")
    assert_error_shape(response, status=404, code="payments_unavailable")
    assert alice.client().get("/api/v1/billing/payment-methods/").json()["data"] == []


def test_an_invoice_shows_stripes_page_to_pay_it_when_there_is_one(alice: Tenant, pro_plan: Plan) -> None:
    invoice = _bill_october(alice, pro_plan)  # Stripe off: no page
    assert alice.client().get("/api/v1/billing/invoices/").json()["data"][0]["hosted_invoice_url"] == ""
    Invoice.objects.filter(pk=invoice.pk).update(
        hosted_invoice_url="https://invoice.stripe.com/i/acct_1/test_x"
    )
    listed = alice.client().get("/api/v1/billing/invoices/").json()["data"][0]
    assert listed["hosted_invoice_url"] == "https://invoice.stripe.com/i/acct_1/test_x"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_stripes_own_webhooks_reach_a_running_server(
    alice: Tenant,
    pro_plan: Plan,
    stripe_client: stripe.StripeClient,
    localstripe_url: str,
    start_web_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """localstripe told to send its events to the platform's webhook route, as Stripe is."""
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_billing")
    monkeypatch.setenv("STRIPE_API_BASE", localstripe_url)
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    base = start_web_server(workers=1, threads=8)
    httpx.post(
        f"{localstripe_url}/_config/webhooks/platform",
        data={"url": f"{base}/api/v1/billing/stripe/webhook/", "secret": WEBHOOK_SECRET},
        timeout=10,
    ).raise_for_status()

    def events(kind: str) -> list[StripeEvent]:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            found = list(StripeEvent.objects.filter(type=kind))
            if found:
                return found
            time.sleep(0.2)
        return []

    _add_card(alice, stripe_client, DECLINED_ON_CHARGE)
    invoice = _bill_october(alice, pro_plan)
    assert invoice.status == Invoice.Status.OPEN and invoice.payment_failures == 1
    # Stripe's events about it reach the running server and are recorded, once each.
    assert [event.outcome for event in events("invoice.created")] == ["ignored"]

    _add_card(alice, stripe_client, GOOD_CARD)  # collects the open invoice
    [paid] = events("invoice.payment_succeeded")
    assert paid.invoice_id == invoice.pk and paid.outcome == "invoice paid"
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID and invoice.payment_failures == 1


def test_a_failed_attempt_told_by_the_charge_and_by_stripes_webhook_counts_once(
    alice: Tenant, pro_plan: Plan
) -> None:
    invoice = _bill_october(alice, pro_plan)
    Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id="in_attempts", status=Invoice.Status.OPEN)
    invoice_payment_failed(invoice=invoice, failed_at=at(2026, 11, 1, 3), attempt=1)  # the charge's answer
    for attempt_count, expected in ((1, 1), (1, 1), (2, 2)):
        event = invoice_event("invoice.payment_failed", "in_attempts")
        event["data"]["object"]["attempt_count"] = attempt_count
        assert signed_delivery(event).status_code == 200
        invoice.refresh_from_db()
        assert invoice.payment_failures == expected
