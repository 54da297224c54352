"""Requests and tokens per minute, per API key and per organization, on the shared cache.

The windows and counter keys are django-ratelimit's (`_get_window`, `_make_cache_key`): a fixed
one-minute window per subject, counted in the shared cache, so a limit holds exactly whatever
the number of processes. Without Redis, counting goes through django-ratelimit's `get_usage`
on the local cache. On Redis, `get_usage` would cost three round trips per limit (add, exists,
incrby); here every limit of a request is counted in one pipelined round trip instead."""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from django_ratelimit.core import ALL, _get_window, _make_cache_key, get_usage

from accounts.context import AuthContext

WINDOW_SECONDS = 60
_EXPIRY = WINDOW_SECONDS + 60


@dataclass(frozen=True)
class LimitState:
    kind: str  # "requests" | "tokens"
    limit: int
    remaining: int
    reset_seconds: int
    exceeded: bool
    owner: str  # "key" | "organization"


@dataclass(frozen=True)
class _Limit:
    owner: str
    subject: str
    limit: int
    cache_key: str
    window: int


def _limits(context: AuthContext, kind: str) -> list[_Limit]:
    field = "requests_per_minute" if kind == "requests" else "tokens_per_minute"
    found: list[tuple[str, str, int]] = []
    key = context.api_key
    if key is not None and getattr(key, field) is not None:
        found.append(("key", f"key:{key.pk}", int(getattr(key, field))))
    org_limit = getattr(context.organization, field)
    if org_limit is not None:
        found.append(("organization", f"org:{context.organization.pk}", int(org_limit)))
    group = "rpm" if kind == "requests" else "tpm"
    limits = []
    for owner, subject, limit in found:
        window = _get_window(subject, WINDOW_SECONDS)
        cache_key = _make_cache_key(group, window, (limit, WINDOW_SECONDS), subject, ALL)
        limits.append(_Limit(owner, subject, limit, f"{settings.CACHE_KEY_PREFIX}:{cache_key}", window))
    return limits


def _redis_add(limits: list[_Limit], amount: int) -> list[int]:
    from usage.services import redis_client

    pipe = redis_client().pipeline(transaction=False)
    for limit in limits:
        pipe.incrby(limit.cache_key, amount)
        pipe.expire(limit.cache_key, _EXPIRY, nx=True)
    return [int(count) for count in pipe.execute()[0::2]]


def _redis_remove(limits: list[_Limit], amount: int) -> None:
    from usage.services import redis_client

    pipe = redis_client().pipeline(transaction=False)
    for limit in limits:
        pipe.decrby(limit.cache_key, amount)
    pipe.execute()


def _state(kind: str, limit: _Limit, count: int, now: float) -> LimitState:
    return LimitState(
        kind=kind,
        limit=limit.limit,
        remaining=max(0, limit.limit - count),
        reset_seconds=max(0, limit.window - int(now)),
        exceeded=count > limit.limit,
        owner=limit.owner,
    )


def _tightest(states: list[LimitState]) -> LimitState | None:
    if not states:
        return None
    exceeded = [s for s in states if s.exceeded]
    return exceeded[0] if exceeded else min(states, key=lambda s: s.remaining)


def requests_hit(*, request: HttpRequest, context: AuthContext) -> LimitState | None:
    """Counts this request against every requests-per-minute limit that applies."""
    limits = _limits(context, "requests")
    if not limits:
        return None
    now = time.time()
    if settings.REDIS_URL:
        counts = _redis_add(limits, 1)
    else:
        counts = []
        for limit in limits:
            usage = get_usage(
                request,
                group="rpm",
                key=lambda _g, _r, s=limit.subject: s,
                rate=(limit.limit, WINDOW_SECONDS),
                increment=True,
            )
            counts.append(int(usage["count"]) if usage else 0)
    return _tightest(
        [_state("requests", limit, count, now) for limit, count in zip(limits, counts, strict=True)]
    )


def tokens_hit(*, context: AuthContext, tokens: int) -> LimitState | None:
    """Adds `tokens` to every tokens-per-minute limit that applies, unless one of them would
    overflow: then nothing stays added and the overflowing limit is returned as exceeded."""
    limits = _limits(context, "tokens")
    if not limits:
        return None
    now = time.time()
    if settings.REDIS_URL:
        counts = _redis_add(limits, tokens)
    else:
        counts = []
        for limit in limits:
            cache.add(limit.cache_key, 0, _EXPIRY)
            counts.append(
                int(cache.incr(limit.cache_key, tokens)) if tokens else int(cache.get(limit.cache_key, 0))
            )
    states = [_state("tokens", limit, count, now) for limit, count in zip(limits, counts, strict=True)]
    refused = next((i for i, s in enumerate(states) if s.exceeded), None)
    if refused is not None and tokens:
        if settings.REDIS_URL:
            _redis_remove(limits, tokens)
        else:
            for limit in limits:
                cache.decr(limit.cache_key, tokens)
        after_rollback = _state("tokens", limits[refused], counts[refused] - tokens, now)
        return LimitState(
            "tokens",
            after_rollback.limit,
            after_rollback.remaining,
            after_rollback.reset_seconds,
            True,
            after_rollback.owner,
        )
    return _tightest(states)


def format_reset(seconds: int) -> str:
    minutes, secs = divmod(max(0, seconds), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
