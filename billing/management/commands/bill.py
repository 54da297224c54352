from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.selectors import organization_get_by_slug
from billing.periods import Period
from billing.services import BillingError, period_bill


class Command(BaseCommand):
    help = (
        "Builds the invoices of a closed month (every organization with a plan, or one) and sends "
        "them: finalized, and pushed to Stripe when STRIPE_API_KEY is set. Running it again "
        "changes nothing that was sent and resumes what failed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--period", required=True, help="YYYY-MM")
        parser.add_argument("--org", help="Organization slug; default: every organization.")
        parser.add_argument(
            "--draft", action="store_true", help="Only build (or rebuild) drafts; send nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            period = Period.parse(options["period"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        organization = None
        if options["org"]:
            organization = organization_get_by_slug(slug=options["org"])
            if organization is None:
                raise CommandError(f"No organization with slug {options['org']}.")
        try:
            run = period_bill(
                period=period, organization=organization, send=not options["draft"], show_progress=True
            )
        except BillingError as exc:
            raise CommandError(exc.message) from exc
        for invoice in run.invoices:
            self.stdout.write(
                f"{invoice.organization.slug:<24}{invoice.period.key:<9}{invoice.status:<7}"
                f"{invoice.total:>14} {invoice.currency.upper()}  {invoice.stripe_invoice_id or '-'}"
            )
        self.stdout.write(f"{len(run.invoices)} invoice(s) for {period}.")
        if run.failures:
            for slug, error in run.failures.items():
                self.stderr.write(f"{slug}: {error}")
            raise CommandError(f"{len(run.failures)} invoice(s) could not be sent; run the command again.")
