"""The token ledger: budget counters and reservations, atomic across every process.

A request reserves `prompt + max_tokens` on every budget that applies, all or nothing, before
inference; afterwards it settles to the tokens actually used and releases the rest. Settlement
also appends the usage record to a stream that a flusher writes to the database in batches, so
recording costs the request no database round trip. A reservation whose process died expires
after `ttl` and is released by `expire()`, so a key is never blocked by spend that did not
happen.

Two implementations with the same semantics: `RedisLedger` (Lua scripts: each operation is one
atomic round trip, shared by every web and Celery process) and `LocalLedger` (one process, a
lock; the embedded default of `make run`).

Counters are keyed by period (`d2026-11-27`, `m2026-11`, `all`), so a budget resets at its
boundary by starting a new key. A counter missing from Redis is rebuilt from the database's
usage records (`initial_used`), so losing Redis loses no spend.
"""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis


@dataclass(frozen=True)
class Counter:
    """One budget in one period."""

    key: str  # e.g. "organization:12:m2026-11"
    label: str  # names the budget in errors and events
    limit: int
    threshold: int  # soft threshold, in tokens
    ttl_seconds: int  # until the period ends, plus a margin
    organization_id: int
    period: str


@dataclass(frozen=True)
class Balance:
    used: int
    reserved: int


@dataclass(frozen=True)
class ReserveRefused:
    counter: Counter
    balance: Balance
    window_counts: tuple[int, ...] = ()


@dataclass(frozen=True)
class Settlement:
    crossed_threshold: tuple[str, ...] = ()


@dataclass(frozen=True)
class Window:
    """A rate-limit counter of one fixed window (django-ratelimit's key), counted in the same
    atomic step as a reservation."""

    key: str
    limit: int
    amount: int
    ttl_seconds: int
    # All or nothing (tokens per minute), or counted even past the limit (requests per
    # minute: django-ratelimit counts every attempt).
    fit: bool


@dataclass(frozen=True)
class WindowRefused:
    index: int
    window_counts: tuple[int, ...]


@dataclass(frozen=True)
class Admitted:
    window_counts: tuple[int, ...]


@dataclass
class Sink:
    """Where the local ledger writes records and events (the Redis ledger streams them)."""

    records: Callable[[list[dict[str, Any]]], object]
    events: Callable[[list[dict[str, Any]]], object]


InitialUsed = Callable[[Counter], int]


class Ledger(ABC):
    @abstractmethod
    def reserve(
        self,
        *,
        reservation_id: str,
        counters: list[Counter],
        amount: int,
        record: dict[str, Any],
        ttl_seconds: int,
    ) -> ReserveRefused | None:
        """Reserves `amount` on every counter, or on none and says which one refused."""

    @abstractmethod
    def settle(self, *, reservation_id: str, record_update: dict[str, Any], tokens: int) -> Settlement | None:
        """Charges `tokens` (0 releases everything) and emits the usage record. None when the
        reservation is unknown: settled already, or expired."""

    @abstractmethod
    def balances(self, counters: list[Counter]) -> list[Balance]: ...

    @abstractmethod
    def expire(self, *, now: float | None = None, limit: int = 500) -> int:
        """Releases reservations past their deadline; returns how many."""


# --- Redis -------------------------------------------------------------------------------

# KEYS: reservation hash, deadlines zset, window keys..., counter keys...
# ARGV: amount, deadline, now, record json, counters json, window count,
#       then per window: limit, amount, ttl, fit (1/0); then per counter: limit, ttl
_RESERVE = """
local amount = tonumber(ARGV[1])
local w = tonumber(ARGV[6])
local n = #KEYS - 2 - w
local cbase = 6 + 4 * w
for i = 1, n do
  if redis.call('EXISTS', KEYS[2 + w + i]) == 0 then return {'init', i} end
end
local counts = {}
local refused = 0
for i = 1, w do
  local a = 6 + 4 * (i - 1)
  local limit, add, fit = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), ARGV[a + 4] == '1'
  local k = KEYS[2 + i]
  if fit then
    counts[i] = tonumber(redis.call('GET', k) or '0')
    if refused == 0 and counts[i] + add > limit then refused = i end
  else
    counts[i] = redis.call('INCRBY', k, add)
    redis.call('EXPIRE', k, tonumber(ARGV[a + 3]), 'NX')
    if refused == 0 and counts[i] > limit then refused = i end
  end
end
if refused > 0 then return {'window', refused, counts} end
for i = 1, n do
  local k = KEYS[2 + w + i]
  local used = tonumber(redis.call('HGET', k, 'used') or '0')
  local reserved = tonumber(redis.call('HGET', k, 'reserved') or '0')
  if used + reserved + amount > tonumber(ARGV[cbase + 2 * i - 1]) then
    return {'refused', i, used, reserved, counts}
  end
end
for i = 1, w do
  local a = 6 + 4 * (i - 1)
  if ARGV[a + 4] == '1' then
    local k = KEYS[2 + i]
    counts[i] = redis.call('INCRBY', k, tonumber(ARGV[a + 2]))
    redis.call('EXPIRE', k, tonumber(ARGV[a + 3]), 'NX')
  end
end
for i = 1, n do
  local k = KEYS[2 + w + i]
  redis.call('HINCRBY', k, 'reserved', amount)
  redis.call('EXPIRE', k, tonumber(ARGV[cbase + 2 * i]))
end
redis.call('HSET', KEYS[1], 'amount', amount, 'record', ARGV[4], 'counters', ARGV[5])
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]), KEYS[1])
return {'ok', counts}
"""

# KEYS: reservation hash, deadlines zset, records stream, events stream
# ARGV: tokens, record update json, status-if-expired ('' normally)
_SETTLE = """
local amount = redis.call('HGET', KEYS[1], 'amount')
if not amount then return false end
amount = tonumber(amount)
local tokens = tonumber(ARGV[1])
local record = cjson.decode(redis.call('HGET', KEYS[1], 'record'))
local counters = cjson.decode(redis.call('HGET', KEYS[1], 'counters'))
for k, v in pairs(cjson.decode(ARGV[2])) do record[k] = v end
local crossed = {}
for _, c in ipairs(counters) do
  local key, threshold = c[1], tonumber(c[3])
  local before = tonumber(redis.call('HGET', key, 'used') or '0')
  redis.call('HINCRBY', key, 'reserved', -amount)
  if tokens > 0 then redis.call('HINCRBY', key, 'used', tokens) end
  if before < threshold and before + tokens >= threshold then
    table.insert(crossed, c[4])
    redis.call('XADD', KEYS[4], '*', 'e', cjson.encode({
      organization_id = record.organization_id, kind = 'threshold', budget = c[4],
      period = c[5], used = before + tokens, limit = tonumber(c[2])}))
  end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
redis.call('XADD', KEYS[3], '*', 'r', cjson.encode(record))
return crossed
"""

_BALANCES = """
local out = {}
for i = 1, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'used', 'reserved')
  table.insert(out, {v[1] or '-1', v[2] or '0'})
end
return out
"""


class RedisLedger(Ledger):
    RECORDS_STREAM = "usage:records"
    EVENTS_STREAM = "usage:events"

    def __init__(self, *, client: redis.Redis, prefix: str, initial_used: InitialUsed) -> None:
        self.client = client
        self.prefix = prefix
        self.initial_used = initial_used
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._balances = client.register_script(_BALANCES)

    def _k(self, name: str) -> str:
        return f"{self.prefix}{name}"

    @property
    def records_stream(self) -> str:
        return self._k(self.RECORDS_STREAM)

    @property
    def events_stream(self) -> str:
        return self._k(self.EVENTS_STREAM)

    def _init_counter(self, counter: Counter) -> None:
        key = self._k(counter.key)
        pipe = self.client.pipeline()
        pipe.hsetnx(key, "used", self.initial_used(counter))
        pipe.hsetnx(key, "reserved", 0)
        pipe.expire(key, counter.ttl_seconds)
        pipe.execute()

    def reserve(
        self,
        *,
        reservation_id: str,
        counters: list[Counter],
        amount: int,
        record: dict[str, Any],
        ttl_seconds: int,
    ) -> ReserveRefused | None:
        outcome = self.admit(
            reservation_id=reservation_id,
            counters=counters,
            amount=amount,
            record=record,
            ttl_seconds=ttl_seconds,
            windows=(),
        )
        return outcome if isinstance(outcome, ReserveRefused) else None

    def admit(
        self,
        *,
        reservation_id: str,
        counters: list[Counter],
        amount: int,
        record: dict[str, Any],
        ttl_seconds: int,
        windows: Sequence[Window],
    ) -> Admitted | ReserveRefused | WindowRefused:
        """Counts the rate-limit windows and reserves on the budgets in one atomic round trip:
        a window over its limit refuses before any budget is touched, a budget that cannot
        take `amount` refuses before any tokens-per-minute are added."""
        now = time.time()
        keys = [self._k(f"resv:{reservation_id}"), self._k("resv:deadlines")]
        keys += [window.key for window in windows]
        keys += [self._k(c.key) for c in counters]
        described = json.dumps([[self._k(c.key), c.limit, c.threshold, c.label, c.period] for c in counters])
        args: list[Any] = [amount, now + ttl_seconds, now, json.dumps(record), described, len(windows)]
        for window in windows:
            args += [window.limit, window.amount, window.ttl_seconds, 1 if window.fit else 0]
        for counter in counters:
            args += [counter.limit, counter.ttl_seconds]
        for _attempt in range(len(counters) + 1):
            result = self._reserve(keys=keys, args=args)
            outcome = result[0].decode() if isinstance(result[0], bytes) else result[0]
            if outcome == "ok":
                return Admitted(window_counts=tuple(int(c) for c in result[1]))
            if outcome == "init":
                self._init_counter(counters[int(result[1]) - 1])
                continue
            if outcome == "window":
                return WindowRefused(index=int(result[1]) - 1, window_counts=tuple(int(c) for c in result[2]))
            index = int(result[1]) - 1
            return ReserveRefused(
                counter=counters[index],
                balance=Balance(used=int(result[2]), reserved=int(result[3])),
                window_counts=tuple(int(c) for c in result[4]),
            )
        raise RuntimeError("budget counters vanished while reserving")

    def settle(self, *, reservation_id: str, record_update: dict[str, Any], tokens: int) -> Settlement | None:
        keys = [
            self._k(f"resv:{reservation_id}"),
            self._k("resv:deadlines"),
            self.records_stream,
            self.events_stream,
        ]
        result = self._settle(keys=keys, args=[tokens, json.dumps(record_update)])
        if result is None:
            return None
        return Settlement(crossed_threshold=tuple(x.decode() for x in result))

    def balances(self, counters: list[Counter]) -> list[Balance]:
        if not counters:
            return []
        rows = self._balances(keys=[self._k(c.key) for c in counters])
        balances = []
        for counter, (used, reserved) in zip(counters, rows, strict=True):
            used_value = int(used)
            if used_value < 0:  # not in Redis yet: what the database says
                used_value = self.initial_used(counter)
            balances.append(Balance(used=used_value, reserved=int(reserved)))
        return balances

    def expire(self, *, now: float | None = None, limit: int = 500) -> int:
        deadline = now if now is not None else time.time()
        members: list[bytes] = self.client.zrangebyscore(  # type: ignore[assignment]
            self._k("resv:deadlines"), "-inf", deadline, start=0, num=limit
        )
        expired = 0
        for member in members:
            reservation_id = member.decode().removeprefix(self._k("resv:"))
            update = {"status": "expired", "prompt_tokens": 0, "completion_tokens": 0}
            if self.settle(reservation_id=reservation_id, record_update=update, tokens=0) is not None:
                expired += 1
        return expired


# --- In-process --------------------------------------------------------------------------


@dataclass
class _LocalReservation:
    amount: int
    record: dict[str, Any]
    counters: list[Counter]
    deadline: float


@dataclass
class _LocalCounter:
    used: int
    reserved: int = 0


class LocalLedger(Ledger):
    """The same semantics for a single process, when no Redis is configured."""

    def __init__(self, *, initial_used: InitialUsed, sink: Sink) -> None:
        self.initial_used = initial_used
        self.sink = sink
        self._lock = threading.Lock()
        self._counters: dict[str, _LocalCounter] = {}
        self._reservations: dict[str, _LocalReservation] = {}

    def _counter(self, counter: Counter) -> _LocalCounter:
        state = self._counters.get(counter.key)
        if state is None:
            state = self._counters[counter.key] = _LocalCounter(used=self.initial_used(counter))
        return state

    def reserve(
        self,
        *,
        reservation_id: str,
        counters: list[Counter],
        amount: int,
        record: dict[str, Any],
        ttl_seconds: int,
    ) -> ReserveRefused | None:
        with self._lock:
            states = [self._counter(c) for c in counters]
            for counter, state in zip(counters, states, strict=True):
                if state.used + state.reserved + amount > counter.limit:
                    return ReserveRefused(
                        counter=counter, balance=Balance(used=state.used, reserved=state.reserved)
                    )
            for state in states:
                state.reserved += amount
            self._reservations[reservation_id] = _LocalReservation(
                amount=amount,
                record=dict(record),
                counters=list(counters),
                deadline=time.time() + ttl_seconds,
            )
        return None

    def settle(self, *, reservation_id: str, record_update: dict[str, Any], tokens: int) -> Settlement | None:
        events: list[dict[str, Any]] = []
        crossed: list[str] = []
        with self._lock:
            reservation = self._reservations.pop(reservation_id, None)
            if reservation is None:
                return None
            for counter in reservation.counters:
                state = self._counter(counter)
                before = state.used
                state.reserved -= reservation.amount
                state.used += tokens
                if before < counter.threshold <= state.used:
                    crossed.append(counter.label)
                    events.append(
                        {
                            "organization_id": counter.organization_id,
                            "kind": "threshold",
                            "budget": counter.label,
                            "period": counter.period,
                            "used": state.used,
                            "limit": counter.limit,
                        }
                    )
            record = {**reservation.record, **record_update}
        self.sink.records([record])
        if events:
            self.sink.events(events)
        return Settlement(crossed_threshold=tuple(crossed))

    def balances(self, counters: list[Counter]) -> list[Balance]:
        with self._lock:
            states = [self._counter(c) for c in counters]
            return [Balance(used=s.used, reserved=s.reserved) for s in states]

    def expire(self, *, now: float | None = None, limit: int = 500) -> int:
        deadline = now if now is not None else time.time()
        with self._lock:
            due = [rid for rid, r in self._reservations.items() if r.deadline <= deadline][:limit]
        update = {"status": "expired", "prompt_tokens": 0, "completion_tokens": 0}
        return sum(
            1 for rid in due if self.settle(reservation_id=rid, record_update=update, tokens=0) is not None
        )
