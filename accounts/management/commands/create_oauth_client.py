from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.scopes import ALL_SCOPES
from accounts.selectors import organization_get_by_slug
from accounts.services import oauth_client_create


class Command(BaseCommand):
    help = "Creates an OAuth2 client-credentials application for an organization."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True)
        parser.add_argument("--name", default="oauth-client")
        parser.add_argument("--scopes", nargs="+", choices=ALL_SCOPES)

    def handle(self, *args: Any, **options: Any) -> None:
        organization = organization_get_by_slug(slug=options["org"])
        if organization is None:
            raise CommandError(f"No organization with slug {options['org']}.")
        _client, client_id, secret = oauth_client_create(
            organization=organization, name=options["name"], scopes=options["scopes"]
        )
        self.stdout.write(f"client_id={client_id}")
        self.stdout.write(f"client_secret={secret}")
