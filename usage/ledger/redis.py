"""The ledger on Redis: every operation one Lua script (`usage.ledger.scripts`), one atomic round
trip, shared by every web and Celery process; on one Redis or a Redis Cluster (`usage.ledger.keys`)."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from common.shared_redis import SharedRedis
from usage.ledger.base import (
    TOMBSTONE_SECONDS,
    Admitted,
    Balance,
    Counter,
    InitialUsed,
    Ledger,
    ReserveRefused,
    Settlement,
    Window,
    WindowRefused,
)
from usage.ledger.keys import KeyLayout
from usage.ledger.scripts import ADOPT, BALANCES, CANCEL, EXPIRE, GROW, RESERVE, SETTLE


class RedisLedger(Ledger):
    """Keys: `prefix` + the shard's tag + the name (`usage.ledger.keys`). Every script touches
    the keys of one shard only, those in KEYS and those it reads from the reservation (its
    counters and charged total), so on a Redis Cluster each runs on one node, atomically."""

    RECORDS_STREAM = "usage:records"
    EVENTS_STREAM = "usage:events"

    def __init__(
        self, *, client: SharedRedis, prefix: str, initial_used: InitialUsed, layout: KeyLayout | None = None
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.initial_used = initial_used
        self.layout = layout or KeyLayout()
        self._reserve = client.register_script(RESERVE)
        self._settle = client.register_script(SETTLE)
        self._expire = client.register_script(EXPIRE)
        self._adopt = client.register_script(ADOPT)
        self._grow = client.register_script(GROW)
        self._cancel = client.register_script(CANCEL)
        self._balances = client.register_script(BALANCES)

    def _k(self, name: str) -> str:
        """A key whose name carries its shard's tag already (windows, charged totals)."""
        return f"{self.prefix}{name}"

    def _shard_key(self, shard: int, name: str) -> str:
        return f"{self.prefix}{self.layout.tag(shard)}{name}"

    def _counter_key(self, counter: Counter) -> str:
        return self._k(self.layout.organization_tag(counter.organization_id) + counter.key)

    def _reservation_key(self, reservation_id: str) -> str:
        return self._shard_key(self.layout.reservation_shard(reservation_id), f"resv:{reservation_id}")

    def _deadlines(self, shard: int) -> str:
        return self._shard_key(shard, "resv:deadlines")

    def shards(self) -> range:
        return range(self.layout.shards)

    def streams(self) -> list[tuple[str, str]]:
        """Each shard's records stream and events stream."""
        return [
            (self._shard_key(shard, self.RECORDS_STREAM), self._shard_key(shard, self.EVENTS_STREAM))
            for shard in self.shards()
        ]

    def reservation_id_new(self, *, organization_id: int) -> str:
        return self.layout.reservation_id_new(organization_id=organization_id)

    def _init_counter(self, counter: Counter) -> None:
        key = self._counter_key(counter)
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
        prompt_tokens: int = 0,
        charge_on_expiry: int | None = None,
        charged_key: str = "",
    ) -> ReserveRefused | None:
        outcome = self.admit(
            reservation_id=reservation_id,
            counters=counters,
            amount=amount,
            record=record,
            ttl_seconds=ttl_seconds,
            windows=(),
            prompt_tokens=prompt_tokens,
            charge_on_expiry=charge_on_expiry,
            charged_key=charged_key,
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
        prompt_tokens: int = 0,
        charge_on_expiry: int | None = None,
        charged_key: str = "",
    ) -> Admitted | ReserveRefused | WindowRefused:
        """Counts the rate-limit windows and reserves on the budgets in one atomic round trip:
        a window over its limit refuses before any budget is touched, a budget that cannot
        take `amount` refuses before any tokens-per-minute are added."""
        now = time.time()
        shard = self.layout.reservation_shard(reservation_id)
        if any(self.layout.organization_shard(c.organization_id) != shard for c in counters):
            raise ValueError(f"{reservation_id} is not in the shard of its counters (reservation_id_new)")
        keys = [self._reservation_key(reservation_id), self._deadlines(shard)]
        keys += [window.key for window in windows]
        keys += [self._counter_key(c) for c in counters]
        described = json.dumps(
            [[self._counter_key(c), c.limit, c.threshold, c.label, c.period] for c in counters]
        )
        args: list[Any] = [
            amount,
            now + ttl_seconds,
            now,
            json.dumps(record),
            described,
            len(windows),
            prompt_tokens,
            amount if charge_on_expiry is None else charge_on_expiry,
            self._k(charged_key) if charged_key else "",
        ]
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

    def _settle_keys(self, reservation_id: str) -> list[str]:
        shard = self.layout.reservation_shard(reservation_id)
        return [
            self._reservation_key(reservation_id),
            self._deadlines(shard),
            self._shard_key(shard, self.RECORDS_STREAM),
            self._shard_key(shard, self.EVENTS_STREAM),
            self._shard_key(shard, f"expired:{reservation_id}"),
        ]

    def settle(self, *, reservation_id: str, record_update: dict[str, Any], tokens: int) -> Settlement | None:
        result = self._settle(
            keys=self._settle_keys(reservation_id), args=[tokens, json.dumps(record_update)]
        )
        if result is None:
            return None
        return Settlement(
            crossed_threshold=tuple(x.decode() for x in result[1]), late=result[0] == b"corrected"
        )

    def grow(
        self, *, reservation_id: str, counters: list[Counter], amount: int, prompt_tokens: int
    ) -> ReserveRefused | None:
        result = self._grow(keys=[self._reservation_key(reservation_id)], args=[amount, prompt_tokens])
        if result[0] != b"refused":
            return None
        return ReserveRefused(
            counter=counters[int(result[1]) - 1],
            balance=Balance(used=int(result[2]), reserved=int(result[3])),
        )

    def cancel(self, *, reservation_id: str) -> bool:
        keys = [
            self._reservation_key(reservation_id),
            self._deadlines(self.layout.reservation_shard(reservation_id)),
        ]
        return bool(self._cancel(keys=keys))

    def extend(self, *, reservation_ids: Sequence[str], ttl_seconds: int) -> None:
        if not reservation_ids:
            return
        deadline = time.time() + ttl_seconds
        by_shard: dict[int, dict[str, float]] = defaultdict(dict)
        for rid in reservation_ids:
            by_shard[self.layout.reservation_shard(rid)][self._reservation_key(rid)] = deadline
        pipe = self.client.pipeline(transaction=False)
        for shard, deadlines in by_shard.items():
            # XX: a reservation settled or expired meanwhile is not brought back.
            pipe.zadd(self._deadlines(shard), deadlines, xx=True, gt=True)
        pipe.execute()

    def adopt(self, *, reservation_id: str, ttl_seconds: int, charge_on_expiry: int) -> bool:
        keys = [
            self._reservation_key(reservation_id),
            self._deadlines(self.layout.reservation_shard(reservation_id)),
        ]
        return bool(self._adopt(keys=keys, args=[time.time() + ttl_seconds, charge_on_expiry]))

    def balances(self, counters: list[Counter]) -> list[Balance]:
        if not counters:
            return []
        rows = self._balances(keys=[self._counter_key(c) for c in counters])
        balances = []
        for counter, (used, reserved) in zip(counters, rows, strict=True):
            used_value = int(used)
            if used_value < 0:  # not in Redis yet: what the database says
                used_value = self.initial_used(counter)
            balances.append(Balance(used=used_value, reserved=int(reserved)))
        return balances

    def charged(self, keys: Sequence[str]) -> list[int | None]:
        if not keys:
            return []
        # One GET each: the totals of several organizations lie in several slots.
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.get(self._k(key))
        return [None if value is None else int(value) for value in pipe.execute()]

    def active_reservations(self) -> int:
        pipe = self.client.pipeline(transaction=False)
        for shard in self.shards():
            pipe.zcard(self._deadlines(shard))
        return sum(int(count) for count in pipe.execute())

    def expire(self, *, now: float | None = None, limit: int = 500) -> int:
        """Up to `limit` reservations of each shard."""
        deadline = now if now is not None else time.time()
        expired = 0
        for shard in self.shards():
            members: list[bytes] = self.client.zrangebyscore(  # type: ignore[assignment]
                self._deadlines(shard), "-inf", deadline, start=0, num=limit
            )
            for member in members:
                reservation_id = member.decode().removeprefix(self._shard_key(shard, "resv:"))
                # The script checks the deadline again: an `extend` since the read wins.
                expired += int(
                    self._expire(keys=self._settle_keys(reservation_id), args=[deadline, TOMBSTONE_SECONDS])
                )
        return expired
