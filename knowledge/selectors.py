from __future__ import annotations

from collections.abc import Iterable

from django.db.models import QuerySet

from accounts.models import Organization
from knowledge.models import Chunk, Document


def document_list(*, organization: Organization) -> QuerySet[Document]:
    return Document.objects.filter(organization=organization).defer("data")


def document_get(*, organization: Organization, document_id: int) -> Document | None:
    """The organization's document, or None whether it does not exist or is someone else's."""
    return document_list(organization=organization).filter(pk=document_id).first()


def chunks_by_ids(*, organization: Organization, chunk_ids: Iterable[int]) -> dict[int, Chunk]:
    """Chunks of indexed documents of this organization only: an id from another tenant, or of a
    deleted or re-ingesting document, is simply absent.

    Two primary-key lookups rather than one join: with a join, PostgreSQL may scan every chunk
    of a large document and filter the ids (30 ms at 100,000 chunks) instead of using the key.
    """
    chunks = list(
        Chunk.objects.filter(organization=organization, pk__in=list(chunk_ids)).defer("embedding").order_by()
    )
    documents = {
        document.pk: document
        for document in Document.objects.filter(
            organization=organization,
            pk__in={chunk.document_id for chunk in chunks},
            status=Document.Status.INDEXED,
        ).only("id", "title", "organization_id", "status")
    }
    found = {}
    for chunk in chunks:
        document = documents.get(chunk.document_id)
        if document is not None:
            chunk.document = document
            found[chunk.pk] = chunk
    return found


def chunk_ids_of_documents(*, organization: Organization, document_ids: Iterable[int]) -> list[int]:
    return list(
        Chunk.objects.filter(organization=organization, document_id__in=list(document_ids)).values_list(
            "pk", flat=True
        )
    )


def indexed_document_count(*, organization: Organization) -> int:
    return Document.objects.filter(organization=organization, status=Document.Status.INDEXED).count()
