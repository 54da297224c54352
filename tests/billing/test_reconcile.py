"""usage_reconcile against invoices: what an invoice bills must be what the records hold."""

from __future__ import annotations

from io import StringIO

import pytest
import time_machine
from django.core.management import CommandError, call_command

from billing.models import Plan
from billing.periods import Period
from billing.reconciliation import usage_reconcile
from tests.billing.conftest import at, october_usage, subscribe, use
from tests.conftest import Tenant

pytestmark = pytest.mark.django_db

OCTOBER = Period.parse("2026-10")
AFTER_OCTOBER = at(2026, 11, 1, 2)


def _reconcile(*arguments: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("usage_reconcile", "--no-flush", *arguments, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_a_sent_invoice_reconciles_with_its_records(alice: Tenant, pro_plan: Plan) -> None:
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    october_usage(alice.organization)
    with time_machine.travel(AFTER_OCTOBER, tick=False):
        call_command("bill", "--period", "2026-10", stdout=StringIO())
    out, _err = _reconcile("--period", "2026-10")
    assert "Reconciled" in out
    result = usage_reconcile(organization=alice.organization, period=OCTOBER)
    assert (
        result.records == result.rollups == result.invoiced == 8_010 + 1_000 + 4_000 + 2_000 + 2_500 + 1_234
    )


def test_usage_that_lands_after_the_invoice_was_sent_is_a_difference(alice: Tenant, pro_plan: Plan) -> None:
    subscribe(alice.organization, pro_plan, on=at(2026, 9, 15))
    october_usage(alice.organization)
    with time_machine.travel(AFTER_OCTOBER, tick=False):
        call_command("bill", "--period", "2026-10", stdout=StringIO())
    use(alice.organization, when=at(2026, 10, 30), model="small-model", prompt=10, completion=5)
    with pytest.raises(CommandError, match="1 organization"):
        _reconcile("--period", "2026-10", "--org", "alice")
    result = usage_reconcile(organization=alice.organization, period=OCTOBER)
    assert result.differences == [
        "the invoice bills 18744 but the usage records of its days hold 18759",
    ]


def test_an_invoice_of_a_plan_that_started_mid_month_reconciles(alice: Tenant, pro_plan: Plan) -> None:
    use(alice.organization, when=at(2026, 10, 21), model="small-model", prompt=50_000, completion=0)
    subscribe(alice.organization, pro_plan, on=at(2026, 10, 22, 9))
    use(alice.organization, when=at(2026, 10, 25), model="small-model", prompt=1_645, completion=0)
    with time_machine.travel(AFTER_OCTOBER, tick=False):
        call_command("bill", "--period", "2026-10", stdout=StringIO())
    assert usage_reconcile(organization=alice.organization, period=OCTOBER).differences == []


def test_reconcile_refuses_bad_arguments(db: None) -> None:
    with pytest.raises(CommandError, match="expected YYYY-MM"):
        _reconcile("--period", "October")
    with pytest.raises(CommandError, match="No organization"):
        _reconcile("--org", "nobody")
