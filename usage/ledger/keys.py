"""Where the ledger's keys live: in shards, each one hash slot of a Redis Cluster.

On a Redis Cluster a Lua script may touch the keys of one hash slot only, and admission touches
an organization's budget counters, its rate-limit windows and its monthly charged total together
with the reservation, the deadlines of open reservations and the streams that settlement and
expiry append to. So each shard has its own deadlines and streams, and every key of an
organization carries its shard's hash tag (`{q7-11}:`): an organization's admission stays one
atomic script. An organization's shard is `organization_id % shards`; a reservation's id names
its shard (`rsv_s7_…`), since settling, growing, adopting or expiring it knows only the id.
The flush, expiry and metrics go over every shard.

One Redis has one shard, with no tag: its keys are the ones from before shards existed, so an
upgrade keeps its counters and reservations in flight, and a reservation made before
(`rsv_<hex>`) is shard 0's. The count is fixed per deployment (`CLUSTER_SHARDS` on a cluster):
changing it moves organizations to other shards, whose counters are then rebuilt from the
database, as after losing Redis.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

# Enough shards that the cluster's nodes share the load, few enough that a flush, which reads
# each shard's streams, stays a few dozen round trips.
CLUSTER_SHARDS = 16

_SHARDED_PREFIX = "rsv_s"


@dataclass(frozen=True)
class KeyLayout:
    shards: int = 1

    def tag(self, shard: int) -> str:
        return f"{{{_tag_name(shard, self.shards)}}}:" if self.shards > 1 else ""

    def organization_shard(self, organization_id: int) -> int:
        return organization_id % self.shards

    def organization_tag(self, organization_id: int) -> str:
        return self.tag(self.organization_shard(organization_id))

    def reservation_id_new(self, *, organization_id: int) -> str:
        if self.shards == 1:
            return f"rsv_{uuid.uuid4().hex}"
        return f"{_SHARDED_PREFIX}{self.organization_shard(organization_id)}_{uuid.uuid4().hex}"

    def reservation_shard(self, reservation_id: str) -> int:
        # A hex id never starts with "s": `rsv_<hex>` is an id made with one shard.
        if self.shards > 1 and reservation_id.startswith(_SHARDED_PREFIX):
            number = reservation_id[len(_SHARDED_PREFIX) :].split("_", 1)[0]
            if number.isdigit() and int(number) < self.shards:
                return int(number)
        return 0


@cache
def _tag_name(shard: int, shards: int) -> str:
    """The first of `q<shard>`, `q<shard>-1`, … whose slot lies in the shard's equal part of the
    slots: the shards then spread evenly over nodes that split the slots in equal ranges (as
    `redis-cli --cluster create` does), where `q0`…`q15` fall 4, 4 and 8 on three nodes."""
    low = shard * REDIS_CLUSTER_HASH_SLOTS // shards
    high = (shard + 1) * REDIS_CLUSTER_HASH_SLOTS // shards
    attempt = 0
    while True:
        name = f"q{shard}" if attempt == 0 else f"q{shard}-{attempt}"
        if low <= key_slot(name.encode()) < high:
            return name
        attempt += 1
