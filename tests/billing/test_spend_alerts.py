"""Spend alerts: each threshold of each budget is sent once per period, by email to the owners
and the billing email and to the webhooks; a budget's own thresholds replace its
organization's; a priced plan's cost reaching an amount alerts too."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.core import mail
from django.utils import timezone

from accounts.services import membership_create, user_create
from billing.alerts import spend_alerts_check, spend_alerts_check_recent
from billing.models import Plan, SpendAlert
from common.sealed import seal
from tests.billing.conftest import subscribe
from tests.conftest import Tenant
from usage.records import usage_records_write
from webhooks.models import WebhookDelivery, WebhookEndpoint

pytestmark = pytest.mark.django_db


_ids = itertools.count(1)


def _record(tenant: Tenant, tokens: int, **fields: Any) -> None:
    """One request's usage as the flush writes it."""
    usage_records_write(
        [
            {
                "request_id": f"alerts-test-{next(_ids)}",
                "organization_id": tenant.organization.pk,
                "endpoint": "generate",
                "model": "m",
                "prompt_tokens": tokens,
                "completion_tokens": 0,
                "created_at": timezone.now(),
                **fields,
            }
        ]
    )


def test_each_threshold_of_the_quota_is_sent_once_by_email_and_webhook(
    alice: Tenant, django_capture_on_commit_callbacks: Any
) -> None:
    alice.organization.token_quota = 1000
    alice.organization.billing_email = "finance@alice.test"
    alice.organization.save()
    admin = user_create(email="admin@alice.test", password="correct horse battery staple")
    membership_create(organization=alice.organization, user=admin, role="admin")
    WebhookEndpoint.objects.create(
        organization=alice.organization,
        url="http://127.0.0.1:9/h",
        events=["budget.threshold", "budget.exhausted"],
        secret_sealed=seal("whsec_x"),
    )
    _record(alice, 600)
    with django_capture_on_commit_callbacks(execute=True):
        assert spend_alerts_check(organization=alice.organization) == 1  # 50%
        assert spend_alerts_check(organization=alice.organization) == 0  # not again
    _record(alice, 450)
    with django_capture_on_commit_callbacks(execute=True):
        assert spend_alerts_check(organization=alice.organization) == 2  # 80% and 100%
    assert [m.subject for m in mail.outbox] == [
        "Alice: organization 'alice' token quota at 50%",
        "Alice: organization 'alice' token quota at 80%",
        "Alice: organization 'alice' token quota at 100%",
    ]
    assert sorted(mail.outbox[0].to) == ["finance@alice.test", "owner@alice.test"]  # not the admin
    types = list(WebhookDelivery.objects.order_by("id").values_list("event_type", flat=True))
    assert types == ["budget.threshold", "budget.threshold", "budget.exhausted"]


def test_a_budgets_own_thresholds_replace_the_organizations(alice: Tenant) -> None:
    alice.api_key.token_budget = 100
    alice.api_key.alert_thresholds = [0.9]
    alice.api_key.save()
    _record(alice, 85, api_key_id=alice.api_key.pk)
    assert spend_alerts_check(organization=alice.organization) == 0
    _record(alice, 10, api_key_id=alice.api_key.pk)
    assert spend_alerts_check(organization=alice.organization) == 1
    [alert] = SpendAlert.objects.all()
    assert (alert.budget, alert.threshold) == (f"key:{alice.api_key.pk}", "0.9")


def test_this_periods_cost_reaching_an_amount_alerts(alice: Tenant, pro_plan: Plan) -> None:
    subscribe(alice.organization, pro_plan, on=datetime(2026, 1, 1, tzinfo=UTC))
    alice.organization.cost_alert_amounts = ["1000000"]
    alice.organization.save()
    assert spend_alerts_check(organization=alice.organization) == 0
    alice.organization.cost_alert_amounts = [str(Decimal("0.01"))]  # the base price alone is past it
    alice.organization.save()
    assert spend_alerts_check(organization=alice.organization) == 1
    [alert] = SpendAlert.objects.filter(kind="cost")
    assert alert.threshold == "0.01" and alert.used > 0


def test_beat_checks_the_organizations_with_recent_usage(alice: Tenant, charlie: Tenant) -> None:
    for tenant in (alice, charlie):
        tenant.organization.token_quota = 100
        tenant.organization.save()
    _record(alice, 60)
    assert spend_alerts_check_recent() == 1
    assert not SpendAlert.objects.filter(organization=charlie.organization).exists()


def test_the_organizations_alert_settings_through_the_api(alice: Tenant) -> None:
    client = alice.client()
    assert client.get("/api/v1/organization/alerts/").json()["alert_thresholds"] == [0.5, 0.8, 1.0]
    updated = client.put(
        "/api/v1/organization/alerts/",
        {"alert_thresholds": [0.9, 0.25], "cost_alert_amounts": ["50", "10.5"]},
        format="json",
    )
    assert updated.status_code == 200, updated.content
    assert updated.json()["alert_thresholds"] == [0.25, 0.9]
    assert updated.json()["cost_alert_amounts"] == ["10.50", "50.00"]
    refused = client.put("/api/v1/organization/alerts/", {"alert_thresholds": [1.5]}, format="json")
    assert refused.status_code == 400
    alice.organization.refresh_from_db()
    assert alice.organization.alert_thresholds == [0.25, 0.9]


def test_a_keys_own_thresholds_through_the_budgets_api(alice: Tenant) -> None:
    body = {"target": "api_key", "id": alice.api_key.pk, "token_budget": 1000, "alert_thresholds": [0.95]}
    response = alice.client().put("/api/v1/organization/budgets/", body, format="json")
    assert response.status_code == 200, response.content
    alice.api_key.refresh_from_db()
    assert alice.api_key.alert_thresholds == [0.95]
    body["alert_thresholds"] = None
    alice.client().put("/api/v1/organization/budgets/", body, format="json")
    alice.api_key.refresh_from_db()
    assert alice.api_key.alert_thresholds is None  # the organization's again
