from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import User
from accounts.scopes import ALL_SCOPES
from accounts.selectors import organization_get_by_slug
from accounts.services import api_key_create
from common.errors import APIError


class Command(BaseCommand):
    help = "Creates an API key and prints it alone on the last line (it is shown only once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True, help="Organization slug.")
        parser.add_argument("--user", help="Email of the member the key acts for.")
        parser.add_argument("--name", default="cli")
        parser.add_argument(
            "--scopes",
            nargs="+",
            choices=ALL_SCOPES,
            help="Default: the member's role's scopes (every scope for an organization-wide key).",
        )
        parser.add_argument("--expires-in-days", type=int)

    def handle(self, *args: Any, **options: Any) -> None:
        organization = organization_get_by_slug(slug=options["org"])
        if organization is None:
            raise CommandError(f"No organization with slug {options['org']}.")
        user = None
        if options["user"]:
            user = User.objects.filter(email=options["user"].lower()).first()
            if user is None:
                raise CommandError(f"No user with email {options['user']}.")
        try:
            api_key, secret = api_key_create(
                organization=organization,
                name=options["name"],
                user=user,
                scopes=options["scopes"],
                expires_in_days=options["expires_in_days"],
            )
        except APIError as exc:
            raise CommandError(exc.message) from exc
        self.stderr.write(
            f"Created key {api_key.prefix}… for {organization.slug} with scopes {', '.join(api_key.scopes)}."
        )
        self.stdout.write(secret)
