"""The process's IndexStore, and rebuilding an organization's index from the database."""

from __future__ import annotations

import threading

import numpy as np
from django.conf import settings

from accounts.models import Organization
from knowledge.lib.index import IndexStore
from knowledge.models import Chunk, Document

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


def index_rebuild(*, organization: Organization) -> int:
    """Rebuilds the organization's index from the chunks of its indexed documents."""
    rows = Chunk.objects.filter(
        organization=organization, document__status=Document.Status.INDEXED
    ).values_list("pk", "embedding")
    ids, vectors = [], []
    for pk, embedding in rows.iterator(chunk_size=2000):
        ids.append(pk)
        vectors.append(np.frombuffer(bytes(embedding), dtype=np.float32))
    store = index_store()
    if not ids:
        store.drop(org_key=org_key(organization))
        return 0
    store.rebuild(
        org_key=org_key(organization), ids=np.asarray(ids, dtype=np.int64), vectors=np.vstack(vectors)
    )
    return len(ids)
