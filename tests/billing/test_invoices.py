from __future__ import annotations

from decimal import Decimal
from io import StringIO

import pytest
import time_machine
from django.core.management import CommandError, call_command

from billing.models import Invoice, Plan
from billing.periods import Period
from billing.selectors import usage_cost_report, usage_record_cost
from billing.services import BillingError, invoice_build, invoice_send, period_bill
from billing.tasks import bill_previous_month
from tests.billing.conftest import at, october_usage, subscribe, use
from tests.conftest import Tenant
from usage.models import UsageRecord

pytestmark = pytest.mark.django_db

OCTOBER = Period.parse("2026-10")
AFTER_OCTOBER = at(2026, 11, 1, 2)


def _lines(invoice: Invoice) -> list[tuple]:
    return [
        (
            line.kind,
            line.model,
            line.token_kind,
            line.tokens,
            line.included_tokens,
            line.billable_tokens,
            line.unit_price,
            line.amount,
        )
        for line in invoice.lines.all()
    ]


EXPECTED_OCTOBER_LINES = [
    ("base", "", "", 0, 0, 0, Decimal("20.00"), Decimal("20.00")),
    ("usage", "big-model", "prompt", 2_500, 766, 1_734, Decimal("2.00"), Decimal("3.47")),
    ("usage", "big-model", "completion", 1_234, 1_234, 0, Decimal("6.00"), Decimal("0.00")),
    ("usage", "small-model", "prompt", 12_010, 0, 12_010, Decimal("0.50"), Decimal("6.01")),
    ("usage", "small-model", "completion", 3_000, 0, 3_000, Decimal("1.50"), Decimal("4.50")),
]


def test_a_period_of_usage_becomes_an_invoice_with_a_line_per_model_and_token_kind(
    alice: Tenant, charlie: Tenant, pro_plan: Plan
) -> None:
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    october_usage(alice.organization)
    use(charlie.organization, when=at(2026, 10, 5), model="small-model", prompt=50_000, completion=50_000)

    invoice = invoice_build(organization=alice.organization, period=OCTOBER, now=AFTER_OCTOBER)

    assert invoice is not None
    invoice.refresh_from_db()
    assert (invoice.period_start.isoformat(), invoice.period_end.isoformat()) == ("2026-10-01", "2026-10-31")
    assert invoice.status == Invoice.Status.DRAFT
    assert invoice.currency == "usd"
    assert invoice.total == Decimal("33.98")
    assert invoice.tokens_used == 18_744
    assert invoice.included_tokens == 2_000
    assert _lines(invoice) == EXPECTED_OCTOBER_LINES
    assert sum(line.amount for line in invoice.lines.all()) == invoice.total


def test_building_a_period_twice_gives_the_same_invoice(alice: Tenant, pro_plan: Plan) -> None:
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    october_usage(alice.organization)
    first = invoice_build(organization=alice.organization, period=OCTOBER, now=AFTER_OCTOBER)
    second = invoice_build(organization=alice.organization, period=OCTOBER, now=at(2026, 11, 1, 3))
    assert first is not None and second is not None
    assert second.pk == first.pk
    assert Invoice.objects.filter(organization=alice.organization).count() == 1
    assert _lines(second) == EXPECTED_OCTOBER_LINES


def test_rebuilding_a_draft_takes_in_late_usage_but_a_sent_invoice_never_changes(
    alice: Tenant, pro_plan: Plan
) -> None:
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    october_usage(alice.organization)
    draft = invoice_build(organization=alice.organization, period=OCTOBER, now=AFTER_OCTOBER)
    assert draft is not None

    use(alice.organization, when=at(2026, 10, 31, 23, 59), model="small-model", prompt=1_000, completion=0)
    rebuilt = invoice_build(organization=alice.organization, period=OCTOBER, now=AFTER_OCTOBER)
    assert rebuilt is not None and rebuilt.pk == draft.pk
    assert rebuilt.total == Decimal("34.48")  # 1,000 more prompt tokens at 0.50 per 1,000

    sent = invoice_send(invoice=rebuilt, now=AFTER_OCTOBER)
    assert sent.status == Invoice.Status.OPEN and sent.finalized_at == AFTER_OCTOBER
    use(alice.organization, when=at(2026, 10, 31, 23, 59), model="big-model", prompt=0, completion=9_000)
    again = invoice_build(organization=alice.organization, period=OCTOBER, now=at(2026, 11, 2))
    assert again is not None and again.pk == sent.pk
    assert again.total == Decimal("34.48") and again.status == Invoice.Status.OPEN


def test_a_period_cannot_be_billed_before_it_is_over(alice: Tenant, pro_plan: Plan) -> None:
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    with pytest.raises(BillingError, match="not over"):
        invoice_build(organization=alice.organization, period=OCTOBER, now=at(2026, 10, 31, 23, 59))


def test_an_organization_without_a_plan_gets_no_invoice(
    alice: Tenant, charlie: Tenant, pro_plan: Plan
) -> None:
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    use(charlie.organization, when=at(2026, 10, 5), model="small-model", prompt=100, completion=100)
    run = period_bill(period=OCTOBER, now=AFTER_OCTOBER)
    assert [invoice.organization.slug for invoice in run.invoices] == ["alice"]
    assert invoice_build(organization=charlie.organization, period=OCTOBER, now=AFTER_OCTOBER) is None


def test_the_first_plan_is_charged_from_the_day_it_starts(alice: Tenant, pro_plan: Plan) -> None:
    use(alice.organization, when=at(2026, 10, 21), model="small-model", prompt=50_000, completion=0)
    subscribe(alice.organization, pro_plan, on=at(2026, 10, 22, 9))
    use(alice.organization, when=at(2026, 10, 25), model="small-model", prompt=1_645, completion=0)
    invoice = invoice_build(organization=alice.organization, period=OCTOBER, now=AFTER_OCTOBER)
    assert invoice is not None
    assert invoice.included_tokens == 645  # 10 of 31 days of 2,000
    assert _lines(invoice) == [
        ("base", "", "", 0, 0, 0, Decimal("20.00"), Decimal("6.45")),
        ("usage", "small-model", "prompt", 1_645, 645, 1_000, Decimal("0.50"), Decimal("0.50")),
    ]


def test_each_usage_record_costs_its_tokens_at_the_price_in_force_when_it_happened(
    alice: Tenant, pro_plan: Plan, basic_plan: Plan
) -> None:
    subscribe(alice.organization, basic_plan, on=at(2026, 9, 1))
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 20))  # Pro from October 1
    use(alice.organization, when=at(2026, 9, 30, 23, 59), model="small-model", prompt=1_000, completion=1_000)
    use(alice.organization, when=at(2026, 10, 1, 0, 0), model="small-model", prompt=1_000, completion=1_000)
    september, october = UsageRecord.objects.filter(organization=alice.organization).order_by("created_at")
    assert usage_record_cost(record=september) == Decimal("3.00")  # Basic: 1.00 + 2.00
    assert usage_record_cost(record=october) == Decimal("2.00")  # Pro: 0.50 + 1.50

    report = usage_cost_report(
        organization=alice.organization,
        start=at(2026, 9, 1).date(),
        end=at(2026, 10, 31).date(),
        group_by="day",
    )
    assert [(row.group, row.cost) for row in report.rows] == [
        ("2026-09-30", Decimal("3.000000")),
        ("2026-10-01", Decimal("2.000000")),
    ]


def test_bill_command_builds_and_sends_the_period_once(alice: Tenant, pro_plan: Plan) -> None:
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    october_usage(alice.organization)
    out = StringIO()
    with time_machine.travel(AFTER_OCTOBER, tick=False):
        call_command("bill", "--period", "2026-10", "--org", "alice", stdout=out)
        call_command("bill", "--period", "2026-10", stdout=StringIO())
    invoice = Invoice.objects.get(organization=alice.organization)
    assert invoice.status == Invoice.Status.OPEN and invoice.total == Decimal("33.98")
    assert "alice" in out.getvalue() and "33.98 USD" in out.getvalue()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--period", "2026-13"], "expected YYYY-MM|month must be"),
        (["--period", "2026-10", "--org", "nobody"], "No organization"),
        (["--period", "2999-01"], "not over"),
    ],
)
def test_bill_command_refuses_bad_arguments(db: None, arguments: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("bill", *arguments, stdout=StringIO())


def test_beat_task_bills_the_previous_month(alice: Tenant, pro_plan: Plan) -> None:
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    october_usage(alice.organization)
    with time_machine.travel(at(2026, 11, 1, 2), tick=False):
        result = bill_previous_month()
    assert result == {"period": "2026-10", "invoices": 1, "failures": {}}
    assert Invoice.objects.get(organization=alice.organization).total == Decimal("33.98")


def test_an_invoice_with_nothing_to_pay_is_paid_when_sent(alice: Tenant) -> None:
    from billing.services import plan_create

    free = plan_create(
        slug="free",
        name="Free",
        monthly_price=Decimal("0"),
        included_tokens=1_000_000,
        prompt_price_per_1k=Decimal("0.10"),
        completion_price_per_1k=Decimal("0.10"),
    )
    subscribe(alice.organization, free, on=at(2026, 9, 15))
    use(alice.organization, when=at(2026, 10, 5), model="small-model", prompt=100, completion=100)
    run = period_bill(period=OCTOBER, now=AFTER_OCTOBER)
    (invoice,) = run.invoices
    assert invoice.total == Decimal("0.00") and invoice.status == Invoice.Status.PAID
