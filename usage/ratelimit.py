"""Requests and tokens per minute, per API key and per organization, on the shared cache.

The windows and counter keys are django-ratelimit's (`_get_window`, `_make_cache_key`): a fixed
one-minute window per subject, counted in the shared cache, so a limit holds exactly whatever
the number of processes. Without Redis, counting goes through django-ratelimit's `get_usage`
on the local cache. On Redis, `get_usage` would cost three round trips per limit (add, exists,
incrby); here every limit of a request is counted in one pipelined round trip instead.

A route that reserves budget (generation, embeddings, RAG, jobs) goes further: admission hands
its `LimitWindows` to the reservation, which counts them in the same atomic Redis step as the
budgets (`usage.ledger.RedisLedger.admit`), so admission costs one round trip in all."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from django_ratelimit.core import ALL, _get_window, _make_cache_key, get_usage

from accounts.context import AuthContext
from common.errors import APIError
from common.shared_redis import redis_client, shared_redis_configured
from usage.ledger import Window

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
        limits.append(_Limit(owner, subject, limit, _window_key(context, cache_key), window))
    return limits


def _window_key(context: AuthContext, cache_key: str) -> str:
    """On a Redis Cluster, in the organization's hash slot: admission counts the windows in the
    same script as its budgets (`usage.ledger.keys`)."""
    from usage.services import organization_key_tag

    tag = organization_key_tag(organization_id=context.organization.pk)
    return f"{settings.CACHE_KEY_PREFIX}:{tag}{cache_key}"


def _redis_add(limits: list[_Limit], amount: int) -> list[int]:
    pipe = redis_client().pipeline(transaction=False)
    for limit in limits:
        pipe.incrby(limit.cache_key, amount)
        pipe.expire(limit.cache_key, _EXPIRY, nx=True)
    return [int(count) for count in pipe.execute()[0::2]]


def _redis_remove(limits: list[_Limit], amount: int) -> None:
    pipe = redis_client().pipeline(transaction=False)
    for limit in limits:
        pipe.decrby(limit.cache_key, amount)
    pipe.execute()


def _remove(limits: list[_Limit], amount: int) -> None:
    if shared_redis_configured():
        _redis_remove(limits, amount)
    else:
        for limit in limits:
            cache.decr(limit.cache_key, amount)


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


def _route_limits(context: AuthContext, field: str | None) -> list[_Limit]:
    """A route's own requests-per-minute limit, an organization field (`RouteCost.requests_limit`:
    searches have theirs), counted beside the organization's and the key's."""
    value = getattr(context.organization, field, None) if field else None
    if value is None:
        return []
    subject = f"org:{context.organization.pk}:{field}"
    window = _get_window(subject, WINDOW_SECONDS)
    cache_key = _make_cache_key("rpm", window, (int(value), WINDOW_SECONDS), subject, ALL)
    return [_Limit("organization", subject, int(value), _window_key(context, cache_key), window)]


def requests_hit(
    *, request: HttpRequest, context: AuthContext, route_limit: str | None = None
) -> LimitState | None:
    """Counts this request against every requests-per-minute limit that applies."""
    limits = _limits(context, "requests") + _route_limits(context, route_limit)
    if not limits:
        return None
    now = time.time()
    if shared_redis_configured():
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
    if shared_redis_configured():
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
        _remove(limits, tokens)
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


class RateLimited(APIError):
    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, state: LimitState) -> None:
        owner = "API key" if state.owner == "key" else "organization"
        super().__init__(
            f"Rate limit reached for your {owner}: {state.limit} {state.kind} per minute. "
            f"Try again in {format_reset(state.reset_seconds)}.",
            type=state.kind,
            headers={"Retry-After": str(max(1, state.reset_seconds))},
        )
        self.state = state


@dataclass
class LimitWindows:
    """The requests- and tokens-per-minute limits of one request, counted with its budget
    reservation (`usage.services.quota_reserve`). `states` holds what was counted."""

    request: HttpRequest
    context: AuthContext
    tokens: int
    route_limit: str | None = None
    states: dict[str, LimitState | None] = field(default_factory=dict)
    _requests: list[_Limit] = field(default_factory=list)
    _tokens: list[_Limit] = field(default_factory=list)

    def windows(self) -> list[Window]:
        """The requests and tokens windows, for `RedisLedger.admit`."""
        self._requests = _limits(self.context, "requests") + _route_limits(self.context, self.route_limit)
        self._tokens = _limits(self.context, "tokens")
        return [Window(limit.cache_key, limit.limit, 1, _EXPIRY, False) for limit in self._requests] + [
            Window(limit.cache_key, limit.limit, self.tokens, _EXPIRY, True) for limit in self._tokens
        ]

    def counted_in_redis(self, counts: list[int], refused: int | None) -> None:
        """Takes the counts `admit` returned; raises RateLimited when a window refused."""
        now = time.time()
        split = len(self._requests)
        requests = [
            _state("requests", lim, c, now) for lim, c in zip(self._requests, counts[:split], strict=True)
        ]
        tokens = [_state("tokens", lim, c, now) for lim, c in zip(self._tokens, counts[split:], strict=True)]
        if refused is not None and refused >= split:
            limit, count = self._tokens[refused - split], counts[refused]
            tokens[refused - split] = LimitState(
                "tokens",
                limit.limit,
                max(0, limit.limit - count),
                max(0, limit.window - int(now)),
                True,
                limit.owner,
            )
        self.states = {"requests": _tightest(requests), "tokens": _tightest(tokens)}
        for state in self.states.values():
            if state is not None and state.exceeded:
                raise RateLimited(state)

    def count(self) -> None:
        """Counts the limits on their own (no Redis ledger); raises RateLimited when one
        refuses."""
        self.states["requests"] = requests_hit(
            request=self.request, context=self.context, route_limit=self.route_limit
        )
        if self.states["requests"] is not None and self.states["requests"].exceeded:
            raise RateLimited(self.states["requests"])
        self.states["tokens"] = tokens_hit(context=self.context, tokens=self.tokens)
        if self.states["tokens"] is not None and self.states["tokens"].exceeded:
            raise RateLimited(self.states["tokens"])

    def refund_tokens(self) -> None:
        """The budgets refused after `count()`: the tokens were not admitted after all."""
        state = self.states.get("tokens")
        if state is None or not self.tokens:
            return
        _remove(_limits(self.context, "tokens"), self.tokens)
        self.states["tokens"] = LimitState(
            "tokens",
            state.limit,
            min(state.limit, state.remaining + self.tokens),
            state.reset_seconds,
            False,
            state.owner,
        )
