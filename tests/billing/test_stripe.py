"""Invoices pushed to Stripe: against localstripe over HTTP, read back with the Stripe client."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import pytest
import stripe

from accounts.models import Organization
from billing.models import Invoice, Plan
from billing.periods import Period
from billing.services import invoice_build, invoice_finalize, invoice_mark_paid, invoice_send, period_bill
from billing.stripe_sync import customer_ensure
from tests.billing.conftest import at, october_usage, subscribe, use
from tests.conftest import Tenant, free_port

pytestmark = pytest.mark.django_db

OCTOBER = Period.parse("2026-10")
AFTER_OCTOBER = at(2026, 11, 1, 2)


def _bill_october(tenant: Tenant, plan: Plan) -> Invoice:
    subscribe(tenant.organization, plan, on=at(2026, 9, 15))
    october_usage(tenant.organization)
    run = period_bill(period=OCTOBER, organization=tenant.organization, now=AFTER_OCTOBER)
    assert run.failures == {}
    (invoice,) = run.invoices
    return invoice


def test_a_sent_invoice_is_a_finalized_stripe_invoice_with_an_item_per_charged_line(
    alice: Tenant, pro_plan: Plan, stripe_client: stripe.StripeClient
) -> None:
    invoice = _bill_october(alice, pro_plan)
    invoice.refresh_from_db()
    organization = Organization.objects.get(pk=alice.organization.pk)

    assert organization.stripe_customer_id.startswith("cus_")
    customer = stripe_client.v1.customers.retrieve(organization.stripe_customer_id)
    assert customer.metadata["organization_slug"] == "alice"

    assert invoice.stripe_invoice_id.startswith("in_") and invoice.stripe_synced_at is not None
    remote = stripe_client.v1.invoices.retrieve(invoice.stripe_invoice_id)
    assert remote.status == "open"
    assert remote.customer == organization.stripe_customer_id
    assert remote.currency == "usd"
    assert remote.total == 3398
    assert remote.metadata["invoice_id"] == str(invoice.pk)
    assert [(line.amount, line.description) for line in remote.lines.data] == [
        (2000, "Pro plan, 2026-10"),
        (347, "big-model, prompt tokens: 1,734 at 2 USD per 1,000 (2,500 used, 766 included)"),
        (601, "small-model, prompt tokens: 12,010 at 0.5 USD per 1,000 (12,010 used, 0 included)"),
        (450, "small-model, completion tokens: 3,000 at 1.5 USD per 1,000 (3,000 used, 0 included)"),
    ]
    # The line wholly covered by the plan stays on the platform's invoice only.
    assert [line.stripe_invoice_item_id != "" for line in invoice.lines.all()] == [
        True,
        True,
        False,
        True,
        True,
    ]


def test_sending_again_creates_nothing_new_in_stripe(
    alice: Tenant, pro_plan: Plan, stripe_client: stripe.StripeClient
) -> None:
    invoice = _bill_october(alice, pro_plan)
    invoice.refresh_from_db()
    again = invoice_send(invoice=invoice)
    again.refresh_from_db()
    assert again.stripe_invoice_id == invoice.stripe_invoice_id
    customer_id = Organization.objects.get(pk=alice.organization.pk).stripe_customer_id
    assert len(stripe_client.v1.invoices.list(params={"customer": customer_id}).data) == 1
    assert stripe_client.v1.invoices.retrieve(invoice.stripe_invoice_id).total == 3398


def test_the_next_invoice_reuses_the_organizations_stripe_customer(
    alice: Tenant, pro_plan: Plan, stripe_client: stripe.StripeClient
) -> None:
    _bill_october(alice, pro_plan)
    customer_id = Organization.objects.get(pk=alice.organization.pk).stripe_customer_id
    (november,) = period_bill(
        period=OCTOBER.next(), organization=alice.organization, now=at(2026, 12, 1, 2)
    ).invoices
    november.refresh_from_db()
    assert Organization.objects.get(pk=alice.organization.pk).stripe_customer_id == customer_id
    remote = stripe_client.v1.invoices.retrieve(november.stripe_invoice_id)
    assert remote.customer == customer_id
    assert november.total == Decimal("70.21") and remote.total == 7021  # october_usage's 1 November request


def test_a_push_that_failed_is_finished_by_the_next_run(
    settings: Any, alice: Tenant, pro_plan: Plan, stripe_client: stripe.StripeClient
) -> None:
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    october_usage(alice.organization)
    reachable = settings.STRIPE_API_BASE
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    failed = period_bill(period=OCTOBER, now=AFTER_OCTOBER)
    assert set(failed.failures) == {"alice"}
    invoice = Invoice.objects.get(organization=alice.organization)
    assert invoice.status == Invoice.Status.OPEN and invoice.stripe_invoice_id == ""

    settings.STRIPE_API_BASE = reachable
    assert period_bill(period=OCTOBER, now=AFTER_OCTOBER).failures == {}
    invoice.refresh_from_db()
    assert stripe_client.v1.invoices.retrieve(invoice.stripe_invoice_id).total == 3398


def test_a_push_interrupted_after_creating_the_stripe_invoice_resumes_on_that_invoice(
    alice: Tenant, pro_plan: Plan, stripe_client: stripe.StripeClient
) -> None:
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    october_usage(alice.organization)
    draft = invoice_build(organization=alice.organization, period=OCTOBER, now=AFTER_OCTOBER)
    assert draft is not None
    invoice = invoice_finalize(invoice=draft, now=AFTER_OCTOBER)
    # What a push that died after its first step left behind: a draft Stripe invoice, recorded.
    customer_id = customer_ensure(organization=alice.organization)
    orphan = stripe_client.v1.invoices.create(
        params={"customer": customer_id, "currency": "usd", "pending_invoice_items_behavior": "exclude"}
    )
    Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id=orphan.id)
    invoice.refresh_from_db()

    invoice_send(invoice=invoice)

    remote = stripe_client.v1.invoices.retrieve(orphan.id)
    assert (remote.status, remote.total, len(remote.lines.data)) == ("open", 3398, 4)
    assert len(stripe_client.v1.invoices.list(params={"customer": customer_id}).data) == 1


def test_marking_paid_by_an_operator_tells_stripe_to_stop_collecting(
    alice: Tenant, pro_plan: Plan, stripe_client: stripe.StripeClient
) -> None:
    invoice = _bill_october(alice, pro_plan)
    invoice.refresh_from_db()
    paid = invoice_mark_paid(invoice=invoice)
    assert paid.status == Invoice.Status.PAID and paid.paid_at is not None
    assert stripe_client.v1.invoices.retrieve(invoice.stripe_invoice_id).status == "paid"


def test_without_a_stripe_key_billing_works_locally_and_says_so_once(
    alice: Tenant, charlie: Tenant, pro_plan: Plan, fresh_stripe_log: None, caplog: pytest.LogCaptureFixture
) -> None:
    for tenant in (alice, charlie):
        subscribe(tenant.organization, pro_plan, on=at(2026, 9, 15))
        use(tenant.organization, when=at(2026, 10, 5), model="small-model", prompt=10_000, completion=0)
    with caplog.at_level(logging.INFO, logger="billing"):
        period_bill(period=OCTOBER, now=AFTER_OCTOBER)
        period_bill(period=OCTOBER.next(), now=at(2026, 12, 1, 2))
    invoices = Invoice.objects.order_by("period_start", "organization__slug")
    assert [(i.organization.slug, i.status, i.stripe_invoice_id) for i in invoices] == [
        ("alice", "open", ""),
        ("charlie", "open", ""),
        ("alice", "open", ""),
        ("charlie", "open", ""),
    ]
    assert invoices[0].total == Decimal("24.00")
    said = [record for record in caplog.records if "Stripe sync is off" in record.getMessage()]
    assert len(said) == 1
