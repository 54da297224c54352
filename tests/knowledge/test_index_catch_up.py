"""A process's index catches up with the database: the changes since the version its file holds
are applied, or the file is rebuilt when that cannot be done. Two "machines" are two index
folders of this one process; a change recorded without running its on-commit hook is a change
made on another machine."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.management import call_command
from django.db import transaction

from accounts.models import Organization
from knowledge import indexes
from knowledge.indexes import (
    index_catch_up,
    index_change_record,
    index_store,
    index_version_current,
    org_key,
)
from knowledge.lib.index import IndexMissing
from knowledge.models import Chunk, Document, KnowledgeChange
from knowledge.services import document_delete
from tests.conftest import Tenant

DIM = 16
Machine = Callable[[], AbstractContextManager[None]]


@pytest.fixture
def machine(settings: Any, tmp_path: Path) -> Callable[[str], Machine]:
    """`machine("b")()` is a context in which this process uses machine b's own index folder."""

    def named(name: str) -> Machine:
        @contextmanager
        def using() -> Iterator[None]:
            previous = settings.KNOWLEDGE_INDEX_DIR
            settings.KNOWLEDGE_INDEX_DIR = tmp_path / f"machine-{name}"
            try:
                yield
            finally:
                settings.KNOWLEDGE_INDEX_DIR = previous

        return using

    return named


def indexed_document(organization: Organization, *, chunks: int, seed: int) -> Document:
    """A document with its chunks, made indexed in one transaction as ingestion does, on a
    machine other than the ones the test looks at (its on-commit hook does not run)."""
    data = f"document {seed}".encode()
    with transaction.atomic():
        document = Document.objects.create(
            organization=organization,
            title=f"Document {seed}",
            size_bytes=len(data),
            content_hash=hashlib.sha256(data).hexdigest(),
            data=data,
            status=Document.Status.INDEXED,
        )
        vectors = np.random.default_rng(seed).standard_normal((chunks, DIM)).astype(np.float32)
        created = Chunk.objects.bulk_create(
            Chunk(
                organization=organization,
                document=document,
                position=position,
                text=f"chunk {position}",
                start_char=0,
                end_char=1,
                token_count=1,
                embedding=(vector / np.linalg.norm(vector)).tobytes(),
            )
            for position, vector in enumerate(vectors)
        )
        index_change_record(
            organization=organization,
            action=KnowledgeChange.Action.ADDED,
            chunk_ids=[chunk.pk for chunk in created],
        )
    return document


def chunk_ids(*documents: Document) -> set[int]:
    return set(Chunk.objects.filter(document__in=documents).values_list("pk", flat=True))


def held_ids(organization: Organization) -> set[int]:
    store, key = index_store(), org_key(organization)
    return {hit.id for hit in store.search(org_key=key, query_vector=np.ones(DIM), k=10_000)}


def held_version(organization: Organization) -> int:
    return index_store().version(org_key=org_key(organization))


def refuse_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, catching up must not fall back on a rebuild."""

    def refuse(**_: Any) -> int:
        raise AssertionError("rebuilt instead of catching up")

    monkeypatch.setattr(indexes, "index_rebuild", refuse)


def test_chunks_indexed_elsewhere_are_added(
    alice: Tenant, machine: Callable[[str], Machine], monkeypatch: pytest.MonkeyPatch
) -> None:
    org = alice.organization
    first = indexed_document(org, chunks=3, seed=1)
    with machine("b")():
        index_catch_up(organization=org)
        assert held_ids(org) == chunk_ids(first)
    second = indexed_document(org, chunks=4, seed=2)
    refuse_rebuild(monkeypatch)
    with machine("b")():
        assert held_ids(org) == chunk_ids(first)  # stale until it catches up
        index_catch_up(organization=org)
        assert held_ids(org) == chunk_ids(first, second)
        assert held_version(org) == index_version_current(organization=org) == 2


def test_chunks_deleted_elsewhere_are_removed(
    alice: Tenant, machine: Callable[[str], Machine], monkeypatch: pytest.MonkeyPatch
) -> None:
    org = alice.organization
    kept = indexed_document(org, chunks=3, seed=1)
    deleted = indexed_document(org, chunks=2, seed=2)
    with machine("b")():
        index_catch_up(organization=org)
        assert held_ids(org) == chunk_ids(kept, deleted)
    gone = chunk_ids(deleted)
    document_delete(document=deleted)
    refuse_rebuild(monkeypatch)
    with machine("b")():
        assert gone <= held_ids(org)  # stale until it catches up
        index_catch_up(organization=org)
        assert held_ids(org) == chunk_ids(kept)
        assert held_version(org) == 3


def test_a_process_far_behind_catches_up_in_one_step(
    alice: Tenant, machine: Callable[[str], Machine], monkeypatch: pytest.MonkeyPatch
) -> None:
    org = alice.organization
    first = indexed_document(org, chunks=3, seed=1)
    with machine("b")():
        index_catch_up(organization=org)
    second = indexed_document(org, chunks=2, seed=2)
    third = indexed_document(org, chunks=2, seed=3)
    document_delete(document=second)
    fourth = indexed_document(org, chunks=5, seed=4)
    document_delete(document=first)
    fifth = indexed_document(org, chunks=1, seed=5)
    refuse_rebuild(monkeypatch)
    with machine("b")():
        index_catch_up(organization=org)
        assert held_ids(org) == chunk_ids(third, fourth, fifth)
        assert held_version(org) == 7


def test_a_change_no_longer_in_the_log_means_a_rebuild(
    alice: Tenant, machine: Callable[[str], Machine]
) -> None:
    org = alice.organization
    first = indexed_document(org, chunks=3, seed=1)
    with machine("b")():
        index_catch_up(organization=org)
    second = indexed_document(org, chunks=2, seed=2)
    third = indexed_document(org, chunks=2, seed=3)
    KnowledgeChange.objects.filter(organization=org, version=2).delete()  # pruned
    with machine("b")():
        index_catch_up(organization=org)
        assert held_ids(org) == chunk_ids(first, second, third)
        assert held_version(org) == 3


def test_the_log_keeps_the_latest_changes_and_a_process_behind_them_rebuilds(
    alice: Tenant, machine: Callable[[str], Machine], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(indexes, "_CHANGES_KEPT", 2)
    org = alice.organization
    first = indexed_document(org, chunks=3, seed=1)
    with machine("b")():
        index_catch_up(organization=org)
    others = [indexed_document(org, chunks=2, seed=seed) for seed in (2, 3, 4)]
    changes = KnowledgeChange.objects.filter(organization=org).order_by("version")
    assert list(changes.values_list("version", flat=True)) == [3, 4]
    with machine("b")():
        index_catch_up(organization=org)
        assert held_ids(org) == chunk_ids(first, *others)
        assert held_version(org) == 4


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage"])
def test_a_missing_or_damaged_file_is_rebuilt(
    alice: Tenant, machine: Callable[[str], Machine], tmp_path: Path, damage: str
) -> None:
    org = alice.organization
    first = indexed_document(org, chunks=3, seed=1)
    with machine("b")():
        index_catch_up(organization=org)
    second = indexed_document(org, chunks=2, seed=2)
    path = tmp_path / "machine-b" / f"{org_key(org)}.faiss"
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    else:
        path.write_bytes(b"not an index at all")
    with machine("b")():
        index_catch_up(organization=org)
        assert held_ids(org) == chunk_ids(first, second)
        assert held_version(org) == 2


def test_a_file_ahead_of_the_database_is_rebuilt(alice: Tenant, machine: Callable[[str], Machine]) -> None:
    """A database restored from an older backup: the file's version means nothing any more."""
    org = alice.organization
    first = indexed_document(org, chunks=3, seed=1)
    with machine("b")():
        index_store().rebuild(
            org_key=org_key(org), ids=[10**9], vectors=np.ones((1, DIM), dtype=np.float32), version=50
        )
        index_catch_up(organization=org)
        assert held_ids(org) == chunk_ids(first)
        assert held_version(org) == 1


def test_the_process_that_makes_a_change_applies_it_at_once(
    alice: Tenant, machine: Callable[[str], Machine], django_capture_on_commit_callbacks: Any
) -> None:
    org = alice.organization
    kept = indexed_document(org, chunks=3, seed=1)
    deleted = indexed_document(org, chunks=2, seed=2)
    with machine("a")():
        index_catch_up(organization=org)
        with django_capture_on_commit_callbacks(execute=True):
            document_delete(document=deleted)
        assert held_ids(org) == chunk_ids(kept)
        assert held_version(org) == 3
        with django_capture_on_commit_callbacks(execute=True):
            added = indexed_document(org, chunks=2, seed=3)
        assert held_ids(org) == chunk_ids(kept, added)
        assert held_version(org) == 4


def test_each_organization_has_its_own_versions_and_changes(
    alice: Tenant, charlie: Tenant, machine: Callable[[str], Machine]
) -> None:
    alices = indexed_document(alice.organization, chunks=3, seed=1)
    with machine("b")():
        index_catch_up(organization=alice.organization)
    charlies = indexed_document(charlie.organization, chunks=2, seed=2)
    document_delete(document=charlies)
    charlies_second = indexed_document(charlie.organization, chunks=2, seed=3)
    with machine("b")():
        index_catch_up(organization=alice.organization)
        assert held_ids(alice.organization) == chunk_ids(alices)
        assert held_version(alice.organization) == 1
        index_catch_up(organization=charlie.organization)
        assert held_ids(charlie.organization) == chunk_ids(charlies_second)
        assert held_version(charlie.organization) == 3


def test_an_organization_with_nothing_indexed_has_no_file(
    alice: Tenant, machine: Callable[[str], Machine]
) -> None:
    org = alice.organization
    only = indexed_document(org, chunks=2, seed=1)
    document_delete(document=only)
    with machine("b")():
        index_catch_up(organization=org)
        with pytest.raises(IndexMissing):
            held_version(org)


def test_rebuild_index_command_records_the_version(alice: Tenant, machine: Callable[[str], Machine]) -> None:
    org = alice.organization
    first = indexed_document(org, chunks=3, seed=1)
    second = indexed_document(org, chunks=2, seed=2)
    with machine("b")():
        call_command("rebuild_index", org=org.slug, stdout=io.StringIO())
        assert held_ids(org) == chunk_ids(first, second)
        assert held_version(org) == 2
