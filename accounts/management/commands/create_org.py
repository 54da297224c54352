from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import User
from accounts.services import organization_create
from common.errors import APIError


class Command(BaseCommand):
    help = "Creates an organization (tenant)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--name", default="")
        parser.add_argument("--owner", help="Email of an existing user who becomes its owner.")

    def handle(self, *args: Any, **options: Any) -> None:
        owner = None
        if options["owner"]:
            owner = User.objects.filter(email=options["owner"].lower()).first()
            if owner is None:
                raise CommandError(f"No user with email {options['owner']}.")
        try:
            organization = organization_create(slug=options["slug"], name=options["name"], owner=owner)
        except APIError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(organization.slug)
