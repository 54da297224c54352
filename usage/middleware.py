"""Stages two and three of the API pipeline, after authentication:

* `TokenCountingMiddleware` estimates the tokens of a generation request with tiktoken
  (`request.token_estimate`), before the view.
* `RateLimitMiddleware` counts the request against the requests- and tokens-per-minute limits
  (429 when over) and puts the `x-ratelimit-*` headers on every API response. For a view that
  reserves budget (`reserves_budget = True`), the limits are deferred to the reservation, which
  counts them in the same atomic step as the budgets (see `usage.ratelimit`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse

from usage.ratelimit import (
    DeferredLimits,
    LimitState,
    RateLimited,
    defer,
    format_reset,
    requests_hit,
    tokens_hit,
    undefer,
)
from usage.tokens import estimate_request_body


def _set_headers(response: HttpResponse, state: LimitState | None) -> None:
    if state is None:
        return
    response[f"x-ratelimit-limit-{state.kind}"] = str(state.limit)
    response[f"x-ratelimit-remaining-{state.kind}"] = str(state.remaining)
    response[f"x-ratelimit-reset-{state.kind}"] = format_reset(state.reset_seconds)


def _reserves_budget(view_func: Callable[..., Any]) -> bool:
    view_class = getattr(view_func, "view_class", None) or getattr(view_func, "cls", None)
    return bool(getattr(view_class, "reserves_budget", False))


class RateLimitMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.limit_states = {}  # type: ignore[attr-defined]
        request.deferred_limits = None  # type: ignore[attr-defined]
        try:
            response = self.get_response(request)
        finally:
            token = getattr(request, "_deferred_token", None)
            if token is not None:
                undefer(token)
        context = getattr(request, "auth_context", None)
        if context is None:
            return response
        states: dict[str, LimitState | None] = request.limit_states  # type: ignore[attr-defined]
        deferred: DeferredLimits | None = request.deferred_limits  # type: ignore[attr-defined]
        if deferred is not None:
            deferred.settle_uncounted()
            states = deferred.states
        if "tokens" not in states:
            states["tokens"] = tokens_hit(context=context, tokens=0)
        _set_headers(response, states.get("requests"))
        _set_headers(response, states.get("tokens"))
        return response

    def process_view(
        self, request: HttpRequest, view_func: Callable[..., Any], args: Any, kwargs: Any
    ) -> HttpResponse | None:
        context = getattr(request, "auth_context", None)
        if context is None:
            return None
        estimate = getattr(request, "token_estimate", None)
        tokens = estimate.total if estimate is not None else 0
        if _reserves_budget(view_func):
            deferred = DeferredLimits(request=request, context=context, tokens=tokens)
            request.deferred_limits = deferred  # type: ignore[attr-defined]
            request._deferred_token = defer(deferred)  # type: ignore[attr-defined]
            return None
        states: dict[str, LimitState | None] = request.limit_states  # type: ignore[attr-defined]
        states["requests"] = requests_hit(request=request, context=context)
        if states["requests"] is not None and states["requests"].exceeded:
            return RateLimited(states["requests"]).to_response()
        if estimate is not None:
            states["tokens"] = tokens_hit(context=context, tokens=tokens)
            if states["tokens"] is not None and states["tokens"].exceeded:
                return RateLimited(states["tokens"]).to_response()
        return None


class TokenCountingMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        context = getattr(request, "auth_context", None)
        request.token_estimate = None  # type: ignore[attr-defined]
        if context is not None and request.method == "POST" and request.content_type == "application/json":
            request.token_estimate = estimate_request_body(request.body)  # type: ignore[attr-defined]
        return self.get_response(request)
