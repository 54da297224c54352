"""Requests and tokens per minute, per API key and per organization, on the shared cache.

Requests are counted by django-ratelimit (`get_usage`); tokens use its window and cache-key
scheme with an increment of the request's token estimate. Each limit is a fixed one-minute
window counted in the shared cache, so it holds exactly whatever the number of processes."""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.core.cache import cache
from django.http import HttpRequest
from django_ratelimit.core import ALL, _get_window, _make_cache_key, get_usage

from accounts.context import AuthContext

WINDOW_SECONDS = 60


@dataclass(frozen=True)
class LimitState:
    kind: str  # "requests" | "tokens"
    limit: int
    remaining: int
    reset_seconds: int
    exceeded: bool
    owner: str  # "key" | "organization"


def _limits(context: AuthContext, kind: str) -> list[tuple[str, str, int]]:
    """(owner, subject, limit) for each limit of this kind that applies."""
    field = "requests_per_minute" if kind == "requests" else "tokens_per_minute"
    found = []
    key = context.api_key
    if key is not None and getattr(key, field) is not None:
        found.append(("key", f"key:{key.pk}", int(getattr(key, field))))
    org_limit = getattr(context.organization, field)
    if org_limit is not None:
        found.append(("organization", f"org:{context.organization.pk}", int(org_limit)))
    return found


def _tightest(states: list[LimitState]) -> LimitState | None:
    if not states:
        return None
    exceeded = [s for s in states if s.exceeded]
    if exceeded:
        return exceeded[0]
    return min(states, key=lambda s: s.remaining)


def requests_hit(*, request: HttpRequest, context: AuthContext) -> LimitState | None:
    """Counts this request against every requests-per-minute limit that applies."""
    states = []
    for owner, subject, limit in _limits(context, "requests"):
        usage = get_usage(
            request,
            group="rpm",
            key=lambda _group, _request, subject=subject: subject,
            rate=(limit, WINDOW_SECONDS),
            increment=True,
        )
        if usage is None:
            continue
        states.append(
            LimitState(
                kind="requests",
                limit=limit,
                remaining=max(0, limit - usage["count"]),
                reset_seconds=max(0, usage["time_left"]),
                exceeded=usage["should_limit"],
                owner=owner,
            )
        )
    return _tightest(states)


def _token_cache_key(subject: str, limit: int) -> tuple[str, int]:
    window = _get_window(subject, WINDOW_SECONDS)
    return _make_cache_key("tpm", window, (limit, WINDOW_SECONDS), subject, ALL), window


def tokens_hit(*, context: AuthContext, tokens: int) -> LimitState | None:
    """Adds `tokens` to every tokens-per-minute limit that applies, unless one of them would
    overflow: then nothing is added and the overflowing limit is returned as exceeded."""
    charged: list[str] = []
    states = []
    for owner, subject, limit in _limits(context, "tokens"):
        cache_key, window = _token_cache_key(subject, limit)
        cache.add(cache_key, 0, WINDOW_SECONDS + 60)
        count = cache.incr(cache_key, tokens) if tokens else int(cache.get(cache_key, 0))
        reset = max(0, window - int(time.time()))
        if count > limit:
            if tokens:
                cache.decr(cache_key, tokens)
            for other in charged:
                cache.decr(other, tokens)
            return LimitState("tokens", limit, max(0, limit - count + tokens), reset, True, owner)
        if tokens:
            charged.append(cache_key)
        states.append(LimitState("tokens", limit, max(0, limit - count), reset, False, owner))
    return _tightest(states)


def format_reset(seconds: int) -> str:
    minutes, secs = divmod(max(0, seconds), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
