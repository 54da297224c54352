"""The token ledger's guarantees, for both implementations: all-or-nothing reservation,
settlement to the actual count, release on failure, expiry of abandoned reservations, and
counters rebuilt from the database."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings

from usage.ledger import Counter, Ledger, LocalLedger, RedisLedger, Sink
from usage.services import redis_client


def _counter(key: str, limit: int, threshold: int | None = None) -> Counter:
    return Counter(
        key=key,
        label=f"budget {key}",
        limit=limit,
        threshold=threshold or limit,
        ttl_seconds=3600,
        organization_id=1,
        period="all",
    )


@pytest.fixture(params=["local", "redis"])
def ledger(request: Any) -> Iterator[tuple[Ledger, list[dict[str, Any]], dict[str, int]]]:
    records: list[dict[str, Any]] = []
    initial: dict[str, int] = {}

    def initial_used(counter: Counter) -> int:
        return initial.get(counter.key, 0)

    if request.param == "local":
        yield (
            LocalLedger(initial_used=initial_used, sink=Sink(records=records.extend, events=lambda e: None)),
            records,
            initial,
        )
        return
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL (CI sets it)")
    yield (
        RedisLedger(
            client=redis_client(),
            prefix=f"{settings.CACHE_KEY_PREFIX}:ledgertest:",
            initial_used=initial_used,
        ),
        records,
        initial,
    )


def _record() -> dict[str, Any]:
    return {
        "request_id": "r",
        "organization_id": 1,
        "endpoint": "generate",
        "model": "m",
        "created_at": "2026-01-01T00:00:00+00:00",
    }


def test_reservation_is_all_or_nothing(ledger) -> None:
    ledger_, _records, _initial = ledger
    big, small = _counter("big", 1000), _counter("small", 100)
    refused = ledger_.reserve(
        reservation_id="a", counters=[big, small], amount=150, record=_record(), ttl_seconds=60
    )
    assert refused is not None and refused.counter == small
    assert [b.reserved for b in ledger_.balances([big, small])] == [0, 0]


def test_settle_charges_actual_and_releases_the_rest(ledger) -> None:
    ledger_, _records, _initial = ledger
    budget = _counter("b", 100)
    assert (
        ledger_.reserve(reservation_id="a", counters=[budget], amount=60, record=_record(), ttl_seconds=60)
        is None
    )
    assert (
        ledger_.reserve(reservation_id="b", counters=[budget], amount=60, record=_record(), ttl_seconds=60)
        is not None
    )
    ledger_.settle(reservation_id="a", record_update={"completion_tokens": 5}, tokens=25)
    (balance,) = ledger_.balances([budget])
    assert (balance.used, balance.reserved) == (25, 0)
    assert (
        ledger_.reserve(reservation_id="c", counters=[budget], amount=60, record=_record(), ttl_seconds=60)
        is None
    )


def test_settling_twice_charges_once(ledger) -> None:
    ledger_, _records, _initial = ledger
    budget = _counter("b", 100)
    ledger_.reserve(reservation_id="a", counters=[budget], amount=10, record=_record(), ttl_seconds=60)
    assert ledger_.settle(reservation_id="a", record_update={}, tokens=10) is not None
    assert ledger_.settle(reservation_id="a", record_update={}, tokens=10) is None
    assert ledger_.balances([budget])[0].used == 10


def test_abandoned_reservation_expires_and_frees_the_budget(ledger) -> None:
    import time

    ledger_, records, _initial = ledger
    budget = _counter("b", 100)
    ledger_.reserve(reservation_id="dead", counters=[budget], amount=100, record=_record(), ttl_seconds=30)
    assert (
        ledger_.reserve(reservation_id="x", counters=[budget], amount=1, record=_record(), ttl_seconds=30)
        is not None
    )
    assert ledger_.expire(now=time.time() + 31) == 1
    assert ledger_.balances([budget])[0].reserved == 0
    assert (
        ledger_.reserve(reservation_id="y", counters=[budget], amount=100, record=_record(), ttl_seconds=30)
        is None
    )


def test_missing_counter_is_rebuilt_from_the_database(ledger) -> None:
    ledger_, _records, initial = ledger
    budget = _counter("rebuilt", 100)
    initial["rebuilt"] = 90
    refused = ledger_.reserve(
        reservation_id="a", counters=[budget], amount=20, record=_record(), ttl_seconds=60
    )
    assert refused is not None and refused.balance.used == 90


def test_threshold_crossing_is_reported_once(ledger) -> None:
    ledger_, _records, _initial = ledger
    budget = _counter("t", 100, threshold=80)
    crossings = []
    for index in range(3):
        ledger_.reserve(
            reservation_id=f"r{index}", counters=[budget], amount=30, record=_record(), ttl_seconds=60
        )
        settlement = ledger_.settle(reservation_id=f"r{index}", record_update={}, tokens=30)
        crossings.append(settlement.crossed_threshold if settlement else None)
    assert crossings == [(), (), ("budget t",)]


def test_concurrent_reservations_never_overspend(ledger) -> None:
    ledger_, _records, _initial = ledger
    budget = _counter("hot", 1000)
    admitted = []
    lock = threading.Lock()

    def attempt(index: int) -> None:
        if (
            ledger_.reserve(
                reservation_id=f"c{index}", counters=[budget], amount=30, record=_record(), ttl_seconds=60
            )
            is None
        ):
            with lock:
                admitted.append(index)
            ledger_.settle(reservation_id=f"c{index}", record_update={}, tokens=30)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (balance,) = ledger_.balances([budget])
    assert len(admitted) == 33
    assert (balance.used, balance.reserved) == (990, 0)
