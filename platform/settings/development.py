"""`make run`: embedded SQLite, in-process cache and tasks unless DATABASE_URL/REDIS_URL are set."""

from __future__ import annotations

from .base import *  # noqa: F403
from .base import SECRET_KEY, env

DEBUG = env.bool("DJANGO_DEBUG", default=True)
SECRET_KEY = SECRET_KEY or "development-only-insecure-secret-key-do-not-deploy"

# The embedded SQLite database and the index folder live here.
VAR_DIR.mkdir(parents=True, exist_ok=True)  # noqa: F405

# Sign-up works out of the box, on a free plan that `migrate` creates.
SIGNUP_ENABLED = env.bool("SIGNUP_ENABLED", default=True)
DEFAULT_PLAN = env.str("DEFAULT_PLAN", default="free")
DEFAULT_PLAN_AUTO_CREATE = env.bool("DEFAULT_PLAN_AUTO_CREATE", default=True)
