"""The ledger on Redis: every operation one Lua script, one atomic round trip, shared by every
web and Celery process."""

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

_CHARGED_TTL = 400 * 86_400

# KEYS: reservation hash, deadlines zset, window keys..., counter keys...
# ARGV: amount, deadline, now, record json, counters json, window count,
#       prompt tokens, charge on expiry, charged key,
#       then per window: limit, amount, ttl, fit (1/0); then per counter: limit, ttl
_RESERVE = """
local amount = tonumber(ARGV[1])
local w = tonumber(ARGV[6])
local n = #KEYS - 2 - w
local wbase = 9
local cbase = wbase + 4 * w
for i = 1, n do
  if redis.call('EXISTS', KEYS[2 + w + i]) == 0 then return {'init', i} end
end
local counts = {}
local refused = 0
for i = 1, w do
  local a = wbase + 4 * (i - 1)
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
  local a = wbase + 4 * (i - 1)
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
redis.call('HSET', KEYS[1], 'amount', amount, 'record', ARGV[4], 'counters', ARGV[5],
  'prompt', ARGV[7], 'expiry_charge', ARGV[8], 'charged_key', ARGV[9])
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]), KEYS[1])
return {'ok', counts}
"""

# Shared by the scripts that charge: releases `release` reserved tokens and adds `tokens` (which
# a correction may make negative) to every counter and to the charged total; reports the soft
# thresholds crossed upwards.
_CHARGE = (
    f"local CHARGED_TTL = {_CHARGED_TTL}\n"
    """
local function charge(counters, release, tokens, events, organization_id, charged_key)
  local crossed = {}
  for _, c in ipairs(counters) do
    local key, threshold = c[1], tonumber(c[3])
    local before = tonumber(redis.call('HGET', key, 'used') or '0')
    if release ~= 0 then redis.call('HINCRBY', key, 'reserved', -release) end
    if tokens ~= 0 then redis.call('HINCRBY', key, 'used', tokens) end
    if tokens > 0 and before < threshold and before + tokens >= threshold then
      table.insert(crossed, c[4])
      redis.call('XADD', events, '*', 'e', cjson.encode({
        organization_id = organization_id, kind = 'threshold', budget = c[4],
        period = c[5], used = before + tokens, limit = tonumber(c[2])}))
    end
  end
  if charged_key and charged_key ~= '' and tokens ~= 0 then
    redis.call('INCRBY', charged_key, tokens)
    redis.call('EXPIRE', charged_key, CHARGED_TTL)
  end
  return crossed
end
"""
)

# KEYS: reservation hash, deadlines zset, records stream, events stream, tombstone
# ARGV: tokens, record update json
_SETTLE = (
    _CHARGE
    + """
local tokens = tonumber(ARGV[1])
local amount = redis.call('HGET', KEYS[1], 'amount')
if amount then
  local h = redis.call('HMGET', KEYS[1], 'record', 'counters', 'charged_key')
  local record = cjson.decode(h[1])
  for k, v in pairs(cjson.decode(ARGV[2])) do record[k] = v end
  record.revision = 0
  local crossed = charge(cjson.decode(h[2]), tonumber(amount), tokens, KEYS[4],
    record.organization_id, h[3])
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], KEYS[1])
  redis.call('XADD', KEYS[3], '*', 'r', cjson.encode(record))
  return {'settled', crossed}
end
local t = redis.call('HMGET', KEYS[5], 'charged', 'record', 'counters', 'charged_key')
if not t[1] then return false end
local record = cjson.decode(t[2])
for k, v in pairs(cjson.decode(ARGV[2])) do record[k] = v end
record.revision = 1
local crossed = charge(cjson.decode(t[3]), 0, tokens - tonumber(t[1]), KEYS[4],
  record.organization_id, t[4])
redis.call('DEL', KEYS[5])
redis.call('XADD', KEYS[3], '*', 'r', cjson.encode(record))
return {'corrected', crossed}
"""
)

# KEYS: reservation hash, deadlines zset, records stream, events stream, tombstone
# ARGV: now, tombstone ttl
_EXPIRE = (
    _CHARGE
    + """
local deadline = redis.call('ZSCORE', KEYS[2], KEYS[1])
if not deadline or tonumber(deadline) > tonumber(ARGV[1]) then return 0 end
local h = redis.call('HMGET', KEYS[1], 'amount', 'record', 'counters', 'charged_key', 'prompt', 'expiry_charge')
redis.call('ZREM', KEYS[2], KEYS[1])
if not h[1] then return 0 end
local amount = tonumber(h[1])
local charged = math.min(amount, tonumber(h[6] or h[1]))
local record = cjson.decode(h[2])
local prompt = math.min(tonumber(h[5] or '0'), charged)
charge(cjson.decode(h[3]), amount, charged, KEYS[4], record.organization_id, h[4])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[5], 'charged', charged, 'record', h[2], 'counters', h[3], 'charged_key', h[4] or '')
redis.call('EXPIRE', KEYS[5], tonumber(ARGV[2]))
record.status = 'expired'
record.prompt_tokens = prompt
record.completion_tokens = charged - prompt
record.latency_ms = 0
record.revision = 0
redis.call('XADD', KEYS[3], '*', 'r', cjson.encode(record))
return 1
"""
)

# KEYS: reservation hash. ARGV: amount wanted, prompt tokens
_GROW = """
local h = redis.call('HMGET', KEYS[1], 'amount', 'counters', 'expiry_charge')
if not h[1] then return {'gone'} end
local amount, want = tonumber(h[1]), tonumber(ARGV[1])
if want <= amount then return {'ok'} end
local extra = want - amount
local counters = cjson.decode(h[2])
for i, c in ipairs(counters) do
  local used = tonumber(redis.call('HGET', c[1], 'used') or '0')
  local reserved = tonumber(redis.call('HGET', c[1], 'reserved') or '0')
  if used + reserved + extra > tonumber(c[2]) then return {'refused', i, used, reserved} end
end
for _, c in ipairs(counters) do redis.call('HINCRBY', c[1], 'reserved', extra) end
redis.call('HSET', KEYS[1], 'amount', want, 'prompt', ARGV[2])
if tonumber(h[3] or h[1]) == amount then redis.call('HSET', KEYS[1], 'expiry_charge', want) end
return {'ok'}
"""

# KEYS: reservation hash, deadlines zset
_CANCEL = """
local h = redis.call('HMGET', KEYS[1], 'amount', 'counters')
if not h[1] then return 0 end
for _, c in ipairs(cjson.decode(h[2])) do redis.call('HINCRBY', c[1], 'reserved', -tonumber(h[1])) end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
return 1
"""

# KEYS: reservation hash, deadlines zset. ARGV: deadline, charge on expiry
_ADOPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'expiry_charge', ARGV[2])
redis.call('ZADD', KEYS[2], tonumber(ARGV[1]), KEYS[1])
return 1
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
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._expire = client.register_script(_EXPIRE)
        self._adopt = client.register_script(_ADOPT)
        self._grow = client.register_script(_GROW)
        self._cancel = client.register_script(_CANCEL)
        self._balances = client.register_script(_BALANCES)

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
