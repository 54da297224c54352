"""Sign-in throttling: failed attempts at `/api/v1/auth/token/` (email and password) and
`/oauth/token/` (client id and secret), counted per client address and per account.

An attempt takes a slot on its address's counter (`AUTH_THROTTLE_IP_FAILURES` per window,
both endpoints together) and on its account's (`AUTH_THROTTLE_ACCOUNT_FAILURES`) before its
credentials are checked, and gives them back unless the credentials were wrong. Taking the
slot first bounds the password checks that concurrent attempts can run, not just the ones
counted after the fact. Over either limit the attempt is refused with a 429 and `Retry-After`,
without checking anything. Counters live in the shared cache (Redis with several processes), in
fixed windows of `AUTH_THROTTLE_WINDOW_SECONDS`.

The client address is `REMOTE_ADDR`, unless DRF's `NUM_PROXIES` says how many proxies in front
append to `X-Forwarded-For` (a header any client can otherwise forge, one address per attempt).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.cache import cache
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

from common.errors import APIError


def window_seconds() -> int:
    return max(1, settings.AUTH_THROTTLE_WINDOW_SECONDS)


def account_limit() -> int:
    return int(settings.AUTH_THROTTLE_ACCOUNT_FAILURES)


def ip_limit() -> int:
    return int(settings.AUTH_THROTTLE_IP_FAILURES)


class SignInThrottled(APIError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


def client_ip(request: Any) -> str:
    if api_settings.NUM_PROXIES:
        return str(BaseThrottle().get_ident(request))
    return str(request.META.get("REMOTE_ADDR", ""))


def _counter_key(kind: str, identity: str, window: int) -> str:
    digest = hashlib.sha256(identity.encode()).hexdigest()[:32]  # no address or email in Redis
    return f"auth:signin-failures:{kind}:{digest}:{window}"


@dataclass
class SignInAttempt:
    """The slots an attempt holds; `release` gives them back (the credentials were right, or
    were never checked)."""

    keys: list[str] = field(default_factory=list)

    def release(self) -> None:
        for key in self.keys:
            with contextlib.suppress(ValueError):  # the window ended: its count is gone anyway
                cache.decr(key)
        self.keys.clear()


def _take(attempt: SignInAttempt, key: str, limit: int, timeout: int) -> bool:
    cache.add(key, 0, timeout=timeout)
    try:
        taken = cache.incr(key)
    except ValueError:  # expired between the two calls: this window is over
        return True
    attempt.keys.append(key)
    return taken <= limit


def sign_in_attempt(*, ip: str, account_kind: str, account: str) -> SignInAttempt:
    """Takes the attempt's slots, or raises `SignInThrottled` (holding none). `account_kind`
    names the field that carries the account ("email", "client_id"); an empty `account` is
    counted against the address only."""
    now = time.time()
    length = window_seconds()
    window = int(now // length)
    retry_after = max(1, math.ceil((window + 1) * length - now))
    timeout = length + 1
    attempt = SignInAttempt()
    if not _take(attempt, _counter_key("ip", ip, window), ip_limit(), timeout):
        attempt.release()
        raise SignInThrottled(
            f"Too many failed sign-in attempts from your address. Try again in {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
        )
    identity = account.strip().lower()
    if identity and not _take(
        attempt, _counter_key(account_kind, identity, window), account_limit(), timeout
    ):
        attempt.release()
        raise SignInThrottled(
            f"Too many failed sign-in attempts for this account. Try again in {retry_after} s.",
            param=account_kind,
            headers={"Retry-After": str(retry_after)},
        )
    return attempt
