from __future__ import annotations

import pytest
import time_machine

from accounts.services import api_key_create
from billing.models import Invoice, Plan
from billing.periods import Period
from billing.services import invoice_build, period_bill
from tests.billing.conftest import at, october_usage, subscribe, use
from tests.conftest import Tenant, assert_error_shape

pytestmark = pytest.mark.django_db

OCTOBER = Period.parse("2026-10")


@pytest.fixture
def october_invoice(alice: Tenant, pro_plan: Plan) -> Invoice:
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    october_usage(alice.organization)
    (invoice,) = period_bill(period=OCTOBER, now=at(2026, 11, 1, 2)).invoices
    return invoice


def test_invoice_list_shows_the_callers_issued_invoices(alice: Tenant, october_invoice: Invoice) -> None:
    response = alice.client().get("/api/v1/billing/invoices/")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    (row,) = body["data"]
    assert row["id"] == october_invoice.pk
    assert (row["object"], row["period"], row["status"], row["currency"]) == (
        "invoice",
        "2026-10",
        "open",
        "usd",
    )
    assert (row["total"], row["tokens_used"], row["included_tokens"]) == ("33.98", 18_744, 2_000)
    assert row["plan"] == {"slug": "pro", "name": "Pro"}
    assert "lines" not in row


def test_invoice_detail_has_its_lines(alice: Tenant, october_invoice: Invoice) -> None:
    body = alice.client().get(f"/api/v1/billing/invoices/{october_invoice.pk}/").json()
    assert body["total"] == "33.98"
    assert [
        (line["model"], line["token_kind"], line["billable_tokens"], line["unit_price"], line["amount"])
        for line in body["lines"]
    ] == [
        ("", "", 0, "20.000000", "20.00"),
        ("big-model", "prompt", 1_734, "2.000000", "3.47"),
        ("big-model", "completion", 0, "6.000000", "0.00"),
        ("small-model", "prompt", 12_010, "0.500000", "6.01"),
        ("small-model", "completion", 3_000, "1.500000", "4.50"),
    ]


def test_another_organizations_invoice_is_404(charlie: Tenant, october_invoice: Invoice) -> None:
    assert charlie.client().get("/api/v1/billing/invoices/").json()["data"] == []
    missing = charlie.client().get("/api/v1/billing/invoices/999999/")
    foreign = charlie.client().get(f"/api/v1/billing/invoices/{october_invoice.pk}/")
    assert assert_error_shape(foreign, status=404, code="not_found") == assert_error_shape(
        missing, status=404, code="not_found"
    )


def test_a_draft_is_not_shown_until_it_is_sent(alice: Tenant, pro_plan: Plan) -> None:
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    draft = invoice_build(organization=alice.organization, period=OCTOBER, now=at(2026, 11, 1, 2))
    assert draft is not None
    assert alice.client().get("/api/v1/billing/invoices/").json()["data"] == []
    assert_error_shape(alice.client().get(f"/api/v1/billing/invoices/{draft.pk}/"), status=404)


def test_current_estimates_the_open_period_so_far(alice: Tenant, pro_plan: Plan, basic_plan: Plan) -> None:
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    october_usage(alice.organization)  # includes 1 November: 7,777 + 7,777 tokens of big-model
    use(alice.organization, when=at(2026, 11, 20), model="small-model", prompt=1_000, completion=0)
    use(alice.organization, when=at(2026, 11, 25), model="small-model", prompt=1_000, completion=0)
    subscribe(alice.organization, basic_plan, on=at(2026, 11, 10))
    with time_machine.travel(at(2026, 11, 20, 18), tick=False):
        body = alice.client().get("/api/v1/billing/current/").json()
    assert (body["period"], body["period_start"], body["period_end"]) == (
        "2026-11",
        "2026-11-01",
        "2026-11-30",
    )
    assert body["plan"] == {"slug": "pro", "name": "Pro"}
    assert body["pending_plan"] == {"slug": "basic", "name": "Basic", "starts_on": "2026-12-01"}
    assert body["currency"] == "usd" and body["tokens_used"] == 16_554  # nothing after 20 November
    # 20.00 + big-model prompt 7,777 × 2.00 + completion (7,777 − 2,000) × 6.00 + small 1,000 × 0.50
    assert body["total"] == "70.71"
    assert [line["amount"] for line in body["lines"]] == ["20.00", "15.55", "34.66", "0.50"]


def test_current_without_a_plan_is_an_empty_estimate(charlie: Tenant) -> None:
    body = charlie.client().get("/api/v1/billing/current/").json()
    assert (body["plan"], body["lines"], body["total"]) == (None, [], "0.00")


def test_cost_report_prices_usage_per_model(alice: Tenant, charlie: Tenant, pro_plan: Plan) -> None:
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    october_usage(alice.organization)
    use(charlie.organization, when=at(2026, 10, 5), model="small-model", prompt=50_000, completion=50_000)
    response = alice.client().get(
        "/api/v1/billing/costs/", {"start": "2026-10-01", "end": "2026-10-31", "group_by": "model"}
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["group_by"], body["currency"]) == ("model", "usd")
    assert body["data"] == [
        {
            "model": "big-model",
            "requests": 1,
            "prompt_tokens": 2_500,
            "completion_tokens": 1_234,
            "cost": "12.404000",
        },
        {
            "model": "small-model",
            "requests": 2,
            "prompt_tokens": 12_010,
            "completion_tokens": 3_000,
            "cost": "10.505000",
        },
    ]


def test_cost_report_validates_its_range(alice: Tenant) -> None:
    response = alice.client().get("/api/v1/billing/costs/", {"start": "2026-10-31", "end": "2026-10-01"})
    assert assert_error_shape(response, status=400)["param"] == "end"


def test_billing_needs_the_billing_read_scope(alice: Tenant, october_invoice: Invoice) -> None:
    _key, secret = api_key_create(organization=alice.organization, name="generate-only", scopes=["generate"])
    for path in (
        "/api/v1/billing/invoices/",
        f"/api/v1/billing/invoices/{october_invoice.pk}/",
        "/api/v1/billing/current/",
        "/api/v1/billing/costs/?start=2026-10-01&end=2026-10-02",
    ):
        assert_error_shape(alice.client(secret).get(path), status=403, code="missing_scope")


def test_billing_needs_credentials(anonymous: object) -> None:
    assert_error_shape(anonymous.get("/api/v1/billing/invoices/"), status=401)  # type: ignore[attr-defined]
