from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from common.sealed import SealedSecretUnreadable
from webhooks.services import secrets_reseal


class Command(BaseCommand):
    help = (
        "Seals every webhook endpoint's signing secret again under the current DJANGO_SECRET_KEY "
        "(after a rotation, while the old key is still in DJANGO_SECRET_KEY_FALLBACKS); then the "
        "old key can be dropped. Running it again changes nothing but the ciphertexts."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            count = secrets_reseal()
        except SealedSecretUnreadable as exc:
            raise CommandError(f"{exc}: nothing was changed.") from exc
        self.stdout.write(f"{count} webhook secrets sealed under the current key.")
