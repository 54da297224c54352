from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.selectors import organization_get_by_slug
from usage.budgets import BudgetTargetNotFound, rate_limit_set


class Command(BaseCommand):
    help = "Sets requests and tokens per minute on an organization or one of its keys (-1: no limit)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True)
        parser.add_argument("--key", help="API key prefix.")
        parser.add_argument("--rpm", type=int)
        parser.add_argument("--tpm", type=int)

    def handle(self, *args: Any, **options: Any) -> None:
        organization = organization_get_by_slug(slug=options["org"])
        if organization is None:
            raise CommandError(f"No organization with slug {options['org']}.")
        try:
            description = rate_limit_set(
                organization=organization, key_prefix=options["key"], rpm=options["rpm"], tpm=options["tpm"]
            )
        except BudgetTargetNotFound as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(description)
