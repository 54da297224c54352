from __future__ import annotations

from datetime import date, datetime
from typing import Any

from django.db.models import F, Sum
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
    if scope == "api_key":
        records = records.filter(api_key_id=int(subject))
    elif scope == "member":
        records = records.filter(user_id=int(subject))
    elif scope == "end_user":
        records = records.filter(end_user=subject)
    elif scope == "ingestion":
        records = records.filter(endpoint="ingestion")
    total = records.aggregate(total=Coalesce(Sum(F("prompt_tokens") + F("completion_tokens")), 0))["total"]
    return int(total)


def usage_report(
    *, organization: Organization, start: date, end: date, group_by: str
) -> list[dict[str, Any]]:
    """One row per group over [start, end] (inclusive days), from the daily rollups."""
    column = GROUPS[group_by]
    rows = (
        UsageDaily.objects.filter(organization=organization, day__gte=start, day__lte=end)
        .values(column)
        .annotate(
            requests_sum=Sum("requests"),
            prompt_sum=Sum("prompt_tokens"),
            completion_sum=Sum("completion_tokens"),
        )
        .order_by(column)
    )
    report = []
    for row in rows:
        group = row[column]
        if isinstance(group, date):
            group = group.isoformat()
        report.append(
            {
                group_by: group,
                "requests": int(row["requests_sum"]),
                "prompt_tokens": int(row["prompt_sum"]),
                "completion_tokens": int(row["completion_sum"]),
                "total_tokens": int(row["prompt_sum"] + row["completion_sum"]),
            }
        )
    return report


def tokens_per_day(*, organization: Organization, start: date, end: date) -> list[tuple[date, int]]:
    rows = (
        UsageDaily.objects.filter(organization=organization, day__gte=start, day__lte=end)
        .values("day")
        .annotate(tokens=Sum(F("prompt_tokens") + F("completion_tokens")))
        .order_by("day")
    )
    return [(row["day"], int(row["tokens"])) for row in rows]
