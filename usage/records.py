"""Usage records, daily rollups and budget events in the database, and the flush that moves
them there from the ledger's Redis streams.

The flush cannot be poisoned: a batch is written in one transaction, and when that fails,
entry by entry, so that an entry the database refuses (or that cannot be read) is set aside as
a `UsageDeadLetter` and every other entry lands. A database that cannot be reached is not an
entry's fault: the batch stays in the stream and is written on the next run.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.db.models import F

from common.shared_redis import SharedRedis
from usage.ledger import RedisLedger
from usage.models import BudgetEvent, UsageDaily, UsageDeadLetter, UsageRecord

logger = logging.getLogger(__name__)

_ROLLUP_FIELDS = ("organization_id", "day", "model", "api_key_id", "user_id", "end_user", "endpoint")
_RECORD_COLUMNS = (
    "reservation_id",
    "revision",
    "request_id",
    "organization_id",
    "api_key_id",
    "user_id",
    "end_user",
    "endpoint",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "status",
    "created_at",
)


@dataclass(frozen=True)
class _Row:
    reservation_id: str
    revision: int
    request_id: str
    organization_id: int
    api_key_id: int | None
    user_id: int | None
    end_user: str
    endpoint: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    status: str
    created_at: datetime

    @classmethod
    def parse(cls, r: dict[str, Any]) -> _Row:
        """Raises KeyError, ValueError or TypeError on a malformed record."""
        created_at = r["created_at"]
        if isinstance(created_at, str):
            created_at = datetime.fromisoformat(created_at)

        def optional_id(name: str) -> int | None:
            return int(r[name]) if r.get(name) is not None else None

        return cls(
            reservation_id=str(r.get("reservation_id") or r["request_id"]),
            revision=int(r.get("revision") or 0),
            request_id=str(r["request_id"]),
            organization_id=int(r["organization_id"]),
            api_key_id=optional_id("api_key_id"),
            user_id=optional_id("user_id"),
            end_user=str(r.get("end_user") or ""),
            endpoint=str(r["endpoint"]),
            model=str(r["model"]),
            prompt_tokens=int(r.get("prompt_tokens") or 0),
            completion_tokens=int(r.get("completion_tokens") or 0),
            latency_ms=int(r.get("latency_ms") or 0),
            status=str(r.get("status") or "ok"),
            created_at=created_at,
        )

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, column) for column in _RECORD_COLUMNS)

    def group(self) -> tuple[Any, ...]:
        day = self.created_at.astimezone(UTC).date()
        return (
            self.organization_id,
            day,
            self.model,
            self.api_key_id or 0,
            self.user_id or 0,
            self.end_user,
            self.endpoint,
        )


def usage_records_write(records: Iterable[dict[str, Any]]) -> int:
    """Writes usage records and their daily rollups in one transaction: a record already
    written (a replayed entry) is skipped, a later revision of one replaces it and moves the
    rollups by the difference. Returns how many records were new."""
    latest: dict[str, _Row] = {}
    for record in records:
        row = _Row.parse(record)
        seen = latest.get(row.reservation_id)
        if seen is None or row.revision > seen.revision:
            latest[row.reservation_id] = row
    if not latest:
        return 0
    first = [row for row in latest.values() if row.revision == 0]
    revisions = [row for row in latest.values() if row.revision > 0]
    with transaction.atomic():
        inserted = _insert(first)
        for row in revisions:
            inserted += _revise(row)
    return inserted


def _insert(rows: list[_Row]) -> int:
    if not rows:
        return 0
    placeholders = ", ".join(["(" + ", ".join(["%s"] * len(_RECORD_COLUMNS)) + ")"] * len(rows))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO usage_usagerecord ({', '.join(_RECORD_COLUMNS)}) VALUES {placeholders} "
            "ON CONFLICT (reservation_id) DO NOTHING RETURNING reservation_id",
            [value for row in rows for value in row.values()],
        )
        inserted = {found[0] for found in cursor.fetchall()}
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0, 0])
    for row in rows:
        if row.reservation_id in inserted:
            totals = groups[row.group()]
            totals[0] += 1
            totals[1] += row.prompt_tokens
            totals[2] += row.completion_tokens
    _rollups_add(groups)
    return len(inserted)


def _revise(row: _Row) -> int:
    """Under the batch's transaction: replaces an earlier revision of the record (or writes it,
    when the earlier one has not arrived); returns 1 when the record is new."""
    existing = UsageRecord.objects.select_for_update().filter(reservation_id=row.reservation_id).first()
    if existing is None:
        if _insert([row]):
            return 1
        # Another flusher wrote an earlier revision since the read; it is committed now.
        existing = UsageRecord.objects.select_for_update().get(reservation_id=row.reservation_id)
    if existing.revision >= row.revision:
        return 0
    prompt_delta = row.prompt_tokens - existing.prompt_tokens
    completion_delta = row.completion_tokens - existing.completion_tokens
    UsageRecord.objects.filter(pk=existing.pk).update(
        revision=row.revision,
        status=row.status,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        latency_ms=row.latency_ms,
    )
    # The rollup group is the existing record's (same day, key, model, endpoint).
    UsageDaily.objects.filter(
        organization_id=existing.organization_id,
        day=existing.created_at.astimezone(UTC).date(),
        model=existing.model,
        api_key_id=existing.api_key_id or 0,
        user_id=existing.user_id or 0,
        end_user=existing.end_user,
        endpoint=existing.endpoint,
    ).update(
        prompt_tokens=F("prompt_tokens") + prompt_delta,
        completion_tokens=F("completion_tokens") + completion_delta,
    )
    return 0


def _rollups_add(groups: dict[tuple[Any, ...], list[int]]) -> None:
    if not groups:
        return
    values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"] * len(groups))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO usage_usagedaily ({', '.join(_ROLLUP_FIELDS)}, requests, prompt_tokens, "
            f"completion_tokens) VALUES {values} ON CONFLICT ({', '.join(_ROLLUP_FIELDS)}) DO UPDATE SET "
            "requests = usage_usagedaily.requests + excluded.requests, "
            "prompt_tokens = usage_usagedaily.prompt_tokens + excluded.prompt_tokens, "
            "completion_tokens = usage_usagedaily.completion_tokens + excluded.completion_tokens",
            [v for group, totals in groups.items() for v in (*group, *totals)],
        )


def budget_events_write(events: Iterable[dict[str, Any]]) -> None:
    objs = [
        BudgetEvent(
            organization_id=int(e["organization_id"]),
            kind=e["kind"],
            budget=e["budget"],
            period=e["period"],
            used=int(e["used"]),
            limit=int(e["limit"]),
        )
        for e in events
    ]
    for obj in objs:
        logger.warning(
            "Budget %s: %s (%s of %s tokens, period %s)",
            obj.kind,
            obj.budget,
            obj.used,
            obj.limit,
            obj.period,
            extra={"organization_id": obj.organization_id},
        )
    BudgetEvent.objects.bulk_create(objs, ignore_conflicts=True)


# --- The flush ----------------------------------------------------------------------------

_GROUP = "usage-flush"
# Errors that say the database is unreachable, not that an entry is bad.
_UNREACHABLE = (OperationalError, InterfaceError)
_BAD_ENTRY = (DatabaseError, KeyError, ValueError, TypeError, OverflowError)


def _write(stream: str, payloads: list[dict[str, Any]]) -> int:
    if stream == UsageDeadLetter.Stream.RECORDS:
        return usage_records_write(payloads)
    budget_events_write(payloads)
    return 0


def entries_write(stream: str, entries: list[tuple[str, bytes]]) -> int:
    """Writes raw stream entries (id, JSON); sets aside those that cannot be written."""
    try:
        return _write(stream, [json.loads(raw) for _, raw in entries])
    except _BAD_ENTRY as exc:
        if isinstance(exc, _UNREACHABLE) and not _database_reachable():
            raise
    written = 0
    for entry_id, raw in entries:
        try:
            with transaction.atomic():
                written += _write(stream, [json.loads(raw)])
        except _BAD_ENTRY as exc:
            if isinstance(exc, _UNREACHABLE) and not _database_reachable():
                raise
            logger.error("Usage %s entry %s set aside: %s", stream, entry_id, exc)
            UsageDeadLetter.objects.create(
                stream=stream,
                entry_id=entry_id,
                payload=raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw),
                error=f"{type(exc).__name__}: {exc}"[:2000],
            )
    return written


def _database_reachable() -> bool:
    try:
        connection.close_if_unusable_or_obsolete()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except _UNREACHABLE:
        return False


def stream_flush(*, ledger: RedisLedger, batch_size: int = 1000, max_batches: int = 100) -> int:
    """Moves settled usage records and budget events from the Redis streams (each shard's,
    `usage.ledger.keys`) into the database; up to `max_batches` of each stream. Entries are
    acknowledged only after they are written or set aside; entries a dead flusher left pending
    are claimed after a minute. Safe to run in several processes at once."""
    consumer = f"{socket.gethostname()}-{os.getpid()}"
    written = 0
    for records_stream, events_stream in ledger.streams():
        for stream, key, field_name in (
            (UsageDeadLetter.Stream.RECORDS, records_stream, b"r"),
            (UsageDeadLetter.Stream.EVENTS, events_stream, b"e"),
        ):
            written += _one_stream_flush(
                ledger.client,
                stream=stream,
                key=key,
                field_name=field_name,
                consumer=consumer,
                batch_size=batch_size,
                max_batches=max_batches,
            )
    return written


def _one_stream_flush(
    client: SharedRedis,
    *,
    stream: str,
    key: str,
    field_name: bytes,
    consumer: str,
    batch_size: int,
    max_batches: int,
) -> int:
    written = 0
    try:
        client.xgroup_create(key, _GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    client.xautoclaim(key, _GROUP, consumer, min_idle_time=60_000, count=batch_size)
    for _ in range(max_batches):
        # Pending entries of this consumer first (id "0"), then new ones (">").
        # redis-py types stream replies loosely (RESP2 and RESP3 shapes); this is RESP2's.
        entries: Any = client.xreadgroup(_GROUP, consumer, {key: "0"}, count=batch_size)
        if not entries or not entries[0][1]:
            entries = client.xreadgroup(_GROUP, consumer, {key: ">"}, count=batch_size)
        if not entries or not entries[0][1]:
            break
        batch = [(entry_id.decode(), fields.get(field_name, b"")) for entry_id, fields in entries[0][1]]
        written += entries_write(stream, batch)
        ids = [entry_id for entry_id, _ in batch]
        client.xack(key, _GROUP, *ids)
        client.xdel(key, *ids)
    return written


def stream_pending(*, ledger: RedisLedger) -> int:
    pipe = ledger.client.pipeline(transaction=False)
    for records_stream, _events in ledger.streams():
        pipe.xlen(records_stream)
    return sum(int(length) for length in pipe.execute())


def dead_letters_retry(*, dead_letters: Iterable[UsageDeadLetter]) -> tuple[int, int]:
    """Writes set-aside entries again (after their cause was fixed); each one that lands is
    removed. Returns (landed, still failing)."""
    landed = failing = 0
    for letter in dead_letters:
        try:
            with transaction.atomic():
                _write(letter.stream, [json.loads(letter.payload)])
                letter.delete()
            landed += 1
        except _BAD_ENTRY as exc:
            UsageDeadLetter.objects.filter(pk=letter.pk).update(error=f"{type(exc).__name__}: {exc}"[:2000])
            failing += 1
    return landed, failing
