from __future__ import annotations

import secrets
from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from django.utils import timezone

from accounts.models import Membership, Organization, User
from accounts.services import api_key_create, organization_create, user_create
from billing.models import Plan
from billing.periods import today_utc
from billing.selectors import subscription_in_force
from billing.services import plan_create, subscription_change

DEMO_PLAN = "demo"


class Command(BaseCommand):
    help = (
        "Creates a demo organization with an owner on a free demo plan (once) and a fresh API key "
        "(every time)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", default="demo")
        parser.add_argument("--email", default="owner@demo.local")
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        password = None
        user = User.objects.filter(email=options["email"]).first()
        if user is None:
            password = secrets.token_urlsafe(12)
            user = user_create(email=options["email"], password=password)
            user.is_staff = user.is_superuser = True
            user.save(update_fields=["is_staff", "is_superuser"])
        organization = Organization.objects.filter(slug=options["org"]).first()
        if organization is None:
            organization = organization_create(slug=options["org"], name="Demo", owner=user)
        elif not Membership.objects.filter(user=user, organization=organization).exists():
            Membership.objects.create(user=user, organization=organization, role=Membership.Role.OWNER)
        if subscription_in_force(organization=organization, day=today_utc(timezone.now())) is None:
            # Its usage then has a price and the console's billing page a plan to show.
            subscription_change(organization=organization, plan=_demo_plan())
        _key, secret = api_key_create(organization=organization, name="demo", user=user)
        base = options["base_url"]
        lines = [
            "",
            f"Demo organization '{organization.slug}', owner {user.email}"
            + (
                f" (password {password}; console at {base}/console/, admin at {base}/admin/)"
                if password
                else ""
            ),
            f"API key (shown once): {secret}",
            "Try it:",
            f"  curl -s {base}/api/v1/generate/ -H 'Authorization: Bearer {secret}' "
            "-H 'Content-Type: application/json' "
            '-d \'{"prompt": "Explique les classes Python", "max_tokens": 60}\'',
            f"  curl -s {base}/v1/chat/completions -H 'Authorization: Bearer {secret}' "
            "-H 'Content-Type: application/json' "
            '-d \'{"messages": [{"role": "user", "content": "What is a decorator?"}], "max_tokens": 60}\'',
            f"  curl -s {base}/api/v1/me/ -H 'Authorization: Bearer {secret}'",
            "",
        ]
        self.stdout.write("\n".join(lines))


def _demo_plan() -> Plan:
    """Free, with a million tokens a month included; beyond them, list-like prices."""
    plan = Plan.objects.filter(slug=DEMO_PLAN).first()
    if plan is not None:
        return plan
    return plan_create(
        slug=DEMO_PLAN,
        name="Demo",
        monthly_price=Decimal("0"),
        included_tokens=1_000_000,
        prompt_price_per_1k=Decimal("0.0005"),
        completion_price_per_1k=Decimal("0.0015"),
        public=False,
    )
