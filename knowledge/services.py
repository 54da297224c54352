from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta
from functools import partial
from typing import Any

import numpy as np
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts.context import AuthContext
from accounts.models import Organization
from common.after_response import after_response
from common.errors import APIError
from inference.services import (
    GenerationSpec,
    embedder_get,
    embedding_model_name,
    prompt_tokens_count,
    prompt_tokens_limit,
)
from knowledge.indexes import index_catch_up, index_change_record, index_rebuild, index_store, org_key
from knowledge.keywords import keyword_index_add, keyword_index_remove, keyword_search
from knowledge.lib.chunking import chunk_embedding_text, chunk_text
from knowledge.lib.headings import Heading, heading_path, section_headings
from knowledge.lib.index import IndexStoreError
from knowledge.lib.packing import pack_passages
from knowledge.lib.parsing import DocumentError, UnsupportedFormat, extract_text, sniff_format
from knowledge.metrics import ingestion_stage
from knowledge.models import Chunk, Document, KnowledgeChange
from knowledge.selectors import chunk_ids_of_documents, chunks_by_ids, indexed_document_count
from usage.services import QuotaExceeded, Reservation, quota_hold, quota_reserve
from webhooks.services import webhook_emit

logger = logging.getLogger(__name__)


class UnsupportedMediaType(APIError):
    status = 415
    code = "unsupported_file_type"


class PayloadTooLarge(APIError):
    status = 413
    code = "file_too_large"


# --- Upload -------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadOutcome:
    document: Document
    duplicate: bool


# What a multipart body adds to its file: boundaries, part headers and a title, a few hundred
# bytes. A body declaring more than the upload limit plus this cannot hold an acceptable file.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def _document_too_large(size: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The document is {size} bytes; the limit is {settings.KNOWLEDGE_MAX_UPLOAD_BYTES}.", param="file"
    )


def upload_declared_size_check(*, declared_bytes: int) -> None:
    """Refuses, before a byte of its body is read, an upload request whose declared length
    (Content-Length) cannot hold a document within KNOWLEDGE_MAX_UPLOAD_BYTES."""
    limit = settings.KNOWLEDGE_MAX_UPLOAD_BYTES
    if declared_bytes > limit + MULTIPART_OVERHEAD_BYTES:
        raise PayloadTooLarge(
            f"The request declares {declared_bytes} bytes; a document is at most {limit}.", param="file"
        )


def document_upload_file(
    *, organization: Organization, upload: UploadedFile, title: str | None
) -> UploadOutcome:
    """document_upload for a multipart file. Django has streamed it to its upload handler (in
    memory up to FILE_UPLOAD_MAX_MEMORY_SIZE, a temporary file beyond) and measured it: a file
    over the limit is refused before it is read into memory, and the read stops at the limit."""
    limit = settings.KNOWLEDGE_MAX_UPLOAD_BYTES
    if upload.size is not None and upload.size > limit:
        raise _document_too_large(upload.size)
    data = upload.read(limit + 1)
    if len(data) > limit:
        raise _document_too_large(upload.size or len(data))
    return document_upload(
        organization=organization,
        data=data,
        filename=upload.name or "upload",
        content_type=upload.content_type,
        title=title,
    )


def document_upload(
    *, organization: Organization, data: bytes, filename: str, content_type: str | None, title: str | None
) -> UploadOutcome:
    """Stores an upload and queues its ingestion. The same content uploaded twice to one
    organization returns the existing document instead of indexing it again."""
    if not data.strip():
        raise APIError("The document is empty.", param="file", code="empty_document")
    if len(data) > settings.KNOWLEDGE_MAX_UPLOAD_BYTES:
        raise _document_too_large(len(data))
    try:
        document_format = sniff_format(data=data, filename=filename, content_type=content_type)
    except UnsupportedFormat as exc:
        raise UnsupportedMediaType(f"{exc}.", param="file") from exc
    except DocumentError as exc:
        raise APIError(
            f"The document cannot be read: {exc}.", param="file", code="unreadable_document"
        ) from exc
    content_hash = hashlib.sha256(data).hexdigest()
    existing = (
        Document.objects.filter(organization=organization, content_hash=content_hash).defer("data").first()
    )
    if existing is not None:
        return UploadOutcome(document=existing, duplicate=True)
    try:
        with transaction.atomic():
            document = Document.objects.create(
                organization=organization,
                title=(title or filename or "Untitled")[:300],
                filename=filename[:300],
                content_type=(content_type or "")[:120],
                format=document_format,
                size_bytes=len(data),
                content_hash=content_hash,
                data=data,
            )
    except IntegrityError:  # the same content uploaded concurrently
        existing = (
            Document.objects.filter(organization=organization, content_hash=content_hash).defer("data").get()
        )
        return UploadOutcome(document=existing, duplicate=True)
    _queue_ingestion(document.pk)
    return UploadOutcome(document=document, duplicate=False)


def _queue_ingestion(document_id: int) -> None:
    from knowledge.tasks import ingest_document

    transaction.on_commit(lambda: ingest_document.delay(document_id))


# --- Ingestion ----------------------------------------------------------------------------


_WEBHOOK_EVENTS: dict[str, str] = {
    Document.Status.INDEXED: "document.indexed",
    Document.Status.FAILED: "document.failed",
}


def _set_status(document: Document, status: str, **fields: Any) -> None:
    document.status = status
    document.heartbeat_at = timezone.now()
    for name, value in fields.items():
        setattr(document, name, value)
    Document.objects.filter(pk=document.pk).update(
        status=status, heartbeat_at=document.heartbeat_at, **fields
    )
    if status in _WEBHOOK_EVENTS:
        webhook_emit(
            organization_id=document.organization_id,
            type=_WEBHOOK_EVENTS[status],
            data={
                "document": {
                    "id": document.pk,
                    "title": document.title,
                    "status": status,
                    "chunks_total": document.chunks_total,
                    "error": document.error,
                }
            },
        )


def _claim(document_id: int) -> Document | None:
    """Marks the document as being parsed by this worker, unless it is done or someone else
    works on it (a fresh heartbeat)."""
    stale = timezone.now() - timedelta(seconds=settings.KNOWLEDGE_STALE_SECONDS)
    claimable = (
        Q(status=Document.Status.PENDING)
        | Q(status__in=Document.RUNNING, heartbeat_at__lt=stale)
        | Q(status__in=Document.RUNNING, heartbeat_at__isnull=True)
    )
    claimed = Document.objects.filter(claimable, pk=document_id).update(
        status=Document.Status.PARSING,
        heartbeat_at=timezone.now(),
        attempts=F("attempts") + 1,
        error="",
        chunks_total=0,
        chunks_embedded=0,
    )
    return Document.objects.filter(pk=document_id).first() if claimed else None


def document_ingest(*, document_id: int) -> None:
    """pending → parsing → chunking → embedding → indexed, or failed with the reason. A user's
    bad file ends `failed`; it never raises out of here, so it cannot take a worker down.
    Re-running on a half-ingested document starts it over cleanly."""
    document = _claim(document_id)
    if document is None:
        return
    try:
        _ingest(document)
    except DocumentError as exc:
        _set_status(document, Document.Status.FAILED, error=str(exc))
    except Exception as exc:
        logger.exception("Ingestion of document %s failed", document.pk)
        _set_status(
            document, Document.Status.FAILED, error=f"Internal error while ingesting: {type(exc).__name__}"
        )


def _ingest(document: Document) -> None:
    with ingestion_stage("parse", document_id=document.pk):
        parsed = extract_text(
            data=bytes(document.data),
            filename=document.filename or document.title,
            content_type=document.content_type or None,
        )
    title = document.title or parsed.title or document.filename
    _set_status(document, Document.Status.CHUNKING)
    embedder = embedder_get()
    with ingestion_stage("chunk", document_id=document.pk):
        pieces = chunk_text(
            text=parsed.text,
            title=title,
            tokenizer=embedder.tokenizer,
            max_tokens=embedder.max_tokens,
            overlap_tokens=settings.KNOWLEDGE_CHUNK_OVERLAP_TOKENS,
        )
        headings = section_headings(parsed.text)
    _chunks_delete(document)  # a previous attempt's chunks
    reservation = _ingestion_reserve(document, tokens=sum(piece.token_count for piece in pieces))
    try:
        with ingestion_stage("embed", document_id=document.pk):
            _embed_and_index(document, pieces=pieces, title=title, headings=headings)
    except BaseException:
        reservation.release(status="error")
        raise
    reservation.settle(prompt_tokens=reservation.amount, completion_tokens=0)
    with ingestion_stage("index", document_id=document.pk), transaction.atomic():
        _set_status(document, Document.Status.INDEXED, indexed_at=timezone.now())
        # Read after the status update, which waits for a concurrent delete: a deleted
        # document has no chunks left to publish.
        index_change_record(
            organization=document.organization_id,
            action=KnowledgeChange.Action.ADDED,
            chunk_ids=chunk_ids_of_documents(organization=document.organization, document_ids=[document.pk]),
        )


def _ingestion_reserve(document: Document, *, tokens: int) -> Reservation:
    """Ingestion is metered as embeddings are: the tokens it embeds, on the organization's
    budget, reserved before any is embedded (a budget that cannot take them fails the document
    with the reason). A worker that dies mid-way charges nothing: the next attempt starts over
    and is charged then."""
    context = AuthContext(organization=document.organization, scopes=frozenset(), method="ingestion")
    try:
        return quota_reserve(
            context=context,
            end_user=None,
            endpoint="ingestion",
            model=embedding_model_name(),
            request_id=f"document-{document.pk}",
            amount=tokens,
            prompt_tokens=tokens,
            free_if_abandoned=True,
        )
    except QuotaExceeded as exc:
        raise DocumentError(f"Not indexed: {exc.message}") from exc


def _embed_and_index(document: Document, *, pieces: list[Any], title: str, headings: list[Heading]) -> None:
    embedder = embedder_get()
    _set_status(document, Document.Status.EMBEDDING, chunks_total=len(pieces), chunks_embedded=0)
    batch = settings.KNOWLEDGE_EMBED_BATCH
    groups = [pieces[start : start + batch] for start in range(0, len(pieces), batch)]
    texts = [[chunk_embedding_text(chunk=c, title=title) for c in group] for group in groups]
    # The next batch is encoded in a thread (the encoder releases the GIL) while this one is
    # written to the database on the caller's connection.
    with ThreadPoolExecutor(max_workers=1) as encoder:
        future = encoder.submit(embedder.embed, texts[0], batch_size=batch) if groups else None
        done = 0
        for index, group in enumerate(groups):
            assert future is not None
            embedded = future.result()
            if index + 1 < len(groups):
                future = encoder.submit(embedder.embed, texts[index + 1], batch_size=batch)
            done += len(group)
            _write_chunks(document, group, embedded, done, headings)
    # The vectors reach the indexes from the database once the document is indexed (`_ingest`).


def _write_chunks(
    document: Document, group: list[Any], embedded: np.ndarray, done: int, headings: list[Heading]
) -> list[int]:
    created = Chunk.objects.bulk_create(
        [
            Chunk(
                organization_id=document.organization_id,
                document_id=document.pk,
                position=c.position,
                text=c.text,
                heading=heading_path(headings, start_char=c.start_char),
                start_char=c.start_char,
                end_char=c.end_char,
                token_count=c.token_count,
                embedding=vector.astype(np.float32).tobytes(),
            )
            for c, vector in zip(group, embedded, strict=True)
        ]
    )
    keyword_index_add(
        rows=[
            (chunk.pk, chunk.organization_id, chunk.document_id, chunk.text, chunk.heading)
            for chunk in created
        ]
    )
    Document.objects.filter(pk=document.pk).update(chunks_embedded=done, heartbeat_at=timezone.now())
    return [chunk.pk for chunk in created]


def _chunks_delete(document: Document) -> None:
    chunks = Chunk.objects.filter(document=document)
    keyword_index_remove(chunk_ids=list(chunks.values_list("pk", flat=True)))
    chunks.delete()


def document_retry(*, document: Document) -> Document:
    if document.status not in (Document.Status.FAILED, *Document.RUNNING):
        raise APIError(
            f"Only a failed or stalled document can be retried; this one is {document.status}.",
            param="status",
            code="not_retryable",
            status=409,
        )
    Document.objects.filter(pk=document.pk).update(
        status=Document.Status.PENDING, heartbeat_at=None, error=""
    )
    _queue_ingestion(document.pk)
    document.refresh_from_db()
    return document


def documents_recover_stale() -> int:
    """Queues again the documents whose worker died mid-ingestion (no heartbeat for a while);
    fails those that have used up their attempts. Runs on beat."""
    stale = timezone.now() - timedelta(seconds=settings.KNOWLEDGE_STALE_SECONDS)
    abandoned = Document.objects.filter(status__in=Document.RUNNING, heartbeat_at__lt=stale).defer("data")
    count = 0
    for document in abandoned:
        if document.attempts >= settings.KNOWLEDGE_MAX_ATTEMPTS:
            _set_status(
                document,
                Document.Status.FAILED,
                error=f"Ingestion was interrupted {document.attempts} times; retry it or upload again.",
            )
        else:
            with transaction.atomic():
                _queue_ingestion(document.pk)
        count += 1
    return count


@transaction.atomic
def document_delete(*, document: Document) -> None:
    """Deletes the document, its chunks and its vectors. The search also checks every hit against
    the database, so a deleted document is never retrieved even before its vectors are gone."""
    chunk_ids = list(Chunk.objects.filter(document=document).values_list("pk", flat=True))
    organization_id = document.organization_id
    keyword_index_remove(chunk_ids=chunk_ids)
    document.delete()

    # Gone from this process's index once committed, from the others' at their next search.
    index_change_record(
        organization=organization_id, action=KnowledgeChange.Action.REMOVED, chunk_ids=chunk_ids
    )


# --- Retrieval ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchHit:
    document_id: int
    title: str
    chunk_id: int
    position: int
    score: float
    text: str


SEARCH_MODES = ("hybrid", "vector", "keyword")

# Reciprocal rank fusion (Cormack, Clarke and Buettcher, 2009): a passage's fused score is the sum,
# over the rankings it is in, of 1 / (RRF_K + its rank). 60 is the paper's constant: a first place
# in one ranking weighs little more than a tenth place, so agreement between the two wins.
RRF_K = 60
# How deep each ranking is read before fusing: a passage the keywords rank first but the vectors
# rank 30th (or the reverse) must still reach the fusion.
FUSION_DEPTH = 50
# Threads that embed search queries; started at the first search, so never before a fork.
_QUERY_ENCODER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="query-embedding")


def search(
    *,
    organization: Organization,
    query: str,
    top_k: int,
    document_ids: list[int] | None = None,
    min_score: float | None = None,
    mode: str = "hybrid",
) -> list[SearchHit]:
    """The organization's passages that best answer `query`: by meaning (`vector`), by the words
    they share with it (`keyword`), or both fused by reciprocal rank (`hybrid`). `score` is the
    cosine similarity, the keyword rank or the fused score accordingly; `min_score` is always a
    cosine similarity. Every candidate is checked against the database."""
    if mode not in SEARCH_MODES:
        raise ValueError(f"unknown search mode {mode!r}")
    depth = max(top_k, FUSION_DEPTH) if mode == "hybrid" else top_k
    # The query is embedded on another thread (the encoder releases the GIL) while this one runs
    # the keyword search in the database: hybrid costs the longer of the two, not their sum.
    embedding = (
        _QUERY_ENCODER.submit(embedder_get().embed, [query])
        if mode != "keyword" or min_score is not None
        else None
    )
    keyword = (
        keyword_search(organization_id=organization.pk, query=query, k=depth, document_ids=document_ids)
        if mode != "vector"
        else []
    )
    vector = embedding.result()[0] if embedding is not None else None
    similarity: dict[int, float] = {}
    rankings: list[list[tuple[int, float]]] = []
    if mode != "keyword":
        assert vector is not None
        found = _vector_candidates(organization, vector, depth, document_ids)
        similarity = {hit_id: score for hit_id, score in found}
        rankings.append(found)
    if mode != "vector":
        rankings.append([(hit.id, hit.score) for hit in keyword])
    ranked = _rrf(rankings) if mode == "hybrid" else rankings[0]
    if min_score is not None:
        assert vector is not None
        missing = [hit_id for hit_id, _ in ranked if hit_id not in similarity]
        similarity.update(_similarities(organization, missing, vector))
        ranked = [(hit_id, score) for hit_id, score in ranked if similarity[hit_id] >= min_score]
    return _checked_hits(organization, ranked, top_k)


def _vector_candidates(
    organization: Organization, vector: np.ndarray, k: int, document_ids: list[int] | None
) -> list[tuple[int, float]]:
    allowed = None
    if document_ids is not None:
        allowed = chunk_ids_of_documents(organization=organization, document_ids=document_ids)
        if not allowed:
            return []
    index_catch_up(organization=organization)
    store, key = index_store(), org_key(organization)
    try:
        found = store.search(org_key=key, query_vector=vector, k=k, allowed_ids=allowed)
    except IndexStoreError:
        if index_rebuild(organization=organization) == 0:
            return []
        found = store.search(org_key=key, query_vector=vector, k=k, allowed_ids=allowed)
    return [(hit.id, float(hit.score)) for hit in found]


def _rrf(rankings: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (hit_id, _score) in enumerate(ranking, start=1):
            fused[hit_id] = fused.get(hit_id, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


def _similarities(organization: Organization, chunk_ids: list[int], vector: np.ndarray) -> dict[int, float]:
    """Cosine similarity of each chunk to the query, from the embeddings in the database (for
    keyword hits that the vector search did not return)."""
    if not chunk_ids:
        return {}
    rows = Chunk.objects.filter(organization=organization, pk__in=chunk_ids).values_list("pk", "embedding")
    return {pk: float(np.frombuffer(bytes(embedding), dtype=np.float32) @ vector) for pk, embedding in rows}


def _checked_hits(organization: Organization, ranked: list[tuple[int, float]], top_k: int) -> list[SearchHit]:
    """The first `top_k` candidates that are chunks of this organization's indexed documents.
    Read a few at a time: a stale candidate (deleted, re-ingesting) is rare."""
    hits: list[SearchHit] = []
    batch = max(2 * top_k, 10)
    for start in range(0, len(ranked), batch):
        part = ranked[start : start + batch]
        chunks = chunks_by_ids(organization=organization, chunk_ids=[hit_id for hit_id, _ in part])
        for hit_id, score in part:
            chunk = chunks.get(hit_id)
            if chunk is None:
                continue
            hits.append(
                SearchHit(
                    document_id=chunk.document_id,
                    title=chunk.document.title,
                    chunk_id=chunk.pk,
                    position=chunk.position,
                    score=round(float(score), 6),
                    text=chunk.text,
                )
            )
            if len(hits) == top_k:
                return hits
    return hits


NO_DOCUMENTS_NOTE = (
    "Your organization has no indexed documents yet: the answer is not grounded in any source. "
    "Upload documents with POST /api/v1/documents/."
)


def rag_prompt(*, question: str, hits: list[SearchHit]) -> str:
    sources = "\n\n".join(f"[{i}] {hit.title}\n{hit.text}" for i, hit in enumerate(hits, start=1))
    return (
        "Answer the question using only the numbered sources below, and cite them as [1], [2].\n\n"
        f"Sources:\n{sources}\n\nQuestion: {question}\nAnswer:"
    )


@dataclass(frozen=True)
class RagSource:
    """A passage the prompt holds. `hit.text` is the text it holds: the passage, or its leading
    sentences when `trimmed`; `used_tokens` is what it takes of the prompt."""

    hit: SearchHit
    used_tokens: int
    trimmed: bool


@dataclass(frozen=True)
class RagContext:
    """What generation gets for a rag/ request: the enriched request and the sources it holds."""

    spec: GenerationSpec
    sources: list[RagSource]
    note: str | None


def search_metered(
    *,
    context: AuthContext,
    query: str,
    top_k: int,
    document_ids: list[int] | None,
    min_score: float | None,
    request_id: str,
    admitted: Reservation | None,
    mode: str = "hybrid",
) -> list[SearchHit]:
    """`search` for the API: the query's embedding is charged as embeddings are (its tokens, at
    the embedding model), on the budget admission held. A keyword search embeds nothing (unless
    `min_score` asks for similarities) and is charged nothing."""
    tokens = embedder_get().count_tokens(query)
    reservation = quota_hold(
        admitted=admitted,
        context=context,
        end_user=None,
        endpoint="search",
        model=embedding_model_name(),
        request_id=request_id,
        amount=tokens,
        prompt_tokens=tokens,
    )
    try:
        hits = search(
            organization=context.organization,
            query=query,
            top_k=top_k,
            document_ids=document_ids,
            min_score=min_score,
            mode=mode,
        )
    except BaseException:
        reservation.release(status="error")
        raise
    embedded = 0 if mode == "keyword" and min_score is None else tokens
    # Charged once the response is sent (the tokens stay reserved until then).
    after_response(partial(reservation.settle, prompt_tokens=embedded, completion_tokens=0))
    return hits


def rag_retrieve(
    *,
    context: AuthContext,
    spec: GenerationSpec,
    top_k: int,
    document_ids: list[int] | None,
    mode: str = "hybrid",
) -> RagContext:
    """Retrieves from the caller's index and builds the prompt with numbered sources, packed to
    fit the model's context (`rag_pack`). The enriched prompt is what is counted and charged."""
    organization = context.organization
    if indexed_document_count(organization=organization) == 0:
        return RagContext(spec=spec, sources=[], note=NO_DOCUMENTS_NOTE)
    assert spec.prompt is not None
    hits = search(
        organization=organization, query=spec.prompt, top_k=top_k, document_ids=document_ids, mode=mode
    )
    sources = rag_pack(organization=organization, spec=spec, hits=hits)
    enriched = replace(spec, prompt=rag_prompt(question=spec.prompt, hits=[s.hit for s in sources]))
    note = None if hits else "No passage of your documents matched the question."
    return RagContext(spec=enriched, sources=sources, note=note)


def rag_pack(*, organization: Organization, spec: GenerationSpec, hits: list[SearchHit]) -> list[RagSource]:
    """The hits the prompt can hold, by rank: what the model's context leaves beside
    `max_tokens` and the question in its template, counted as the model counts the framed
    request; the last one is cut at a sentence boundary. A context too small for even one
    passage is a 400 that says so. With no known context length, every hit is used."""
    question = spec.prompt
    assert question is not None

    def count(texts: list[str]) -> int:
        passages = [replace(hit, text=text) for hit, text in zip(hits, texts, strict=False)]
        return prompt_tokens_count(
            organization=organization, spec=replace(spec, prompt=rag_prompt(question=question, hits=passages))
        )

    limit = prompt_tokens_limit(organization=organization, spec=spec)
    packing = pack_passages(passages=[hit.text for hit in hits], count=count, limit=limit)
    if hits and not packing.passages:
        assert limit is not None
        raise APIError(
            f"The sources do not fit: the model's {limit + spec.max_tokens}-token context, less "
            f"max_tokens ({spec.max_tokens}) and the question in its template ({packing.base_tokens}), "
            f"leaves {max(0, limit - packing.base_tokens)} tokens, too few for even one passage. "
            "Lower max_tokens or shorten the question.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return [
        RagSource(hit=replace(hits[p.rank], text=p.text), used_tokens=p.used_tokens, trimmed=p.trimmed)
        for p in packing.passages
    ]
