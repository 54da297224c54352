"""API key material: generation, the public prefix and the stored hash.

A key is ``sk-`` followed by 48 random base62 characters (about 285 bits). Its first 12
characters are its prefix, stored in clear for lookup and shown in lists; the whole key is
stored only as a SHA-256 digest. A slow password hash would add nothing: the secret is random
and long, not a human password, and hashing runs on every request."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string

KEY_PREFIX = "sk-"
_ALPHABET = string.ascii_letters + string.digits
_RANDOM_LENGTH = 48
PREFIX_LENGTH = 12


def generate_key() -> str:
    return KEY_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_LENGTH))


def key_prefix(raw_key: str) -> str:
    return raw_key[:PREFIX_LENGTH]


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def looks_like_api_key(raw: str) -> bool:
    return raw.startswith(KEY_PREFIX) and len(raw) == len(KEY_PREFIX) + _RANDOM_LENGTH


def key_matches(*, raw_key: str, secret_hash: str) -> bool:
    return hmac.compare_digest(hash_key(raw_key), secret_hash)
