"""The process's IndexStore, kept in step with the database.

The chunks in the database are the truth; each process's index files are a cache of them. Every
change to what a search can find (a document becomes indexed, a document is deleted) is recorded
as a `KnowledgeChange` at the organization's next `KnowledgeVersion`, in the transaction that makes
it. An index file records the version it reflects; before a search, `index_catch_up` compares it
with the database's (one primary-key query) and applies the changes in between, or rebuilds the
file from the chunks when it cannot (no file, a damaged one, a change no longer in the log). So a
document indexed or deleted on one machine is found or gone on every other at its next search,
with no shared disk.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from functools import partial

import numpy as np
import numpy.typing as npt
from django.conf import settings
from django.db import transaction
from django.db.models import F

from accounts.models import Organization
from knowledge.lib.index import IndexStore, IndexStoreError
from knowledge.models import Chunk, Document, KnowledgeChange, KnowledgeVersion

logger = logging.getLogger(__name__)

# Catch-up attempts before rebuilding instead; one fails only when another process sharing the
# folder replaced the file meanwhile.
_CATCH_UP_ATTEMPTS = 3
# Changes kept per organization. A process further behind rebuilds its file from the chunks,
# which costs about what replaying that many changes would.
_CHANGES_KEPT = 10_000
# Ids per query when fetching embeddings (SQLite accepts 32,766 parameters).
_FETCH_BATCH = 5_000

_store: IndexStore | None = None
_lock = threading.Lock()


def index_store() -> IndexStore:
    global _store
    with _lock:
        if _store is None or _store.root != settings.KNOWLEDGE_INDEX_DIR:
            _store = IndexStore(
                settings.KNOWLEDGE_INDEX_DIR, approximate_threshold=settings.KNOWLEDGE_APPROXIMATE_THRESHOLD
            )
        return _store


def org_key(organization: Organization | int) -> str:
    return f"org{organization if isinstance(organization, int) else organization.pk}"


def _organization_id(organization: Organization | int) -> int:
    return organization if isinstance(organization, int) else organization.pk


def index_version_current(*, organization: Organization | int) -> int:
    """The version of the organization's searchable chunks in the database (0 before any change)."""
    version = (
        KnowledgeVersion.objects.filter(organization_id=_organization_id(organization))
        .values_list("version", flat=True)
        .first()
    )
    return version or 0


def index_change_record(
    *, organization: Organization | int, action: KnowledgeChange.Action, chunk_ids: Sequence[int]
) -> int | None:
    """Records that these chunks became searchable (`ADDED`) or stopped being (`REMOVED`), at the
    organization's next version; returns it, or None when there were no chunks. Once the
    transaction commits, this process's index catches up at once; others at their next search.

    Precondition: called inside the transaction that makes the change, after its own writes. The
    version row stays locked until that transaction ends, so the changes of one organization
    commit in version order, and taking that lock last keeps writers free of deadlocks.
    """
    if not chunk_ids:
        return None
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("index_change_record must run in the transaction that changes the chunks")
    organization_id = _organization_id(organization)
    KnowledgeVersion.objects.get_or_create(organization_id=organization_id)
    KnowledgeVersion.objects.filter(organization_id=organization_id).update(version=F("version") + 1)
    version = index_version_current(organization=organization_id)
    KnowledgeChange.objects.create(
        organization_id=organization_id,
        version=version,
        action=action,
        chunk_ids=np.asarray(chunk_ids, dtype="<i8").tobytes(),
    )
    KnowledgeChange.objects.filter(
        organization_id=organization_id, version__lte=version - _CHANGES_KEPT
    ).delete()
    transaction.on_commit(partial(_catch_up_after_commit, organization_id))
    return version


def _catch_up_after_commit(organization_id: int) -> None:
    try:
        index_catch_up(organization=organization_id)
    except Exception:
        # The change is committed and the index is only a cache: the next search catches up.
        logger.exception("Index of organization %s could not catch up; the next search will", organization_id)


def index_catch_up(*, organization: Organization | int) -> None:
    """Brings this process's index of the organization to the database's version: applies the
    changes since the version its file holds, or rebuilds the file when there is none, it is
    damaged, it is ahead of the database (a database restored from a backup), or a change it
    needs is no longer in the log."""
    organization_id = _organization_id(organization)
    key, store = org_key(organization_id), index_store()
    for _ in range(_CATCH_UP_ATTEMPTS):
        try:
            held = store.version(org_key=key)
        except IndexStoreError:
            break
        # Read after the file's version: a file is never written with a version newer than the
        # database had, so `current` can only be older when the database itself went back.
        current = index_version_current(organization=organization_id)
        if held == current:
            return
        if held > current:
            break
        delta = _changes_since(organization_id=organization_id, held=held, current=current)
        if delta is None:
            break
        added, vectors, removed = delta
        try:
            if store.apply(
                org_key=key,
                base_version=held,
                version=current,
                add_ids=added,
                add_vectors=vectors,
                remove_ids=removed,
            ):
                return
        except IndexStoreError:
            break
    index_rebuild(organization=organization_id)


def _changes_since(
    *, organization_id: int, held: int, current: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.int64]] | None:
    """The net change from version `held` to `current`: the chunks to add, with their embeddings,
    and the chunks to remove. None when the log no longer holds every change in between."""
    rows = list(
        KnowledgeChange.objects.filter(
            organization_id=organization_id, version__gt=held, version__lte=current
        )
        .order_by("version")
        .values_list("action", "chunk_ids")
    )
    if len(rows) != current - held:
        return None
    added: set[int] = set()
    removed: set[int] = set()
    for action, blob in rows:
        ids = np.frombuffer(bytes(blob), dtype="<i8").tolist()
        if action == KnowledgeChange.Action.ADDED:
            added.update(ids)
            removed.difference_update(ids)
        else:
            removed.update(ids)
            added.difference_update(ids)
    # A chunk added then deleted by a change after `current` is gone already; that change will
    # remove it, so it is simply left out.
    found: list[int] = []
    vectors: list[npt.NDArray[np.float32]] = []
    wanted = sorted(added)
    for start in range(0, len(wanted), _FETCH_BATCH):
        rows_found = Chunk.objects.filter(
            organization_id=organization_id, pk__in=wanted[start : start + _FETCH_BATCH]
        ).values_list("pk", "embedding")
        for pk, embedding in rows_found:
            found.append(pk)
            vectors.append(np.frombuffer(bytes(embedding), dtype=np.float32))
    return (
        np.asarray(found, dtype=np.int64),
        np.vstack(vectors) if vectors else np.zeros((0, 0), dtype=np.float32),
        np.asarray(sorted(removed), dtype=np.int64),
    )


def index_rebuild(*, organization: Organization | int) -> int:
    """Rebuilds the organization's index from the chunks of its indexed documents."""
    organization_id = _organization_id(organization)
    # Read before the chunks, so the file holds at least this version's changes (replaying a
    # change it already holds is harmless; missing one would not be).
    version = index_version_current(organization=organization_id)
    rows = Chunk.objects.filter(
        organization_id=organization_id, document__status=Document.Status.INDEXED
    ).values_list("pk", "embedding")
    ids, vectors = [], []
    for pk, embedding in rows.iterator(chunk_size=2000):
        ids.append(pk)
        vectors.append(np.frombuffer(bytes(embedding), dtype=np.float32))
    store = index_store()
    if not ids:
        store.drop(org_key=org_key(organization_id))
        return 0
    store.rebuild(
        org_key=org_key(organization_id),
        ids=np.asarray(ids, dtype=np.int64),
        vectors=np.vstack(vectors),
        version=version,
    )
    return len(ids)
