"""The ledger's vocabulary and contract, shared by the Redis and the in-process ledgers."""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# How long an expired reservation remembers what it was charged, so that a settlement arriving
# after its expiry (a process back from a long pause, a retried settlement) corrects the charge.
TOMBSTONE_SECONDS = 7 * 86_400


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
    # The reservation had expired and been charged; this settlement corrected that charge.
    late: bool = False


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

# The record of work that cost nothing after all (refused before any work, or lost).
REFUNDED: dict[str, Any] = {"status": "error", "prompt_tokens": 0, "completion_tokens": 0, "latency_ms": 0}


def expired_record(record: dict[str, Any], *, prompt_tokens: int, charged: int) -> dict[str, Any]:
    """The usage record of a reservation that expired and was charged `charged` tokens."""
    prompt = min(prompt_tokens, charged)
    return {
        **record,
        "status": "expired",
        "prompt_tokens": prompt,
        "completion_tokens": charged - prompt,
        "latency_ms": 0,
        "revision": 0,
    }


class Ledger(ABC):
    def reservation_id_new(self, *, organization_id: int) -> str:
        """The id of a new reservation on `organization_id`'s budgets (it may say where the
        reservation is kept: `usage.ledger.keys`)."""
        return f"rsv_{uuid.uuid4().hex}"

    @abstractmethod
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
        """Reserves `amount` on every counter, or on none and says which one refused.
        Expiry charges `charge_on_expiry` (default: `amount`) and adds every charge to the
        `charged_key` total."""

    @abstractmethod
    def settle(self, *, reservation_id: str, record_update: dict[str, Any], tokens: int) -> Settlement | None:
        """Charges `tokens` (0 releases everything) and emits the usage record; if the
        reservation had expired, corrects what expiry charged to `tokens` and emits the
        record's next revision. None when it was settled already."""

    @abstractmethod
    def grow(
        self, *, reservation_id: str, counters: list[Counter], amount: int, prompt_tokens: int
    ) -> ReserveRefused | None:
        """Raises the hold to `amount` (when admission's estimate was short of the exact count),
        on every counter or on none. A hold already that large, or gone, is left as it is."""

    @abstractmethod
    def cancel(self, *, reservation_id: str) -> bool:
        """Releases a hold for a request that was refused before any work: no charge, no
        record. False when it was settled or expired already."""

    def withdraw(self, *, reservation_id: str) -> None:
        """Cancels a hold for a request refused before any work. One that expired meanwhile
        (its cancellation waited out a Redis outage longer than its deadline) was charged what it
        held: that charge is corrected to nothing, as a late settlement would."""
        if not self.cancel(reservation_id=reservation_id):
            self.settle(reservation_id=reservation_id, record_update=dict(REFUNDED), tokens=0)

    @abstractmethod
    def extend(self, *, reservation_ids: Sequence[str], ttl_seconds: int) -> None:
        """Moves the deadlines of these (running) reservations `ttl_seconds` ahead."""

    @abstractmethod
    def adopt(self, *, reservation_id: str, ttl_seconds: int, charge_on_expiry: int) -> bool:
        """A process takes over a reservation (a queued job starting): new deadline, and what
        expiry would charge from now on. False when it no longer exists."""

    @abstractmethod
    def balances(self, counters: list[Counter]) -> list[Balance]: ...

    @abstractmethod
    def charged(self, keys: Sequence[str]) -> list[int | None]:
        """The charged totals; None for a total the ledger does not hold (lost with Redis)."""

    @abstractmethod
    def active_reservations(self) -> int: ...

    @abstractmethod
    def expire(self, *, now: float | None = None, limit: int = 500) -> int:
        """Charges and closes reservations past their deadline; returns how many."""
