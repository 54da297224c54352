from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import stripe
from rest_framework.test import APIClient

from accounts.models import Organization
from accounts.services import api_key_create, membership_create, user_create
from billing import stripe_sync
from billing.models import Plan
from billing.services import plan_create, subscription_change
from tests.conftest import Tenant, free_port, wait_http
from usage.records import usage_records_write

WEBHOOK_URL = "/api/v1/billing/stripe/webhook/"
WEBHOOK_SECRET = "whsec_billing_tests"


@pytest.fixture(autouse=True)
def _billing_settings(settings: Any) -> None:
    """Stripe off unless a test turns it on; a known webhook secret; a week of grace."""
    settings.STRIPE_API_KEY = ""
    settings.STRIPE_API_BASE = ""
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.BILLING_GRACE_DAYS = 7
    settings.BILLING_CURRENCY = "usd"


@pytest.fixture(scope="session")
def localstripe_url() -> Iterator[str]:
    """localstripe, a Stripe stand-in, as a real HTTP server (see localstripe_server.py)."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("localstripe_server.py")),
            "--port",
            str(port),
            "--from-scratch",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/customers", process)  # answers 401 without a key
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def stripe_client(settings: Any, localstripe_url: str) -> stripe.StripeClient:
    """Turns Stripe sync on, against localstripe; the client reads back what billing pushed."""
    settings.STRIPE_API_KEY = "sk_test_billing"
    settings.STRIPE_API_BASE = localstripe_url
    return stripe.StripeClient("sk_test_billing", base_addresses={"api": localstripe_url})


@pytest.fixture
def fresh_stripe_log() -> Iterator[None]:
    """Forgets that this process already said Stripe sync is off."""
    stripe_sync._sync_off_logged = False
    yield
    stripe_sync._sync_off_logged = False


def at(year: int, month: int, day: int, hour: int = 12, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.fixture
def pro_plan(db: Any) -> Plan:
    """20.00 a month with 2,000 tokens included; 0.50 / 1.50 per 1,000 prompt / completion
    tokens, and 2.00 / 6.00 on big-model."""
    return plan_create(
        slug="pro",
        name="Pro",
        monthly_price=Decimal("20.00"),
        included_tokens=2_000,
        prompt_price_per_1k=Decimal("0.50"),
        completion_price_per_1k=Decimal("1.50"),
        model_prices={"big-model": (Decimal("2.00"), Decimal("6.00"))},
        requests_per_minute=100,
        tokens_per_minute=50_000,
        token_quota=5_000_000,
    )


@pytest.fixture
def basic_plan(db: Any) -> Plan:
    return plan_create(
        slug="basic",
        name="Basic",
        monthly_price=Decimal("5.00"),
        included_tokens=0,
        prompt_price_per_1k=Decimal("1.00"),
        completion_price_per_1k=Decimal("2.00"),
        requests_per_minute=10,
        tokens_per_minute=5_000,
        token_quota=100_000,
    )


def subscribe(organization: Organization, plan: Plan, *, on: datetime) -> None:
    subscription_change(organization=organization, plan=plan, now=on)


_request_ids = itertools.count(1)


def use(organization: Organization, *, when: datetime, model: str, prompt: int, completion: int) -> None:
    """One request's usage, through the usage app's single writer (record and daily rollup)."""
    usage_records_write(
        [
            {
                "request_id": f"billing-test-{next(_request_ids)}",
                "organization_id": organization.pk,
                "endpoint": "generate",
                "model": model,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "created_at": when,
            }
        ]
    )


def october_usage(organization: Organization) -> None:
    """The usage whose October invoice the tests know to the cent (see test_invoices), plus
    usage in September and November that October's invoice must not include."""
    use(organization, when=at(2026, 9, 30, 23, 59), model="small-model", prompt=9_999, completion=9_999)
    use(organization, when=at(2026, 10, 1, 0, 0), model="small-model", prompt=8_010, completion=1_000)
    use(organization, when=at(2026, 10, 17), model="small-model", prompt=4_000, completion=2_000)
    use(organization, when=at(2026, 10, 20), model="big-model", prompt=2_500, completion=1_234)
    use(organization, when=at(2026, 11, 1, 0, 0), model="big-model", prompt=7_777, completion=7_777)


def signed_delivery(
    event: dict[str, Any], *, secret: str = WEBHOOK_SECRET, signature: str | None = None
) -> Any:
    """Posts the event as Stripe does: `Stripe-Signature: t=<unix time>,v1=<HMAC-SHA256 of
    "<t>.<payload>" with the signing secret>`."""
    payload = json.dumps(event)
    if signature is None:
        timestamp = int(time.time())
        digest = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
        signature = f"t={timestamp},v1={digest}"
    headers = {"HTTP_STRIPE_SIGNATURE": signature} if signature else {}
    return APIClient().post(WEBHOOK_URL, data=payload, content_type="application/json", **headers)


_event_ids = itertools.count(1)


def invoice_event(event_type: str, stripe_invoice_id: str, *, event_id: str | None = None) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_test_{next(_event_ids)}",
        "object": "event",
        "type": event_type,
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": {"id": stripe_invoice_id, "object": "invoice"}},
    }


PASSWORD = "correct horse battery staple"


def member_client(tenant: Tenant, role: str) -> APIClient:
    """A client signed in (JWT) as a member of the tenant with `role` (the owner for "owner")."""
    if role == "owner":
        user = tenant.owner
    else:
        user = user_create(email=f"{role}@{tenant.organization.slug}.test", password=PASSWORD)
        membership_create(organization=tenant.organization, user=user, role=role)
    client = APIClient()
    response = client.post(
        "/api/v1/auth/token/",
        {"email": user.email, "password": PASSWORD, "organization": tenant.organization.slug},
        format="json",
    )
    assert response.status_code == 200, response.content
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['access']}")
    return client


def key_client(tenant: Tenant, scopes: list[str]) -> APIClient:
    """A client with a new organization-wide key of the tenant that has `scopes`."""
    _key, secret = api_key_create(organization=tenant.organization, name=f"key {scopes}", scopes=scopes)
    return tenant.client(secret)
