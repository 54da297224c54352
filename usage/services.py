from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import redis
from django.conf import settings
from django.core.cache import cache as django_cache
from django.db import connection, transaction
from django.utils import timezone

from accounts.context import AuthContext
from accounts.models import BudgetPeriod, EndUserBudget, Organization
from common.errors import APIError
from usage import periods, ratelimit
from usage.ledger import (
    Balance,
    Counter,
    Ledger,
    LocalLedger,
    RedisLedger,
    ReserveRefused,
    Sink,
    WindowRefused,
)
from usage.models import BudgetEvent
from usage.selectors import tokens_used_since

logger = logging.getLogger(__name__)


class QuotaExceeded(APIError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


# --- Which budgets apply ------------------------------------------------------------------


def _counter(
    *, scope: str, subject: str, label: str, limit: int, period: str, organization_id: int, now: datetime
) -> Counter:
    end = periods.period_end(period, now)
    ttl = int((end - now).total_seconds()) + 86_400 if end else 400 * 86_400
    return Counter(
        key=f"{scope}:{subject}:{periods.period_key(period, now)}",
        label=label,
        limit=limit,
        threshold=max(1, int(limit * settings.BUDGET_SOFT_THRESHOLD)),
        ttl_seconds=ttl,
        organization_id=organization_id,
        period=periods.period_key(period, now),
    )


def end_user_budget_get(*, organization: Organization, end_user: str) -> tuple[int, str] | None:
    """The end user's own budget, else the organization's default; cached (set_budget clears it)."""
    cache_key = f"quota:enduser:{organization.pk}:{end_user}"
    cached = django_cache.get(cache_key)
    if cached is None:
        override = EndUserBudget.objects.filter(organization=organization, end_user=end_user).first()
        cached = [override.token_budget, override.budget_period] if override is not None else []
        django_cache.set(cache_key, cached, timeout=settings.API_KEY_CACHE_SECONDS)
    if cached:
        return int(cached[0]), str(cached[1])
    if organization.end_user_token_budget is not None:
        return organization.end_user_token_budget, organization.end_user_budget_period
    return None


def budget_counters(
    *, context: AuthContext, end_user: str | None, now: datetime | None = None
) -> list[Counter]:
    now = now or timezone.now()
    org = context.organization
    counters = []
    if org.token_quota is not None:
        counters.append(
            _counter(
                scope="organization",
                subject=str(org.pk),
                label=f"organization '{org.slug}' token quota",
                limit=org.token_quota,
                period=org.quota_period,
                organization_id=org.pk,
                now=now,
            )
        )
    membership = context.membership
    if membership is not None and membership.token_budget is not None and context.user is not None:
        counters.append(
            _counter(
                scope="member",
                subject=str(context.user.pk),
                label=f"member '{context.user.email}' token budget",
                limit=membership.token_budget,
                period=membership.budget_period,
                organization_id=org.pk,
                now=now,
            )
        )
    key = context.api_key
    if key is not None and key.token_budget is not None:
        counters.append(
            _counter(
                scope="api_key",
                subject=str(key.pk),
                label=f"API key '{key.name}' ({key.prefix}…) token budget",
                limit=key.token_budget,
                period=key.budget_period,
                organization_id=org.pk,
                now=now,
            )
        )
    if end_user:
        found = end_user_budget_get(organization=org, end_user=end_user)
        if found is not None:
            limit, period = found
            counters.append(
                _counter(
                    scope="end_user",
                    subject=end_user,
                    label=f"end user '{end_user}' token budget",
                    limit=limit,
                    period=period,
                    organization_id=org.pk,
                    now=now,
                )
            )
    return counters


def _initial_used(counter: Counter) -> int:
    scope, rest = counter.key.split(":", 1)
    subject, period_key = rest.rsplit(":", 1)
    since: datetime | None = None
    if period_key.startswith("d"):
        since = datetime.strptime(period_key[1:], "%Y-%m-%d").replace(tzinfo=UTC)
    elif period_key.startswith("m"):
        since = datetime.strptime(period_key[1:], "%Y-%m").replace(tzinfo=UTC)
    return tokens_used_since(
        organization_id=counter.organization_id, scope=scope, subject=subject, since=since
    )


# --- The ledger ---------------------------------------------------------------------------


@cache
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


_local_ledger: LocalLedger | None = None


def get_ledger() -> Ledger:
    global _local_ledger
    if settings.REDIS_URL:
        return _redis_ledger(settings.CACHE_KEY_PREFIX)
    if _local_ledger is None:
        _local_ledger = LocalLedger(
            initial_used=_initial_used, sink=Sink(records=usage_records_write, events=budget_events_write)
        )
    return _local_ledger


@cache
def _redis_ledger(prefix: str) -> RedisLedger:
    return RedisLedger(client=redis_client(), prefix=f"{prefix}:q:", initial_used=_initial_used)


@dataclass
class Reservation:
    """Tokens held on every applicable budget for one request. Settle it exactly once: with
    the tokens used, or with nothing on failure. `settle` is idempotent."""

    reservation_id: str
    amount: int
    ledger: Ledger
    started: datetime
    settled: bool = False

    def settle(
        self, *, prompt_tokens: int, completion_tokens: int, status: str = "ok", model: str | None = None
    ) -> None:
        if self.settled:
            return
        self.settled = True
        latency_ms = int((timezone.now() - self.started).total_seconds() * 1000)
        update: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "status": status,
            "latency_ms": latency_ms,
        }
        if model:
            update["model"] = model
        # Never more than was reserved: the budget check admitted this much and no more.
        charged = min(self.amount, prompt_tokens + completion_tokens) if status in ("ok", "cancelled") else 0
        if status not in ("ok", "cancelled"):
            update["prompt_tokens"] = update["completion_tokens"] = 0
        settlement = self.ledger.settle(
            reservation_id=self.reservation_id, record_update=update, tokens=charged
        )
        if settlement is not None:
            for label in settlement.crossed_threshold:
                logger.warning("Budget soft threshold crossed", extra={"budget": label})

    def release(self, *, status: str = "error") -> None:
        self.settle(prompt_tokens=0, completion_tokens=0, status=status)


def quota_reserve(
    *,
    context: AuthContext,
    end_user: str | None,
    endpoint: str,
    model: str,
    request_id: str,
    amount: int,
) -> Reservation:
    """Reserves `amount` tokens on every budget that applies to the caller, all or none.
    Raises QuotaExceeded naming the budget that cannot take it."""
    now = timezone.now()
    counters = budget_counters(context=context, end_user=end_user, now=now)
    ledger = get_ledger()
    reservation_id = f"{request_id}:{uuid.uuid4().hex[:8]}"
    record = {
        "request_id": request_id,
        "organization_id": context.organization.pk,
        "api_key_id": context.api_key.pk if context.api_key else None,
        "user_id": context.user.pk if context.user else None,
        "end_user": end_user or "",
        "endpoint": endpoint,
        "model": model,
        "created_at": now.isoformat(),
    }
    # The request's rate limits, deferred by the middleware, are counted here: with the budgets
    # in one atomic round trip on Redis, on their own before the reservation otherwise.
    limits = ratelimit.deferred_claim(context)
    refused: ReserveRefused | None
    if limits is not None and isinstance(ledger, RedisLedger):
        outcome = ledger.admit(
            reservation_id=reservation_id,
            counters=counters,
            amount=amount,
            record=record,
            ttl_seconds=settings.RESERVATION_TTL_SECONDS,
            windows=limits.windows(),
        )
        limits.counted_in_redis(
            list(outcome.window_counts),
            refused=outcome.index if isinstance(outcome, WindowRefused) else None,
        )
        refused = outcome if isinstance(outcome, ReserveRefused) else None
    else:
        if limits is not None:
            limits.count()
        refused = ledger.reserve(
            reservation_id=reservation_id,
            counters=counters,
            amount=amount,
            record=record,
            ttl_seconds=settings.RESERVATION_TTL_SECONDS,
        )
        if refused is not None and limits is not None:
            limits.refund_tokens()
    if refused is not None:
        remaining = max(0, refused.counter.limit - refused.balance.used - refused.balance.reserved)
        raise QuotaExceeded(
            f"This request needs up to {amount} tokens but the {refused.counter.label} has "
            f"{remaining} left of {refused.counter.limit} this period "
            f"({refused.balance.used} used, {refused.balance.reserved} reserved by requests in flight).",
            param="max_tokens",
        )
    return Reservation(reservation_id=reservation_id, amount=amount, ledger=ledger, started=now)


@dataclass(frozen=True)
class BudgetView:
    scope: str
    name: str
    limit: int
    used: int
    reserved: int
    remaining: int
    period: str
    resets_at: datetime | None


def budget_views(*, context: AuthContext, end_user: str | None = None) -> list[BudgetView]:
    now = timezone.now()
    counters = budget_counters(context=context, end_user=end_user, now=now)
    balances: list[Balance] = get_ledger().balances(counters)
    views = []
    for counter, balance in zip(counters, balances, strict=True):
        period = _period_of(counter)
        views.append(
            BudgetView(
                scope=counter.key.split(":", 1)[0],
                name=counter.label,
                limit=counter.limit,
                used=balance.used,
                reserved=balance.reserved,
                remaining=max(0, counter.limit - balance.used - balance.reserved),
                period=period,
                resets_at=periods.period_end(period, now),
            )
        )
    return views


def _period_of(counter: Counter) -> str:
    if counter.period.startswith("d"):
        return BudgetPeriod.DAY
    if counter.period.startswith("m"):
        return BudgetPeriod.MONTH
    return BudgetPeriod.NONE


# --- Records, rollups, events -------------------------------------------------------------

_ROLLUP_FIELDS = ("organization_id", "day", "model", "api_key_id", "user_id", "end_user", "endpoint")


def usage_records_write(records: Iterable[dict[str, Any]]) -> int:
    """Inserts usage records and adds the new ones (a replayed request id is skipped) to the
    daily rollups, in one transaction. Returns how many were new."""
    rows = []
    for r in records:
        created_at = (
            datetime.fromisoformat(r["created_at"]) if isinstance(r["created_at"], str) else r["created_at"]
        )
        rows.append(
            (
                r["request_id"],
                r["organization_id"],
                r.get("api_key_id"),
                r.get("user_id"),
                r.get("end_user") or "",
                r["endpoint"],
                r["model"],
                int(r.get("prompt_tokens") or 0),
                int(r.get("completion_tokens") or 0),
                int(r.get("latency_ms") or 0),
                r.get("status", "ok"),
                created_at,
            )
        )
    if not rows:
        return 0
    placeholders = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"] * len(rows))
    params = [value for row in rows for value in row]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO usage_usagerecord (request_id, organization_id, api_key_id, user_id, end_user, "
            "endpoint, model, prompt_tokens, completion_tokens, latency_ms, status, created_at) "
            f"VALUES {placeholders} ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
            params,
        )
        inserted = {row[0] for row in cursor.fetchall()}
        groups: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0, 0])
        for row in rows:
            if row[0] not in inserted:
                continue
            created = row[11].astimezone(UTC)
            group = (row[1], created.date(), row[6], row[2] or 0, row[3] or 0, row[4], row[5])
            totals = groups[group]
            totals[0] += 1
            totals[1] += row[7]
            totals[2] += row[8]
        if groups:
            values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"] * len(groups))
            cursor.execute(
                f"INSERT INTO usage_usagedaily ({', '.join(_ROLLUP_FIELDS)}, requests, prompt_tokens, "
                f"completion_tokens) VALUES {values} ON CONFLICT ({', '.join(_ROLLUP_FIELDS)}) DO UPDATE SET "
                "requests = usage_usagedaily.requests + excluded.requests, "
                "prompt_tokens = usage_usagedaily.prompt_tokens + excluded.prompt_tokens, "
                "completion_tokens = usage_usagedaily.completion_tokens + excluded.completion_tokens",
                [v for group, totals in groups.items() for v in (*group, *totals)],
            )
    return len(inserted)


def budget_events_write(events: Iterable[dict[str, Any]]) -> None:
    objs = [
        BudgetEvent(
            organization_id=e["organization_id"],
            kind=e["kind"],
            budget=e["budget"],
            period=e["period"],
            used=e["used"],
            limit=e["limit"],
        )
        for e in events
    ]
    for obj in objs:
        logger.warning(
            "Budget %s: %s (%s of %s tokens, period %s)",
            obj.kind,
            obj.budget,
            obj.used,
            obj.limit,
            obj.period,
            extra={"organization_id": obj.organization_id},
        )
    BudgetEvent.objects.bulk_create(objs, ignore_conflicts=True)


_GROUP = "usage-flush"


def usage_stream_flush(*, batch_size: int = 1000, max_batches: int = 100) -> int:
    """Moves settled usage records and budget events from the Redis streams into the database.
    Entries are acknowledged only after their transaction commits; entries a dead flusher left
    pending are claimed after a minute. Safe to run in several processes at once."""
    ledger = get_ledger()
    if not isinstance(ledger, RedisLedger):
        return 0
    client = ledger.client
    consumer = f"{socket.gethostname()}-{os.getpid()}"
    written = 0
    for stream, field_name in ((ledger.records_stream, b"r"), (ledger.events_stream, b"e")):
        try:
            client.xgroup_create(stream, _GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        client.xautoclaim(stream, _GROUP, consumer, min_idle_time=60_000, count=batch_size)
        for _ in range(max_batches):
            # Pending entries of this consumer first (id "0"), then new ones (">").
            # redis-py types stream replies loosely (RESP2 and RESP3 shapes); this is RESP2's.
            entries: Any = client.xreadgroup(_GROUP, consumer, {stream: "0"}, count=batch_size)
            if not entries or not entries[0][1]:
                entries = client.xreadgroup(_GROUP, consumer, {stream: ">"}, count=batch_size)
            if not entries or not entries[0][1]:
                break
            ids = [entry_id for entry_id, _ in entries[0][1]]
            payloads = [json.loads(fields[field_name]) for _, fields in entries[0][1]]
            if field_name == b"r":
                written += usage_records_write(payloads)
            else:
                budget_events_write(payloads)
            client.xack(stream, _GROUP, *ids)
            client.xdel(stream, *ids)
    return written


def reservations_expire() -> int:
    return get_ledger().expire()
