from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import Organization
from common.progress import progress
from knowledge.indexes import index_rebuild


class Command(BaseCommand):
    help = "Rebuilds FAISS indexes from the chunks in the database (all organizations, or one)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", help="Organization slug; every organization when left out.")

    def handle(self, *args: Any, **options: Any) -> None:
        organizations = Organization.objects.all()
        if options["org"]:
            organizations = organizations.filter(slug=options["org"])
            if not organizations.exists():
                raise CommandError(f"No organization with slug {options['org']}.")
        for organization in progress(organizations, total=organizations.count(), label="rebuild_index"):
            count = index_rebuild(organization=organization)
            self.stdout.write(f"{organization.slug}: {count} vectors")
