from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from accounts.selectors import organization_get_by_slug
from billing.periods import Period
from billing.reconciliation import organizations_with_usage, usage_reconcile
from common.progress import progress
from usage.services import get_ledger, usage_stream_flush


class Command(BaseCommand):
    help = (
        "Compares, per organization and month, the ledger's charged tokens, the usage records, "
        "their daily rollups and the invoice. Prints every difference and exits non-zero when "
        "there is one. Flushes the settlement stream first, so that what was charged has landed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--period", help="YYYY-MM; default: this month.")
        parser.add_argument("--org", help="Organization slug; default: every organization with usage.")
        parser.add_argument(
            "--no-flush", action="store_true", help="Do not flush the settlement stream first."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            period = (
                Period.parse(options["period"]) if options["period"] else Period.containing(timezone.now())
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if options["org"]:
            organization = organization_get_by_slug(slug=options["org"])
            if organization is None:
                raise CommandError(f"No organization with slug {options['org']}.")
            organizations = [organization]
        else:
            organizations = organizations_with_usage(period=period)
        if not options["no_flush"]:
            usage_stream_flush()
        open_reservations = get_ledger().active_reservations()
        differing = 0
        self.stdout.write(
            f"{'organization':<24}{'period':<9}{'ledger':>12}{'records':>12}{'rollups':>12}{'invoiced':>12}"
        )
        for organization in progress(organizations, total=len(organizations), label="usage_reconcile"):
            result = usage_reconcile(organization=organization, period=period)
            self.stdout.write(
                f"{organization.slug:<24}{period.key:<9}"
                f"{'unknown' if result.ledger_charged is None else result.ledger_charged:>12}"
                f"{result.records:>12}{result.rollups:>12}"
                f"{'-' if result.invoiced is None else result.invoiced:>12}"
            )
            for difference in result.differences:
                self.stderr.write(f"{organization.slug} {period.key}: {difference}")
            differing += bool(result.differences)
        self.stdout.write(f"{open_reservations} reservation(s) still open (held, not charged yet).")
        if differing:
            raise CommandError(f"{differing} organization(s) do not reconcile.")
        self.stdout.write("Reconciled: no differences.")
