from __future__ import annotations

import calendar
from datetime import date
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.selectors import organization_get_by_slug
from usage.selectors import GROUPS, usage_report


class Command(BaseCommand):
    help = "Prints an organization's usage for one month as a table."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True)
        parser.add_argument("--month", required=True, help="YYYY-MM")
        parser.add_argument("--group-by", default="day", choices=sorted(GROUPS))

    def handle(self, *args: Any, **options: Any) -> None:
        organization = organization_get_by_slug(slug=options["org"])
        if organization is None:
            raise CommandError(f"No organization with slug {options['org']}.")
        try:
            year, month = (int(part) for part in options["month"].split("-"))
            start = date(year, month, 1)
        except ValueError as exc:
            raise CommandError("--month must be YYYY-MM.") from exc
        end = date(year, month, calendar.monthrange(year, month)[1])
        group = options["group_by"]
        rows = usage_report(organization=organization, start=start, end=end, group_by=group)
        self.stdout.write(f"{group:<24}{'requests':>12}{'prompt':>14}{'completion':>14}{'total':>14}")
        totals = [0, 0, 0, 0]
        for row in rows:
            values = [row["requests"], row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]]
            totals = [a + b for a, b in zip(totals, values, strict=True)]
            self.stdout.write(
                f"{row[group]!s:<24}" + "".join(f"{v:>14}" if i else f"{v:>12}" for i, v in enumerate(values))
            )
        self.stdout.write(
            f"{'total':<24}" + "".join(f"{v:>14}" if i else f"{v:>12}" for i, v in enumerate(totals))
        )
