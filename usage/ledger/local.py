"""The ledger's semantics in one process, behind a lock, when no Redis is configured."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from usage.ledger.base import (
    TOMBSTONE_SECONDS,
    Balance,
    Counter,
    InitialUsed,
    Ledger,
    ReserveRefused,
    Settlement,
    Sink,
    expired_record,
)


@dataclass
class _LocalReservation:
    amount: int
    record: dict[str, Any]
    counters: list[Counter]
    deadline: float
    prompt_tokens: int
    charge_on_expiry: int
    charged_key: str


@dataclass
class _Tombstone:
    charged: int
    reservation: _LocalReservation
    until: float


@dataclass
class _LocalCounter:
    used: int
    reserved: int = 0


class LocalLedger(Ledger):
    def __init__(self, *, initial_used: InitialUsed, sink: Sink) -> None:
        self.initial_used = initial_used
        self.sink = sink
        self._lock = threading.Lock()
        self._counters: dict[str, _LocalCounter] = {}
        self._reservations: dict[str, _LocalReservation] = {}
        self._tombstones: dict[str, _Tombstone] = {}
        self._charged: dict[str, int] = {}

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
        prompt_tokens: int = 0,
        charge_on_expiry: int | None = None,
        charged_key: str = "",
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
                prompt_tokens=prompt_tokens,
                charge_on_expiry=amount if charge_on_expiry is None else min(amount, charge_on_expiry),
                charged_key=charged_key,
            )
        return None

    def _charge(
        self, reservation: _LocalReservation, *, release: int, tokens: int, events: list[dict[str, Any]]
    ) -> list[str]:
        """Under the lock: the Redis scripts' `charge`."""
        crossed = []
        for counter in reservation.counters:
            state = self._counter(counter)
            before = state.used
            state.reserved -= release
            state.used += tokens
            if tokens > 0 and before < counter.threshold <= state.used:
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
        if reservation.charged_key:
            key = reservation.charged_key
            self._charged[key] = self._charged.get(key, 0) + tokens
        return crossed

    def settle(self, *, reservation_id: str, record_update: dict[str, Any], tokens: int) -> Settlement | None:
        events: list[dict[str, Any]] = []
        with self._lock:
            reservation = self._reservations.pop(reservation_id, None)
            if reservation is not None:
                crossed = self._charge(reservation, release=reservation.amount, tokens=tokens, events=events)
                record = {**reservation.record, **record_update, "revision": 0}
                late = False
            else:
                tombstone = self._tombstones.pop(reservation_id, None)
                if tombstone is None:
                    return None
                reservation = tombstone.reservation
                crossed = self._charge(
                    reservation, release=0, tokens=tokens - tombstone.charged, events=events
                )
                record = {**reservation.record, **record_update, "revision": 1}
                late = True
        self.sink.records([record])
        if events:
            self.sink.events(events)
        return Settlement(crossed_threshold=tuple(crossed), late=late)

    def grow(
        self, *, reservation_id: str, counters: list[Counter], amount: int, prompt_tokens: int
    ) -> ReserveRefused | None:
        with self._lock:
            reservation = self._reservations.get(reservation_id)
            if reservation is None or amount <= reservation.amount:
                return None
            extra = amount - reservation.amount
            states = [self._counter(c) for c in reservation.counters]
            for counter, state in zip(reservation.counters, states, strict=True):
                if state.used + state.reserved + extra > counter.limit:
                    return ReserveRefused(
                        counter=counter, balance=Balance(used=state.used, reserved=state.reserved)
                    )
            for state in states:
                state.reserved += extra
            if reservation.charge_on_expiry == reservation.amount:
                reservation.charge_on_expiry = amount
            reservation.amount = amount
            reservation.prompt_tokens = prompt_tokens
            return None

    def cancel(self, *, reservation_id: str) -> bool:
        with self._lock:
            reservation = self._reservations.pop(reservation_id, None)
            if reservation is None:
                return False
            for counter in reservation.counters:
                self._counter(counter).reserved -= reservation.amount
            return True

    def extend(self, *, reservation_ids: Sequence[str], ttl_seconds: int) -> None:
        deadline = time.time() + ttl_seconds
        with self._lock:
            for rid in reservation_ids:
                reservation = self._reservations.get(rid)
                if reservation is not None:
                    reservation.deadline = max(reservation.deadline, deadline)

    def adopt(self, *, reservation_id: str, ttl_seconds: int, charge_on_expiry: int) -> bool:
        with self._lock:
            reservation = self._reservations.get(reservation_id)
            if reservation is None:
                return False
            reservation.deadline = time.time() + ttl_seconds
            reservation.charge_on_expiry = min(reservation.amount, charge_on_expiry)
            return True

    def balances(self, counters: list[Counter]) -> list[Balance]:
        with self._lock:
            states = [self._counter(c) for c in counters]
            return [Balance(used=s.used, reserved=s.reserved) for s in states]

    def charged(self, keys: Sequence[str]) -> list[int | None]:
        with self._lock:
            return [self._charged.get(key) for key in keys]

    def active_reservations(self) -> int:
        with self._lock:
            return len(self._reservations)

    def expire(self, *, now: float | None = None, limit: int = 500) -> int:
        deadline = now if now is not None else time.time()
        records: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        with self._lock:
            due = [rid for rid, r in self._reservations.items() if r.deadline <= deadline][:limit]
            for rid in due:
                reservation = self._reservations.pop(rid)
                charged = reservation.charge_on_expiry
                self._charge(reservation, release=reservation.amount, tokens=charged, events=events)
                self._tombstones[rid] = _Tombstone(
                    charged=charged, reservation=reservation, until=deadline + TOMBSTONE_SECONDS
                )
                records.append(
                    expired_record(
                        reservation.record, prompt_tokens=reservation.prompt_tokens, charged=charged
                    )
                )
            for rid in [rid for rid, t in self._tombstones.items() if t.until <= deadline]:
                del self._tombstones[rid]
        if records:
            self.sink.records(records)
        if events:
            self.sink.events(events)
        return len(due)
