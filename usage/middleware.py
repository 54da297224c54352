"""Admission: the API pipeline's stages after authentication, before the view does any work.

For a route that declares its cost (`usage.admission.RouteCost`), `AdmissionMiddleware` reads
the JSON body, estimates its tokens (`request_notes(request).estimate`) and reserves them on
every budget that applies, counting the requests- and tokens-per-minute limits in the same
atomic step (one Redis round trip): 429 or 503 before the view runs. The reservation reaches
the view as `request_notes(request).reservation`; the view claims it when it takes the request
on, and one it never claimed (the view refused the request: bad input, unknown model) is
cancelled when the response leaves, costing nothing. Other routes count their requests per
minute. Every API response carries the `x-ratelimit-*` headers."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from accounts.context import AuthContext
from common.errors import APIError, internal_error_response
from common.metrics import ADMISSIONS
from common.redis_spans import redis_spans_fold, redis_spans_unfold
from common.request_notes import RequestNotes, request_notes
from common.shared_redis import REDIS_ERRORS, shared_redis_configured
from common.spans import span_finished
from usage.admission import RouteCost, route_cost
from usage.ratelimit import LimitState, LimitWindows, RateLimited, format_reset, requests_hit, tokens_hit
from usage.services import quota_reserve
from usage.tokens import TokenEstimate

logger = logging.getLogger(__name__)


def _set_headers(response: HttpResponse, state: LimitState | None) -> None:
    if state is None:
        return
    response[f"x-ratelimit-limit-{state.kind}"] = str(state.limit)
    response[f"x-ratelimit-remaining-{state.kind}"] = str(state.remaining)
    response[f"x-ratelimit-reset-{state.kind}"] = format_reset(state.reset_seconds)


def _json_body(request: HttpRequest) -> dict[str, Any] | None:
    if request.content_type != "application/json":
        return None
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None  # the view answers it with a 400
    return body if isinstance(body, dict) else None


def _may_call(context: AuthContext, view_func: Callable[..., Any]) -> bool:
    view_class = getattr(view_func, "view_class", None) or getattr(view_func, "cls", None)
    scope = getattr(view_class, "required_scope", None)
    return not isinstance(scope, str) or context.has_scope(scope)


_OUTCOMES = {"rate_limit_exceeded": "rate_limited"}


def _decided(notes: RequestNotes, outcome: str) -> None:
    notes.admission = _OUTCOMES.get(outcome, outcome)
    ADMISSIONS.labels(notes.admission).inc()


class AdmissionMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        notes = request_notes(request)
        context = notes.auth
        if context is None:
            return response
        reservation = notes.reservation
        if reservation is not None and not reservation.claimed:
            reservation.cancel()
        try:
            if "tokens" not in notes.limits:
                notes.limits["tokens"] = tokens_hit(context=context, tokens=0)
        except REDIS_ERRORS as exc:
            logger.warning("No x-ratelimit-tokens headers: %s", exc)
        _set_headers(response, notes.limits.get("requests"))
        _set_headers(response, notes.limits.get("tokens"))
        return response

    def process_view(
        self, request: HttpRequest, view_func: Callable[..., Any], args: Any, kwargs: Any
    ) -> HttpResponse | None:
        notes = request_notes(request)
        context = notes.auth
        if context is None:
            return None
        cost = route_cost(view_func)
        if cost is not None and not _may_call(context, view_func):
            cost = None  # its 403 costs nothing but the request it is
        body = notes.json_body = _json_body(request) if cost is not None else None
        estimate = cost.estimate(body) if cost is not None and body is not None else None
        if cost is None or body is None or estimate is None:
            return self._count_requests(request, notes)
        # Admission is one Redis script (or the in-memory ledger's lock): its span stands for
        # that call, which makes no span of its own. Nothing runs under it, so it is made once
        # the outcome is known, with its start time and every attribute at once (each span,
        # each context switch and each attribute set later costs; BENCHMARKS.md, issue 15).
        started_ns = time.time_ns()
        folded = redis_spans_fold()
        try:
            refused = self._admit(request, notes, context=context, cost=cost, body=body, estimate=estimate)
        except Exception as exc:
            span_finished("admission", start_ns=started_ns, attributes={}, scope=__name__, error=exc)
            raise
        finally:
            redis_spans_unfold(folded)
        if trace.get_current_span().is_recording():  # the request's trace is recorded
            attributes: dict[str, AttributeValue] = {
                "llmp.admission.outcome": notes.admission or "",
                "llmp.tokens.estimated": estimate.total,
            }
            if shared_redis_configured():
                attributes["db.system"] = "redis"
            span_finished("admission", start_ns=started_ns, attributes=attributes, scope=__name__)
        return refused

    def _admit(
        self,
        request: HttpRequest,
        notes: RequestNotes,
        *,
        context: AuthContext,
        cost: RouteCost,
        body: dict[str, Any],
        estimate: TokenEstimate,
    ) -> HttpResponse | None:
        notes.estimate = estimate
        limits = LimitWindows(
            request=request, context=context, tokens=estimate.total, route_limit=cost.requests_limit
        )
        try:
            notes.reservation = quota_reserve(
                context=context,
                end_user=cost.end_user(body),
                endpoint=cost.endpoint,
                model=cost.model(body) if cost.model is not None else "",
                request_id=notes.request_id,
                amount=estimate.total,
                prompt_tokens=estimate.prompt_tokens,
                queued_for_seconds=settings.JOB_MAX_WAIT_SECONDS if cost.queued else None,
                limits=limits,
            )
        except APIError as error:
            notes.limits.update(limits.states)
            _decided(
                notes,
                error.code if error.code in ("rate_limit_exceeded", "insufficient_quota") else "refused",
            )
            return error.to_response()
        except REDIS_ERRORS as exc:
            _decided(notes, "unavailable")
            logger.warning("Admission could not reach the shared store: %r", exc)
            # 503: nothing held (a hold Redis made before it failed is withdrawn: quota_reserve)
            return internal_error_response(exc)
        notes.limits.update(limits.states)
        _decided(notes, "admitted")
        return None

    def _count_requests(self, request: HttpRequest, notes: RequestNotes) -> HttpResponse | None:
        assert notes.auth is not None
        state = notes.limits["requests"] = requests_hit(request=request, context=notes.auth)
        if state is not None and state.exceeded:
            return RateLimited(state).to_response()
        return None
