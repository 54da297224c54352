"""An invoice's life reaches the organization's webhooks: finalized, payment failed, paid."""

from __future__ import annotations

import json
from typing import Any

import pytest

from billing.models import Plan
from billing.periods import Period
from billing.services import invoice_build, invoice_finalize, invoice_mark_paid, invoice_payment_failed
from common.sealed import seal
from tests.billing.conftest import at, october_usage, subscribe
from tests.conftest import Tenant
from webhooks.models import WebhookDelivery, WebhookEndpoint

pytestmark = pytest.mark.django_db


def test_an_invoice_finalized_failed_and_paid_is_told_to_the_webhooks(alice: Tenant, pro_plan: Plan) -> None:
    WebhookEndpoint.objects.create(
        organization=alice.organization,
        url="http://127.0.0.1:9/hooks",
        events=["invoice.finalized", "invoice.paid", "invoice.payment_failed"],
        secret_sealed=seal("whsec_test"),
    )
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    october_usage(alice.organization)
    invoice = invoice_build(
        organization=alice.organization, period=Period.parse("2026-10"), now=at(2026, 11, 1, 2)
    )
    assert invoice is not None
    invoice = invoice_finalize(invoice=invoice, now=at(2026, 11, 1, 3))
    invoice_payment_failed(invoice=invoice, failed_at=at(2026, 11, 2), now=at(2026, 11, 2))
    invoice_mark_paid(invoice=invoice, now=at(2026, 11, 3), tell_stripe=False)
    invoice_mark_paid(invoice=invoice, now=at(2026, 11, 4), tell_stripe=False)  # once only

    events = list(WebhookDelivery.objects.order_by("id").values_list("event_type", "body"))
    assert [event_type for event_type, _ in events] == [
        "invoice.finalized",
        "invoice.payment_failed",
        "invoice.paid",
    ]
    body: dict[str, Any] = json.loads(events[-1][1])
    assert body["data"]["invoice"]["id"] == invoice.pk and body["data"]["invoice"]["status"] == "paid"
    assert body["data"]["invoice"]["period"] == "2026-10"
