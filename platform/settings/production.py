"""The web server and Celery in production: PostgreSQL and Redis, a secret key that must be set,
HTTPS only. `manage.py check --deploy` is clean with these settings."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import CELERY_BROKER_URL, REDIS_CLUSTER_NODES, REDIS_URL, SECRET_KEY, env

if not SECRET_KEY:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set in production.")
# Rate limits, budgets and key revocation are shared through Redis; without it each process
# would keep its own, and N processes would grant N times the limits.
if not (REDIS_URL or REDIS_CLUSTER_NODES) and not env.bool("PLATFORM_SINGLE_PROCESS", default=False):
    raise ImproperlyConfigured(
        "REDIS_URL must be set in production (set PLATFORM_SINGLE_PROCESS=true to run one process without it)."
    )
# Celery's broker is never the cluster (kombu cannot use one): without a broker, tasks would run
# in the web process.
if REDIS_CLUSTER_NODES and not CELERY_BROKER_URL:
    raise ImproperlyConfigured(
        "REDIS_CLUSTER_NODES needs CELERY_BROKER_URL (a single Redis or RabbitMQ) or REDIS_URL for Celery."
    )

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=True)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# HTTPS only. Behind a proxy that terminates TLS and sets X-Forwarded-Proto, keep the redirect
# on; turn it off only where the proxy itself redirects. Probes are exempt: orchestrators call
# them over plain HTTP inside the cluster.
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=False)
SILENCED_SYSTEM_CHECKS = [
    *SILENCED_SYSTEM_CHECKS,  # noqa: F405
    # HSTS preload is a commitment for the whole domain (the browsers' list takes months to
    # leave): the operator opts in with DJANGO_SECURE_HSTS_PRELOAD=true.
    "security.W021",
    # Checked on MIDDLEWARE, but the clickjacking and CSRF middlewares run for every page and
    # the admin through SiteMiddleware (SITE_MIDDLEWARE); the API authenticates by header, never
    # by cookie, so CSRF cannot reach it (tests/test_site_middleware.py).
    "security.W002",
    "security.W003",
]
