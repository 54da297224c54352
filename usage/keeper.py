"""Keeps this process's reservations honest: extends the ones still running, retries the
settlements Redis could not take.

A reservation's deadline is `RESERVATION_TTL_SECONDS` ahead; the keeper, one daemon thread per
process, moves the deadlines of every reservation still running here forward every third of
that, in one round trip. So a generation may run as long as it needs without its hold being
released under it, and a process that dies stops extending: its reservations expire and are
charged what they held. A settlement that failed on a Redis error (Redis restarting) is retried
every second until it lands; settling is idempotent, and one that lands after the reservation
expired corrects the expiry's charge.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.shared_redis import REDIS_ERRORS
from usage.ledger import Ledger

logger = logging.getLogger(__name__)

RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class PendingSettlement:
    reservation_id: str
    record_update: dict[str, Any]
    tokens: int
    # A hold released without a charge or a record (the request was refused before any work).
    cancel: bool = False


class ReservationKeeper:
    def __init__(self, *, ledger: Callable[[], Ledger], ttl_seconds: Callable[[], int]) -> None:
        self._ledger = ledger
        self._ttl_seconds = ttl_seconds
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._pending: list[PendingSettlement] = []
        self._pid = 0

    def track(self, reservation_id: str) -> None:
        with self._lock:
            self._running.add(reservation_id)
            self._ensure_thread()

    def untrack(self, reservation_id: str) -> None:
        with self._lock:
            self._running.discard(reservation_id)

    def retry_later(self, settlement: PendingSettlement) -> None:
        with self._lock:
            self._pending.append(settlement)
            self._ensure_thread()

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def clear(self) -> None:
        with self._lock:
            self._running.clear()
            self._pending.clear()

    def _ensure_thread(self) -> None:
        """Under the lock. One thread per process, started again in a forked child."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        threading.Thread(target=self._run, name="reservation-keeper", daemon=True).start()

    def _run(self) -> None:
        last_extend = 0.0
        while True:
            ttl = self._ttl_seconds()
            time.sleep(min(RETRY_SECONDS, ttl / 3))
            try:
                self.retry_pending()
                if time.monotonic() - last_extend >= ttl / 3:
                    last_extend = time.monotonic()
                    self.extend_running(ttl_seconds=ttl)
            except Exception:
                logger.exception("The reservation keeper failed; it tries again")

    def extend_running(self, *, ttl_seconds: int) -> None:
        with self._lock:
            running = list(self._running)
        if running:
            try:
                self._ledger().extend(reservation_ids=running, ttl_seconds=ttl_seconds)
            except REDIS_ERRORS as exc:
                logger.warning("Could not extend %d running reservations: %s", len(running), exc)

    def retry_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        failed = []
        for index, settlement in enumerate(pending):
            try:
                if settlement.cancel:
                    self._ledger().withdraw(reservation_id=settlement.reservation_id)
                else:
                    self._ledger().settle(
                        reservation_id=settlement.reservation_id,
                        record_update=settlement.record_update,
                        tokens=settlement.tokens,
                    )
            except REDIS_ERRORS:
                failed = pending[index:]
                break
        if failed:
            with self._lock:
                self._pending[:0] = failed
