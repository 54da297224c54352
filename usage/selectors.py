from __future__ import annotations

import csv
import io
from datetime import date, datetime
from typing import Any

from django.db.models import F, Q, Sum
from django.db.models.functions import Coalesce

from accounts.models import Organization
from usage.models import UsageDaily, UsageRecord

GROUPS = {
    "day": "day",
    "model": "model",
    "key": "api_key_id",
    "user": "user_id",
    "end_user": "end_user",
    "endpoint": "endpoint",
}


def tokens_used_since(*, organization_id: int, scope: str, subject: str, since: datetime | None) -> int:
    """Tokens charged to one budget since `since`, from the durable usage records."""
    records = UsageRecord.objects.filter(organization_id=organization_id)
    if since is not None:
        records = records.filter(created_at__gte=since)
    if scope == "api_key":  # the key and the keys rotated from it (`APIKey.budget_lineage`)
        records = records.filter(Q(api_key_id=int(subject)) | Q(api_key__budget_lineage=int(subject)))
    elif scope == "member":
        records = records.filter(user_id=int(subject))
    elif scope == "end_user":
        records = records.filter(end_user=subject)
    elif scope == "ingestion":
        records = records.filter(endpoint="ingestion")
    total = records.aggregate(total=Coalesce(Sum(F("prompt_tokens") + F("completion_tokens")), 0))["total"]
    return int(total)


def usage_report(
    *, organization: Organization, start: date, end: date, group_by: str, split_by: str | None = None
) -> list[dict[str, Any]]:
    """One row per group over [start, end] (inclusive days), from the daily rollups; with
    `split_by`, one row per group and value of the second grouping (days by model, for a chart)."""
    columns = [GROUPS[group_by]] + ([GROUPS[split_by]] if split_by and split_by != group_by else [])
    names = [group_by] + ([split_by] if len(columns) > 1 and split_by else [])
    rows = (
        UsageDaily.objects.filter(organization=organization, day__gte=start, day__lte=end)
        .values(*columns)
        .annotate(
            requests_sum=Sum("requests"),
            prompt_sum=Sum("prompt_tokens"),
            completion_sum=Sum("completion_tokens"),
        )
        .order_by(*columns)
    )
    report = []
    for row in rows:
        entry: dict[str, Any] = {}
        for name, column in zip(names, columns, strict=True):
            group = row[column]
            entry[name] = group.isoformat() if isinstance(group, date) else group
        entry.update(
            requests=int(row["requests_sum"]),
            prompt_tokens=int(row["prompt_sum"]),
            completion_tokens=int(row["completion_sum"]),
            total_tokens=int(row["prompt_sum"] + row["completion_sum"]),
        )
        report.append(entry)
    return report


def usage_report_csv(*, rows: list[dict[str, Any]], group_by: str, split_by: str | None = None) -> str:
    """The report as CSV, its grouping columns first (the API's `format=csv` and the console's
    download)."""
    groups = [group_by] + ([split_by] if split_by and split_by != group_by else [])
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=[*groups, "requests", "prompt_tokens", "completion_tokens", "total_tokens"]
    )
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def tokens_per_day(*, organization: Organization, start: date, end: date) -> list[tuple[date, int]]:
    rows = (
        UsageDaily.objects.filter(organization=organization, day__gte=start, day__lte=end)
        .values("day")
        .annotate(tokens=Sum(F("prompt_tokens") + F("completion_tokens")))
        .order_by("day")
    )
    return [(row["day"], int(row["tokens"])) for row in rows]
