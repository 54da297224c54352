from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import BudgetPeriod
from accounts.selectors import organization_get_by_slug
from usage.budgets import BudgetTargetNotFound, budget_set


class Command(BaseCommand):
    help = "Sets a token budget on an organization, a member, an API key or an end user."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True)
        target = parser.add_mutually_exclusive_group()
        target.add_argument("--user", help="Member email.")
        target.add_argument("--key", help="API key prefix.")
        target.add_argument("--end-user", help="The user_id the tenant passes in requests.")
        parser.add_argument(
            "--tokens", type=int, required=True, help="Tokens per period; -1 removes the budget."
        )
        parser.add_argument("--period", choices=BudgetPeriod.values)

    def handle(self, *args: Any, **options: Any) -> None:
        organization = organization_get_by_slug(slug=options["org"])
        if organization is None:
            raise CommandError(f"No organization with slug {options['org']}.")
        tokens = options["tokens"]
        try:
            description = budget_set(
                organization=organization,
                user_email=options["user"],
                key_prefix=options["key"],
                end_user=options["end_user"],
                tokens=None if tokens < 0 else tokens,
                period=options["period"],
            )
        except BudgetTargetNotFound as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(description)
