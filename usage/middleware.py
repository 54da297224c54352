"""Stages two and three of the API pipeline, after authentication:

* `RateLimitMiddleware` counts the request against the requests-per-minute limits (429 when
  over) and puts the `x-ratelimit-*` headers on every API response.
* `TokenCountingMiddleware` estimates the tokens of a generation request with tiktoken
  (`request.token_estimate`), and counts them against the tokens-per-minute limits.

Budgets are reserved later, by the view, once it knows the exact request (see
`usage.services.quota_reserve`)."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from common.errors import error_response
from usage.ratelimit import LimitState, format_reset, requests_hit, tokens_hit
from usage.tokens import estimate_request_body


def _rate_limited(state: LimitState) -> HttpResponse:
    owner = "API key" if state.owner == "key" else "organization"
    unit = "requests" if state.kind == "requests" else "tokens"
    response = error_response(
        status=429,
        message=(
            f"Rate limit reached for your {owner}: {state.limit} {unit} per minute. "
            f"Try again in {format_reset(state.reset_seconds)}."
        ),
        type=state.kind,
        code="rate_limit_exceeded",
    )
    response["Retry-After"] = str(max(1, state.reset_seconds))
    return response


def _set_headers(response: HttpResponse, state: LimitState | None) -> None:
    if state is None:
        return
    response[f"x-ratelimit-limit-{state.kind}"] = str(state.limit)
    response[f"x-ratelimit-remaining-{state.kind}"] = str(state.remaining)
    response[f"x-ratelimit-reset-{state.kind}"] = format_reset(state.reset_seconds)


class RateLimitMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        context = getattr(request, "auth_context", None)
        request.token_limit_state = None  # type: ignore[attr-defined]
        if context is None:
            return self.get_response(request)
        requests_state = requests_hit(request=request, context=context)
        if requests_state is not None and requests_state.exceeded:
            response = _rate_limited(requests_state)
        else:
            response = self.get_response(request)
        _set_headers(response, requests_state)
        tokens_state = getattr(request, "token_limit_state", None)
        if tokens_state is None:
            tokens_state = tokens_hit(context=context, tokens=0)
        _set_headers(response, tokens_state)
        return response


class TokenCountingMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        context = getattr(request, "auth_context", None)
        request.token_estimate = None  # type: ignore[attr-defined]
        if context is None or request.method != "POST" or request.content_type != "application/json":
            return self.get_response(request)
        estimate = estimate_request_body(request.body)
        request.token_estimate = estimate  # type: ignore[attr-defined]
        if estimate is not None:
            state = tokens_hit(context=context, tokens=estimate.total)
            request.token_limit_state = state  # type: ignore[attr-defined]
            if state is not None and state.exceeded:
                return _rate_limited(state)
        return self.get_response(request)
