"""Billing periods: calendar months in UTC."""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

_PERIOD_KEY = re.compile(r"^(\d{4})-(\d{2})$")


@dataclass(frozen=True, order=True)
class Period:
    start: date  # always the first day of a month

    @classmethod
    def parse(cls, key: str) -> Period:
        """The period named `YYYY-MM`; raises ValueError for anything else."""
        match = _PERIOD_KEY.match(key)
        if match is None:
            raise ValueError(f"'{key}' is not a period: expected YYYY-MM.")
        year, month = int(match.group(1)), int(match.group(2))
        if not 1 <= month <= 12:
            raise ValueError(f"'{key}' is not a period: the month must be 01 to 12.")
        return cls(start=date(year, month, 1))

    @classmethod
    def of(cls, day: date) -> Period:
        return cls(start=day.replace(day=1))

    @classmethod
    def containing(cls, moment: datetime) -> Period:
        return cls.of(moment.astimezone(UTC).date())

    @property
    def key(self) -> str:
        return f"{self.start:%Y-%m}"

    @property
    def days(self) -> int:
        return calendar.monthrange(self.start.year, self.start.month)[1]

    @property
    def end(self) -> date:
        """The last day of the period (inclusive)."""
        return self.start.replace(day=self.days)

    @property
    def next_start(self) -> date:
        return self.end + timedelta(days=1)

    @property
    def ends_at(self) -> datetime:
        """The instant the period closes (exclusive), in UTC."""
        return datetime(self.next_start.year, self.next_start.month, 1, tzinfo=UTC)

    def next(self) -> Period:
        return Period(start=self.next_start)

    def previous(self) -> Period:
        return Period.of(self.start - timedelta(days=1))

    def __str__(self) -> str:
        return self.key


def today_utc(moment: datetime) -> date:
    return moment.astimezone(UTC).date()
