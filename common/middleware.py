from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string
from opentelemetry import trace

from common import after_response
from common.errors import error_response, internal_error_response, is_api_path
from common.logging import request_id_var
from common.metrics import REQUEST_LATENCY, REQUESTS
from common.request_notes import request_notes
from common.tracing import current_ids, server_span_end, server_span_start

logger = logging.getLogger("platform.request")

# A client's request id is echoed and logged, never used as a key: short and plain, or replaced.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

_MESSAGES_BY_STATUS = {
    400: "The request is malformed.",
    401: "Authentication is required.",
    403: "You are not allowed to perform this request.",
    404: "The requested resource does not exist.",
    405: "This method is not allowed on this route.",
    413: "The request body is too large.",
}


access_logger = logging.getLogger("platform.access")


def _log_request(
    request: HttpRequest,
    response: HttpResponse,
    *,
    route: str,
    request_id: str,
    trace_id: str | None,
    seconds: float,
) -> None:
    """One JSON line per request (`platform.access`, at INFO): who, what, how it went."""
    notes = request_notes(request)
    auth, reservation = notes.auth, notes.reservation
    access_logger.info(
        "%s %s %s",
        request.method,
        request.path,
        response.status_code,
        extra={
            "request_id": request_id,
            "trace_id": trace_id,
            "method": request.method,
            "route": route,
            "status": response.status_code,
            "duration_ms": round(seconds * 1000, 3),
            "organization_id": auth.organization.pk if auth is not None else None,
            "key_prefix": auth.api_key.prefix if auth is not None and auth.api_key is not None else None,
            "tokens_held": reservation.amount if reservation is not None else None,
            "admission": notes.admission,
        },
    )


class RequestIDMiddleware:
    """Gives every request an id (the client's X-Request-ID when it is sane), puts it in the
    logs and on the response, records Prometheus metrics and, with tracing on, the request's
    server span (outermost, so that every log line of the request carries its trace id)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        server_span = server_span_start(request)
        response: HttpResponse | None = None
        route: str | None = None
        try:
            response = self._serve(request, started=started)
            match = getattr(request, "resolver_match", None)
            route = match.route if match is not None else None
            return response
        finally:
            if server_span is not None:
                server_span_end(
                    server_span, route=route, status=response.status_code if response is not None else None
                )

    def _serve(self, request: HttpRequest, *, started: float) -> HttpResponse:
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _SANE_REQUEST_ID.match(incoming) else f"req_{uuid.uuid4().hex}"
        request_notes(request).request_id = request_id
        token = request_id_var.set(request_id)
        deferred = after_response.collect()
        try:
            response = self.get_response(request)
            after_response.attach(deferred, response)
        finally:
            request_id_var.reset(token)
        response["X-Request-ID"] = request_id
        match = getattr(request, "resolver_match", None)
        route = match.route if match is not None else "unmatched"
        elapsed = time.perf_counter() - started
        REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        REQUEST_LATENCY.labels(route).observe(elapsed)
        if access_logger.isEnabledFor(logging.INFO):
            ids = current_ids()
            _log_request(
                request,
                response,
                route=route,
                request_id=request_id,
                trace_id=ids[0] if ids else None,
                seconds=elapsed,
            )
        return response


class APIErrorMiddleware:
    """Under /api/ and /v1/, no HTML error page and no traceback, ever: exceptions become a JSON
    500 and non-JSON error responses (Django's own 404/405/400 pages) are reshaped."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            response.status_code >= 400
            and is_api_path(request.path)
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            status = response.status_code
            if status >= 500:
                return internal_error_response()
            reshaped = error_response(
                status=status,
                message=_MESSAGES_BY_STATUS.get(status, "The request failed."),
                code="unknown_url" if status == 404 else None,
            )
            if "Allow" in response:
                reshaped["Allow"] = response["Allow"]
            return reshaped
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        # On the server span (a no-op when the request is not traced).
        trace.get_current_span().record_exception(exception)
        if not is_api_path(request.path):
            return None
        logger.exception("Unhandled error on %s %s", request.method, request.path)
        return internal_error_response(exception)


class SiteMiddleware:
    """Django's middlewares for the admin and the HTML pages (`settings.SITE_MIDDLEWARE`: static
    files, sessions, CSRF, login, messages, clickjacking), applied to every request outside the
    API. API requests authenticate by header, never by cookie, so they skip the whole stack:
    no session or CSRF work on the hot path, and an admin's cookie cannot act on the API."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        handler: Callable[[HttpRequest], Any] = get_response
        self._view_hooks: list[Callable[..., HttpResponse | None]] = []
        for path in reversed(settings.SITE_MIDDLEWARE):
            instance = import_string(path)(handler)
            if hasattr(instance, "process_view"):
                self._view_hooks.insert(0, instance.process_view)
            handler = convert_exception_to_response(instance)
        self._site = handler

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if is_api_path(request.path):
            return self.get_response(request)
        return self._site(request)

    def process_view(
        self, request: HttpRequest, view_func: Callable[..., Any], args: Any, kwargs: Any
    ) -> HttpResponse | None:
        if is_api_path(request.path):
            return None
        for hook in self._view_hooks:
            response = hook(request, view_func, args, kwargs)
            if response is not None:
                return response
        return None
