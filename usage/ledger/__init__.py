"""The token ledger: budget counters and reservations, atomic across every process.

A request reserves `prompt + max_tokens` on every budget that applies, all or nothing, before
inference; afterwards it settles to the tokens actually used and releases the rest. Settlement
also appends the usage record to a stream that a flusher writes to the database in batches, so
recording costs the request no database round trip.

Nothing admitted is free. A process keeps its running reservations alive (`extend`); one whose
process died expires after its deadline and is charged what it held (`charge_on_expiry`: the
whole reservation, or nothing for a job still waiting in its queue), and a settlement that
arrives after that corrects the charge to the real count (a tombstone remembers what expiry
charged). Every charge is also added to the organization's monthly `charged` total, which
`usage_reconcile` compares with the usage records and the invoices.

Two implementations with the same semantics: `RedisLedger` (Lua scripts: each operation is one
atomic round trip, shared by every web and Celery process) and `LocalLedger` (one process, a
lock; the embedded default of `make run`).

Counters are keyed by period (`d2026-11-27`, `m2026-11`, `all`), so a budget resets at its
boundary by starting a new key. A counter missing from Redis is rebuilt from the database's
usage records (`initial_used`), so losing Redis loses no spend that reached the database.

On a Redis Cluster the keys are spread in shards, one hash slot each (`usage.ledger.keys`).
"""

from usage.ledger.base import (
    REFUNDED,
    Admitted,
    Balance,
    Counter,
    InitialUsed,
    Ledger,
    ReserveRefused,
    Settlement,
    Sink,
    Window,
    WindowRefused,
)
from usage.ledger.keys import CLUSTER_SHARDS, KeyLayout
from usage.ledger.local import LocalLedger
from usage.ledger.redis import RedisLedger

__all__ = [
    "CLUSTER_SHARDS",
    "REFUNDED",
    "Admitted",
    "Balance",
    "Counter",
    "InitialUsed",
    "KeyLayout",
    "Ledger",
    "LocalLedger",
    "RedisLedger",
    "ReserveRefused",
    "Settlement",
    "Sink",
    "Window",
    "WindowRefused",
]
