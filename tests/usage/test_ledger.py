"""The token ledger's guarantees, for both implementations: all-or-nothing reservation,
settlement to the actual count, release on failure, expiry of abandoned reservations, and
counters rebuilt from the database."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from redis.crc import key_slot

from common.shared_redis import redis_client
from usage.ledger import CLUSTER_SHARDS, Balance, Counter, KeyLayout, Ledger, LocalLedger, RedisLedger, Sink


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


def _flushed(ledger: Ledger, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records the ledger emitted: the local one's sink, or the Redis one's stream."""
    if isinstance(ledger, RedisLedger):
        return [
            json.loads(fields[b"r"])
            for records_stream, _events in ledger.streams()
            for _, fields in ledger.client.xrange(records_stream)
        ]
    return records


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


def test_abandoned_reservation_expires_charged_what_it_held(ledger) -> None:
    ledger_, records, _initial = ledger
    budget = _counter("b", 100)
    ledger_.reserve(
        reservation_id="dead",
        counters=[budget],
        amount=60,
        record=_record(),
        ttl_seconds=30,
        prompt_tokens=10,
        charged_key="charged:1",
    )
    assert ledger_.expire(now=time.time() + 31) == 1
    (balance,) = ledger_.balances([budget])
    assert (balance.used, balance.reserved) == (60, 0)
    assert ledger_.charged(["charged:1"]) == [60]
    assert ledger_.active_reservations() == 0
    # Nothing admitted is free: the expiry's record bills what was held.
    (record,) = _flushed(ledger_, records)
    assert (record["status"], record["prompt_tokens"], record["completion_tokens"]) == ("expired", 10, 50)


def test_a_late_settlement_corrects_the_expiry_charge_once(ledger) -> None:
    ledger_, records, _initial = ledger
    budget = _counter("b", 100)
    ledger_.reserve(
        reservation_id="slow", counters=[budget], amount=60, record=_record(), ttl_seconds=30, charged_key="c"
    )
    ledger_.expire(now=time.time() + 31)
    update = {"prompt_tokens": 10, "completion_tokens": 15, "status": "ok"}
    settlement = ledger_.settle(reservation_id="slow", record_update=update, tokens=25)
    assert settlement is not None and settlement.late
    assert ledger_.balances([budget])[0].used == 25
    assert ledger_.charged(["c"]) == [25]
    assert ledger_.settle(reservation_id="slow", record_update=update, tokens=25) is None
    assert ledger_.balances([budget])[0].used == 25
    expired, corrected = _flushed(ledger_, records)
    assert (expired["revision"], expired["completion_tokens"]) == (0, 60)
    assert (corrected["revision"], corrected["status"], corrected["completion_tokens"]) == (1, "ok", 15)


def test_a_queued_reservation_that_expires_before_it_starts_costs_nothing(ledger) -> None:
    ledger_, _records, _initial = ledger
    budget = _counter("b", 100)
    for rid in ("queued", "adopted"):
        ledger_.reserve(
            reservation_id=rid,
            counters=[budget],
            amount=40,
            record=_record(),
            ttl_seconds=30,
            charge_on_expiry=0,
            charged_key="c",
        )
    assert ledger_.adopt(reservation_id="adopted", ttl_seconds=30, charge_on_expiry=40)
    assert ledger_.expire(now=time.time() + 31) == 2
    assert ledger_.balances([budget])[0] == Balance(used=40, reserved=0)
    assert ledger_.charged(["c"]) == [40]
    assert not ledger_.adopt(reservation_id="queued", ttl_seconds=30, charge_on_expiry=40)


def test_an_extended_reservation_outlives_its_first_deadline(ledger) -> None:
    ledger_, _records, _initial = ledger
    budget = _counter("b", 100)
    ledger_.reserve(reservation_id="long", counters=[budget], amount=50, record=_record(), ttl_seconds=1)
    ledger_.extend(reservation_ids=["long", "unknown"], ttl_seconds=60)
    assert ledger_.expire(now=time.time() + 30) == 0
    assert ledger_.balances([budget])[0].reserved == 50
    ledger_.settle(reservation_id="long", record_update={}, tokens=20)
    assert ledger_.balances([budget])[0] == Balance(used=20, reserved=0)
    assert ledger_.active_reservations() == 0


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


def test_a_hold_grows_when_the_exact_count_exceeds_the_estimate(ledger) -> None:
    ledger_, _records, _initial = ledger
    budget = _counter("g", 100)
    ledger_.reserve(reservation_id="r", counters=[budget], amount=30, record=_record(), ttl_seconds=60)
    assert ledger_.grow(reservation_id="r", counters=[budget], amount=60, prompt_tokens=20) is None
    assert ledger_.balances([budget]) == [Balance(used=0, reserved=60)]
    refused = ledger_.grow(reservation_id="r", counters=[budget], amount=101, prompt_tokens=20)
    assert refused is not None and refused.balance == Balance(used=0, reserved=60)
    # An abandoned grown hold is charged what it grew to.
    ledger_.expire(now=time.time() + 61)
    assert ledger_.balances([budget]) == [Balance(used=60, reserved=0)]


def test_a_cancelled_hold_costs_nothing_and_emits_no_record(ledger) -> None:
    ledger_, records, _initial = ledger
    budget = _counter("x", 100)
    ledger_.reserve(reservation_id="r", counters=[budget], amount=30, record=_record(), ttl_seconds=60)
    assert ledger_.cancel(reservation_id="r")
    assert not ledger_.cancel(reservation_id="r")
    assert ledger_.balances([budget]) == [Balance(used=0, reserved=0)]
    assert ledger_.settle(reservation_id="r", record_update={}, tokens=5) is None
    assert _flushed(ledger_, records) == []


def test_a_withdrawn_hold_that_expired_first_is_refunded(ledger) -> None:
    """A cancellation that waited out a Redis outage longer than the hold's deadline: the
    expiry charged what was held, the withdrawal takes it back."""
    ledger_, records, _initial = ledger
    budget = _counter("w", 100)
    ledger_.reserve(
        reservation_id="r", counters=[budget], amount=40, record=_record(), ttl_seconds=30, charged_key="c"
    )
    ledger_.expire(now=time.time() + 31)
    assert ledger_.balances([budget])[0].used == 40
    ledger_.withdraw(reservation_id="r")
    assert ledger_.balances([budget]) == [Balance(used=0, reserved=0)]
    assert ledger_.charged(["c"]) == [0]
    expired, refunded = _flushed(ledger_, records)
    assert (expired["status"], refunded["status"], refunded["revision"]) == ("expired", "error", 1)
    assert refunded["prompt_tokens"] + refunded["completion_tokens"] == 0


def test_one_redis_keeps_the_key_names_from_before_shards() -> None:
    """An upgrade keeps the counters and the reservations in flight: one shard, no tag."""
    ledger = RedisLedger(client=redis.Redis(), prefix="p:q:", initial_used=lambda _counter: 0)
    budget = _counter("organization:7:m2026-11", 100)
    assert ledger.reservation_id_new(organization_id=7).startswith("rsv_")
    assert ledger._counter_key(budget) == "p:q:organization:7:m2026-11"
    assert ledger._settle_keys("rsv_0123abcd") == [
        "p:q:resv:rsv_0123abcd",
        "p:q:resv:deadlines",
        "p:q:usage:records",
        "p:q:usage:events",
        "p:q:expired:rsv_0123abcd",
    ]


def test_on_a_cluster_a_reservation_lives_in_its_organizations_slot() -> None:
    layout = KeyLayout(shards=CLUSTER_SHARDS)
    ledger = RedisLedger(client=redis.Redis(), prefix="p:q:", initial_used=lambda _counter: 0, layout=layout)
    rid = ledger.reservation_id_new(organization_id=1)  # the organization of `_counter`'s budgets
    slots = {key_slot(key.encode()) for key in ledger._settle_keys(rid)}
    assert slots == {key_slot(ledger._counter_key(_counter("organization:1:m2026-11", 100)).encode())}
    # One made before the cluster (a queued job's) is shard 0's; its id alone says where.
    assert layout.reservation_shard("rsv_0123abcd") == 0
    assert layout.reservation_shard(rid) == 1
