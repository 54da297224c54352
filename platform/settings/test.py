"""pytest: the production code paths, on PostgreSQL and Redis when DATABASE_URL and REDIS_URL are
set (as CI does), on SQLite and local memory otherwise."""

from __future__ import annotations

from .base import *  # noqa: F403
from .base import SECRET_KEY

SECRET_KEY = SECRET_KEY or "test-only-secret-key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
