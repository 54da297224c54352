"""`make run`: embedded SQLite, in-process cache and tasks unless DATABASE_URL/REDIS_URL are set."""

from __future__ import annotations

from .base import *  # noqa: F403
from .base import SECRET_KEY, env

DEBUG = env.bool("DJANGO_DEBUG", default=True)
SECRET_KEY = SECRET_KEY or "development-only-insecure-secret-key-do-not-deploy"

# The embedded SQLite database and the index folder live here.
VAR_DIR.mkdir(parents=True, exist_ok=True)  # noqa: F405
