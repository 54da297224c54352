"""Reconciliation of what was charged, recorded and invoiced: the check behind
`manage.py usage_reconcile`.

For one organization and month, three independent accounts of the same tokens must agree: the
ledger's running total of what it charged (in Redis, `usage.services.charged_key`), the usage
records (one per admitted request, as charged), and their daily rollups; and the month's
invoice, once built, must bill the same tokens. Reservations still open are not charged yet
and are reported beside. A ledger total Redis no longer holds (restarted without persistence)
is reported as unknown, not as a difference. An invoice bills the days its plan covered (a first
plan starts mid-month), so it is compared with the records of those days.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

from django.db.models import F, Sum
from django.db.models.functions import Coalesce

from accounts.models import Organization
from billing.models import Invoice
from billing.periods import Period
from billing.selectors import period_plan
from usage.models import UsageDaily, UsageRecord
from usage.services import charged_key, get_ledger


@dataclass(frozen=True)
class Reconciliation:
    organization: Organization
    period: Period
    ledger_charged: int | None
    records: int
    rollups: int
    invoiced: int | None
    records_invoiceable: int

    @property
    def differences(self) -> list[str]:
        found = []
        if self.ledger_charged is not None and self.ledger_charged != self.records:
            found.append(f"ledger charged {self.ledger_charged} but the usage records hold {self.records}")
        if self.rollups != self.records:
            found.append(f"daily rollups hold {self.rollups} but the usage records hold {self.records}")
        if self.invoiced is not None and self.invoiced != self.records_invoiceable:
            found.append(
                f"the invoice bills {self.invoiced} but the usage records of its days hold "
                f"{self.records_invoiceable}"
            )
        return found


def _records_total(*, organization: Organization, since: date, until: datetime) -> int:
    return int(
        UsageRecord.objects.filter(
            organization=organization,
            created_at__gte=datetime(since.year, since.month, since.day, tzinfo=UTC),
            created_at__lt=until,
        ).aggregate(total=Coalesce(Sum(F("prompt_tokens") + F("completion_tokens")), 0))["total"]
    )


def usage_reconcile(*, organization: Organization, period: Period) -> Reconciliation:
    start = datetime(period.start.year, period.start.month, 1, tzinfo=UTC)
    records = _records_total(organization=organization, since=period.start, until=period.ends_at)
    rollups = UsageDaily.objects.filter(
        organization=organization, day__gte=period.start, day__lte=period.end
    ).aggregate(total=Coalesce(Sum(F("prompt_tokens") + F("completion_tokens")), 0))["total"]
    invoice = Invoice.objects.filter(organization=organization, period_start=period.start).first()
    invoiceable = records
    if invoice is not None:
        covered = period_plan(organization=organization, period=period)
        if covered is not None and covered.first_day > period.start:
            invoiceable = _records_total(
                organization=organization, since=covered.first_day, until=period.ends_at
            )
    (charged,) = get_ledger().charged([charged_key(organization_id=organization.pk, when=start)])
    return Reconciliation(
        organization=organization,
        period=period,
        ledger_charged=charged,
        records=records,
        rollups=int(rollups),
        invoiced=invoice.tokens_used if invoice is not None else None,
        records_invoiceable=invoiceable,
    )


def organizations_with_usage(*, period: Period) -> list[Organization]:
    start = datetime(period.start.year, period.start.month, 1, tzinfo=UTC)
    ids = (
        UsageRecord.objects.filter(created_at__gte=start, created_at__lt=period.ends_at)
        .values_list("organization_id", flat=True)
        .distinct()
    )
    return list(Organization.objects.filter(pk__in=list(ids)).order_by("slug"))
