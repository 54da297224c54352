"""Budget periods in UTC: a day, a calendar month, or none (never resets)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def period_start(period: str, now: datetime) -> datetime | None:
    now = now.astimezone(UTC)
    if period == "day":
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return None


def period_end(period: str, now: datetime) -> datetime | None:
    start = period_start(period, now)
    if start is None:
        return None
    if period == "day":
        return start + timedelta(days=1)
    return (start + timedelta(days=32)).replace(day=1)


def period_key(period: str, now: datetime) -> str:
    start = period_start(period, now)
    if start is None:
        return "all"
    return f"d{start:%Y-%m-%d}" if period == "day" else f"m{start:%Y-%m}"
