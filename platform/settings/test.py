"""pytest: the production code paths, on PostgreSQL and Redis when DATABASE_URL and REDIS_URL are
set (as CI does), on SQLite and local memory otherwise."""

from __future__ import annotations

import os
import uuid

from .base import *  # noqa: F403
from .base import CACHES, SECRET_KEY, VAR_DIR, env

SECRET_KEY = SECRET_KEY or "test-only-secret-key-that-is-long-enough-for-hmac-sha256"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
SIGNUP_ENABLED = env.bool("SIGNUP_ENABLED", default=True)
WEBHOOK_ALLOW_PRIVATE = env.bool("WEBHOOK_ALLOW_PRIVATE", default=True)  # receivers on loopback

# Each test run has its own namespace in the shared Redis, inherited by the servers and workers
# the tests start, so runs never see each other's counters.
CACHE_KEY_PREFIX = os.environ.setdefault("CACHE_KEY_PREFIX", f"test-{uuid.uuid4().hex[:8]}")
if "KEY_PREFIX" in CACHES["default"]:
    CACHES["default"]["KEY_PREFIX"] = CACHE_KEY_PREFIX
# Its own Celery queue too: a worker one run starts never takes another run's tasks.
CELERY_TASK_DEFAULT_QUEUE = CACHE_KEY_PREFIX
VAR_DIR.mkdir(parents=True, exist_ok=True)
(VAR_DIR / "static").mkdir(exist_ok=True)
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    # A file, not memory: live-server threads and the servers the tests start can open it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{CACHE_KEY_PREFIX}.sqlite3")}  # noqa: F405
