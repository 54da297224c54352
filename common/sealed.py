"""Secrets the platform has to read back, sealed at rest: a webhook endpoint's signing secret
is needed for every delivery, so it cannot be hashed like an API key, but a copy of the database
alone (a backup, a replica, a dump) should not give it away.

Sealed with Fernet (AES-128-CBC and HMAC-SHA256, from `cryptography`) under a key derived with
HKDF from DJANGO_SECRET_KEY for this use alone. Rotating DJANGO_SECRET_KEY: keep the old one in
DJANGO_SECRET_KEY_FALLBACKS (Django's own list, which signed sessions and tokens honour too)
until `manage.py reseal_secrets` has sealed every value again under the new one."""

from __future__ import annotations

import base64
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

PREFIX = "sealed:v1:"


class SealedSecretUnreadable(Exception):
    """Sealed under a key this deployment no longer has (DJANGO_SECRET_KEY changed without its
    old value in DJANGO_SECRET_KEY_FALLBACKS), or not a sealed value."""


def seal(secret: str) -> str:
    return PREFIX + _fernet(_keys()).encrypt(secret.encode()).decode()


def unseal(sealed: str) -> str:
    if not sealed.startswith(PREFIX):
        raise SealedSecretUnreadable("not a sealed value")
    try:
        return _fernet(_keys()).decrypt(sealed[len(PREFIX) :].encode()).decode()
    except InvalidToken:
        raise SealedSecretUnreadable(
            "sealed under another DJANGO_SECRET_KEY (put the old one in DJANGO_SECRET_KEY_FALLBACKS)"
        ) from None


def reseal(sealed: str) -> str:
    """The same secret sealed under the current key (from the current or a fallback key)."""
    return seal(unseal(sealed))


def _keys() -> tuple[str, ...]:
    return (settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS)


@cache
def _fernet(secret_keys: tuple[str, ...]) -> MultiFernet:
    # The first key seals; every one of them opens.
    return MultiFernet([Fernet(_derive(key)) for key in secret_keys])


def _derive(secret_key: str) -> bytes:
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"llm-platform sealed secrets v1"
    ).derive(secret_key.encode())
    return base64.urlsafe_b64encode(key)
