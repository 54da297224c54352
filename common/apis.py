"""Probes for orchestrators and monitoring: /healthz, /readyz, /metrics."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from common.errors import error_response
from common.metrics import SHARED_STATE_COLLECTORS, multiprocess_dir, multiprocess_registry


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # a readiness probe reports any failure, whatever its class
        return f"{type(exc).__name__}: {exc}"
    return None


def _check_cache() -> str | None:
    try:
        cache.set("readyz", "1", timeout=5)
        if cache.get("readyz") != "1":
            return "cache did not return what was written"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _check_broker() -> str | None:
    if not settings.CELERY_BROKER_URL:
        return None
    from platform.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    checks = {
        "database": _check_database(),
        "cache": _check_cache(),
        "broker": _check_broker() if settings.CELERY_BROKER_URL else "not configured",
    }
    failed = {name: error for name, error in checks.items() if error and error != "not configured"}
    body = {
        "status": "ok" if not failed else "unavailable",
        "checks": {name: (error or "ok") for name, error in checks.items()},
    }
    return JsonResponse(body, status=200 if not failed else 503)


def _may_scrape(request: HttpRequest) -> bool:
    """An allow-listed address (`METRICS_ALLOWED_ADDRESSES`, loopback by default), or the bearer
    token `METRICS_TOKEN`: counts per route and tenant activity are not for everyone."""
    if request.META.get("REMOTE_ADDR") in settings.METRICS_ALLOWED_ADDRESSES:
        return True
    token = settings.METRICS_TOKEN
    sent = request.headers.get("Authorization", "")
    return bool(token) and hmac.compare_digest(sent.encode(), f"Bearer {token}".encode())


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not _may_scrape(request):
        return error_response(
            status=401,
            message="Metrics need 'Authorization: Bearer <METRICS_TOKEN>' or an allow-listed address.",
            type="authentication_error",
            code="invalid_metrics_token",
        )
    path = multiprocess_dir()
    registry = multiprocess_registry(path=path) if path else REGISTRY
    shared = CollectorRegistry()
    for collector in SHARED_STATE_COLLECTORS:
        shared.register(collector)
    return HttpResponse(generate_latest(registry) + generate_latest(shared), content_type=CONTENT_TYPE_LATEST)
