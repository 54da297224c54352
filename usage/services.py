from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

from django.conf import settings
from django.utils import timezone
from opentelemetry import trace

from accounts.context import AuthContext
from accounts.models import BudgetPeriod
from common.errors import APIError
from common.metrics import TOKENS
from common.shared_redis import REDIS_ERRORS, cluster_configured, redis_client, shared_redis_configured
from usage import periods, ratelimit, records
from usage.counters import budget_counters, initial_used
from usage.keeper import PendingSettlement, ReservationKeeper
from usage.ledger import (
    CLUSTER_SHARDS,
    REFUNDED,
    Balance,
    Counter,
    KeyLayout,
    Ledger,
    LocalLedger,
    RedisLedger,
    ReserveRefused,
    Sink,
    WindowRefused,
)

logger = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)


class QuotaExceeded(APIError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


# --- The ledger ---------------------------------------------------------------------------


_local_ledger: LocalLedger | None = None


def key_layout() -> KeyLayout:
    """How the ledger's keys spread over a Redis Cluster; one shard on one Redis."""
    return KeyLayout(shards=CLUSTER_SHARDS if cluster_configured() else 1)


def organization_key_tag(*, organization_id: int) -> str:
    """What the name of a key that an organization's admission touches starts with (after
    the prefix): its shard's hash tag on a Redis Cluster, nothing on one Redis."""
    return key_layout().organization_tag(organization_id)


def get_ledger() -> Ledger:
    global _local_ledger
    if shared_redis_configured():
        return _redis_ledger(
            settings.CACHE_KEY_PREFIX, settings.REDIS_URL, tuple(settings.REDIS_CLUSTER_NODES)
        )
    if _local_ledger is None:
        _local_ledger = LocalLedger(
            initial_used=initial_used,
            sink=Sink(records=records.usage_records_write, events=records.budget_events_write),
        )
    return _local_ledger


@cache
def _redis_ledger(prefix: str, url: str, nodes: tuple[str, ...]) -> RedisLedger:
    # Keyed by the settings, so a test that overrides them gets a ledger of its own.
    return RedisLedger(
        client=redis_client(), prefix=f"{prefix}:q:", initial_used=initial_used, layout=key_layout()
    )


_keeper = ReservationKeeper(ledger=lambda: get_ledger(), ttl_seconds=lambda: settings.RESERVATION_TTL_SECONDS)


def charged_key(*, organization_id: int, when: datetime) -> str:
    """The ledger's total of what an organization was charged in a (UTC) month."""
    tag = organization_key_tag(organization_id=organization_id)
    return f"{tag}charged:{organization_id}:m{when.astimezone(UTC):%Y-%m}"


@dataclass
class Reservation:
    """Tokens held on every applicable budget for one request. Settle it exactly once: with
    the tokens used (what was generated, however the request ended), or with nothing when
    nothing was generated. `settle` is idempotent. While it is open, the process's keeper
    keeps it from expiring."""

    reservation_id: str
    amount: int
    ledger: Ledger
    started: datetime
    counters: list[Counter] = field(default_factory=list)
    model: str = ""
    settled: bool = False
    # Admission made it; the view claims it once it takes the request on (from then on the
    # view settles it). One never claimed is cancelled when the response leaves.
    claimed: bool = False

    def ensure(self, *, amount: int, prompt_tokens: int) -> None:
        """Holds at least `amount`: admission reserved on an estimate, the exact count (the
        serving model's tokenizer) may be larger. Raises QuotaExceeded when a budget cannot
        take the difference."""
        if amount <= self.amount:
            return
        refused = self.ledger.grow(
            reservation_id=self.reservation_id,
            counters=self.counters,
            amount=amount,
            prompt_tokens=prompt_tokens,
        )
        if refused is not None:
            raise _quota_exceeded(refused, amount)
        self.amount = amount

    def claim(self) -> Reservation:
        self.claimed = True
        return self

    def cancel(self) -> None:
        """Releases a hold for a request refused before any work: no charge, no record."""
        if self.settled:
            return
        self.settled = True
        _keeper.untrack(self.reservation_id)
        try:
            self.ledger.withdraw(reservation_id=self.reservation_id)
        except REDIS_ERRORS as exc:
            logger.warning("Cancellation of %s deferred: %s", self.reservation_id, exc)
            _keeper.retry_later(
                PendingSettlement(reservation_id=self.reservation_id, record_update={}, tokens=0, cancel=True)
            )

    def settle(
        self, *, prompt_tokens: int, completion_tokens: int, status: str = "ok", model: str | None = None
    ) -> None:
        if self.settled:
            return
        self.settled = True
        _keeper.untrack(self.reservation_id)
        # Never more than was reserved: the budget check admitted this much and no more.
        prompt_tokens = max(0, min(prompt_tokens, self.amount))
        completion_tokens = max(0, min(completion_tokens, self.amount - prompt_tokens))
        update: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "status": status,
            "latency_ms": int((timezone.now() - self.started).total_seconds() * 1000),
        }
        if model:
            update["model"] = model
        tokens = prompt_tokens + completion_tokens
        try:
            settlement = self.ledger.settle(
                reservation_id=self.reservation_id, record_update=update, tokens=tokens
            )
        except REDIS_ERRORS as exc:
            logger.warning("Settlement of %s deferred: %s", self.reservation_id, exc)
            _keeper.retry_later(
                PendingSettlement(reservation_id=self.reservation_id, record_update=update, tokens=tokens)
            )
            return
        if settlement is not None:
            for label in settlement.crossed_threshold:
                logger.warning("Budget soft threshold crossed", extra={"budget": label})
            if not settlement.late:
                charged_model = model or self.model
                TOKENS.labels("prompt", charged_model).inc(prompt_tokens)
                TOKENS.labels("completion", charged_model).inc(completion_tokens)

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
    prompt_tokens: int = 0,
    queued_for_seconds: int | None = None,
    limits: ratelimit.LimitWindows | None = None,
    free_if_abandoned: bool = False,
) -> Reservation:
    """Reserves `amount` tokens on every budget that applies to the caller, all or none.
    Raises QuotaExceeded naming the budget that cannot take it.

    The reservation's id, made here, identifies the usage record; `request_id` (the client's
    or the server's) is only written beside it. A reservation for work that waits in a queue
    (`queued_for_seconds`) lives that long and costs nothing if it expires before a worker
    adopts it (`reservation_adopt`); any other is running from now on, and costs what it holds
    if its process dies, unless `free_if_abandoned` (work whose result a dead process cannot
    have delivered, and that is redone from the start: ingestion)."""
    now = timezone.now()
    counters = budget_counters(context=context, end_user=end_user, now=now, endpoint=endpoint)
    ledger = get_ledger()
    reservation_id = ledger.reservation_id_new(organization_id=context.organization.pk)
    record = {
        "reservation_id": reservation_id,
        "request_id": request_id,
        "organization_id": context.organization.pk,
        "api_key_id": context.api_key.pk if context.api_key else None,
        "user_id": context.user.pk if context.user else None,
        "end_user": end_user or "",
        "endpoint": endpoint,
        "model": model,
        "created_at": now.isoformat(),
    }
    hold: dict[str, Any] = {
        "reservation_id": reservation_id,
        "counters": counters,
        "amount": amount,
        "record": record,
        "ttl_seconds": queued_for_seconds or settings.RESERVATION_TTL_SECONDS,
        "prompt_tokens": prompt_tokens,
        "charge_on_expiry": 0 if queued_for_seconds or free_if_abandoned else amount,
        "charged_key": charged_key(organization_id=context.organization.pk, when=now),
    }
    # Admission's rate limits are counted here: with the budgets in one atomic round trip on
    # Redis, on their own before the reservation otherwise.
    refused: ReserveRefused | None
    try:
        if limits is not None and isinstance(ledger, RedisLedger):
            outcome = ledger.admit(**hold, windows=limits.windows())
            limits.counted_in_redis(
                list(outcome.window_counts),
                refused=outcome.index if isinstance(outcome, WindowRefused) else None,
            )
            refused = outcome if isinstance(outcome, ReserveRefused) else None
        else:
            if limits is not None:
                limits.count()
            refused = ledger.reserve(**hold)
            if refused is not None and limits is not None:
                limits.refund_tokens()
    except REDIS_ERRORS:
        # Redis may have run the reservation and gone down before it answered: held with no
        # one to settle it, it would expire charging what it held, for a request answered
        # 503. Its withdrawal waits for Redis like a deferred settlement; withdrawing one that
        # was never made does nothing.
        _keeper.retry_later(
            PendingSettlement(reservation_id=reservation_id, record_update={}, tokens=0, cancel=True)
        )
        raise
    if refused is not None:
        raise _quota_exceeded(refused, amount)
    if not queued_for_seconds:
        _keeper.track(reservation_id)
    return Reservation(
        reservation_id=reservation_id,
        amount=amount,
        ledger=ledger,
        started=now,
        counters=counters,
        model=model,
    )


def _quota_exceeded(refused: ReserveRefused, amount: int) -> QuotaExceeded:
    remaining = max(0, refused.counter.limit - refused.balance.used - refused.balance.reserved)
    return QuotaExceeded(
        f"This request needs up to {amount} tokens but the {refused.counter.label} has "
        f"{remaining} left of {refused.counter.limit} this period "
        f"({refused.balance.used} used, {refused.balance.reserved} reserved by requests in flight).",
        param="max_tokens",
    )


def quota_hold(
    *,
    admitted: Reservation | None,
    context: AuthContext,
    end_user: str | None,
    endpoint: str,
    model: str,
    request_id: str,
    amount: int,
    prompt_tokens: int,
    queued_for_seconds: int | None = None,
) -> Reservation:
    """The budget held for a piece of work: admission's reservation (`admitted`), grown to the
    exact count when its estimate was short, and claimed; outside the API pipeline (a worker,
    a command), a new one."""
    if admitted is not None:
        admitted.ensure(amount=amount, prompt_tokens=prompt_tokens)
        return admitted.claim()
    return quota_reserve(
        context=context,
        end_user=end_user,
        endpoint=endpoint,
        model=model,
        request_id=request_id,
        amount=amount,
        prompt_tokens=prompt_tokens,
        queued_for_seconds=queued_for_seconds,
    )


def reservation_refund(*, reservation_id: str) -> bool:
    """Corrects what an expired reservation was charged to nothing (its work was lost and
    delivered nothing); its record becomes a failed one with no tokens. False when there is
    nothing to correct (it never expired, or expired too long ago)."""
    settlement = get_ledger().settle(reservation_id=reservation_id, record_update=dict(REFUNDED), tokens=0)
    return settlement is not None and settlement.late


def reservation_adopt(*, reservation_id: str, amount: int) -> Reservation | None:
    """A worker takes over the reservation its job was queued with: from now on it is running
    (extended by this process, charged in full if this process dies). None when it expired
    while the job waited."""
    ledger = get_ledger()
    if not ledger.adopt(
        reservation_id=reservation_id, ttl_seconds=settings.RESERVATION_TTL_SECONDS, charge_on_expiry=amount
    ):
        return None
    _keeper.track(reservation_id)
    return Reservation(reservation_id=reservation_id, amount=amount, ledger=ledger, started=timezone.now())


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


# --- The flush ----------------------------------------------------------------------------


def usage_stream_flush(*, batch_size: int = 1000, max_batches: int = 100) -> int:
    """Moves settled records and events from the Redis streams into the database (see
    `usage.records`); with the local ledger they are written at settlement already."""
    ledger = get_ledger()
    if not isinstance(ledger, RedisLedger):
        return 0
    with _tracer.start_as_current_span("usage.flush") as span:
        moved = records.stream_flush(ledger=ledger, batch_size=batch_size, max_batches=max_batches)
        span.set_attribute("llmp.usage.flushed", moved)
    return moved


def reservations_expire() -> int:
    return get_ledger().expire()
