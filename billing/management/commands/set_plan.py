from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.audit import Actor
from accounts.models import AuditEvent
from accounts.selectors import organization_get_by_slug
from billing.models import Plan
from billing.services import BillingError, subscription_change

ACTOR = Actor(type=AuditEvent.ActorType.OPERATOR, label="manage.py set_plan")


class Command(BaseCommand):
    help = (
        "Puts an organization on a plan (public or private): a first plan starts today, a change "
        "at the start of the next period; the current plan again withdraws a pending change."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True, help="Organization slug.")
        parser.add_argument("plan", help="Plan slug.")

    def handle(self, *args: Any, **options: Any) -> None:
        organization = organization_get_by_slug(slug=options["org"])
        if organization is None:
            raise CommandError(f"No organization with slug {options['org']}.")
        plan = Plan.objects.filter(slug=options["plan"]).first()
        if plan is None:
            raise CommandError(f"No plan with slug {options['plan']}.")
        try:
            held = subscription_change(organization=organization, plan=plan, actor=ACTOR)
        except BillingError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"{organization.slug} is on {held.plan.slug} from {held.starts_on}.")
