from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from accounts.services import api_key_create
from knowledge.indexes import index_store, org_key
from knowledge.models import Chunk, Document
from knowledge.services import documents_recover_stale
from tests.conftest import Tenant, assert_error_shape
from tests.knowledge_lib.conftest import build_docx, build_pdf

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("eager_tasks")]

CLASSES = (
    "Classes provide a means of bundling data and functionality together. Creating a new class creates a new "
    "type of object, allowing new instances of that type to be made. Each class instance can have attributes "
    "attached to it for maintaining its state."
)
GENERATORS = (
    "A generator function returns an iterator. It looks like a normal function except that it contains yield "
    "expressions for producing a series of values usable in a for-loop."
)


def _upload_text(tenant: Tenant, title: str, text: str, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        return tenant.client().post("/api/v1/documents/", {"title": title, "text": text}, format="json")


def _upload_file(tenant: Tenant, name: str, data: bytes, content_type: str, capture):
    with capture(execute=True):
        return tenant.client().post(
            "/api/v1/documents/", {"file": SimpleUploadedFile(name, data, content_type)}, format="multipart"
        )


def test_text_upload_is_ingested_to_indexed_with_chunks(
    alice: Tenant, django_capture_on_commit_callbacks
) -> None:
    response = _upload_text(alice, "Classes", CLASSES, django_capture_on_commit_callbacks)
    assert response.status_code == 202, response.content
    document = alice.client().get(f"/api/v1/documents/{response.json()['id']}/").json()
    assert document["status"] == "indexed"
    assert document["chunks_total"] == document["chunks_embedded"] >= 1
    assert index_store().count(org_key=org_key(alice.organization)) == document["chunks_total"]


@pytest.mark.parametrize(
    ("name", "content_type", "make"),
    [
        ("notes.md", "text/markdown", lambda: b"# Classes\n\n" + CLASSES.encode()),
        (
            "page.html",
            "text/html",
            lambda: (
                b"<html><body><h1>Classes</h1><p>"
                + CLASSES.encode()
                + b"</p><script>x()</script></body></html>"
            ),
        ),
        ("doc.pdf", "application/pdf", lambda: build_pdf([[CLASSES]])),
        (
            "doc.docx",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            lambda: build_docx(paragraphs=[CLASSES]),
        ),
    ],
)
def test_each_format_is_ingested(
    alice: Tenant, django_capture_on_commit_callbacks, name, content_type, make
) -> None:
    response = _upload_file(alice, name, make(), content_type, django_capture_on_commit_callbacks)
    assert response.status_code == 202, response.content
    document = Document.objects.get(pk=response.json()["id"])
    assert document.status == "indexed", document.error
    assert "bundling data" in " ".join(Chunk.objects.filter(document=document).values_list("text", flat=True))


def test_empty_file_is_400(alice: Tenant, django_capture_on_commit_callbacks) -> None:
    response = _upload_file(alice, "empty.txt", b"   \n", "text/plain", django_capture_on_commit_callbacks)
    assert_error_shape(response, status=400, code="empty_document")


def test_too_large_file_is_413(alice: Tenant, settings, django_capture_on_commit_callbacks) -> None:
    settings.KNOWLEDGE_MAX_UPLOAD_BYTES = 100
    response = _upload_file(alice, "big.txt", b"x" * 101, "text/plain", django_capture_on_commit_callbacks)
    assert_error_shape(response, status=413, code="file_too_large")


def test_unsupported_type_is_415(alice: Tenant, django_capture_on_commit_callbacks) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    response = _upload_file(alice, "image.png", png, "image/png", django_capture_on_commit_callbacks)
    assert_error_shape(response, status=415, code="unsupported_file_type")


def test_corrupt_pdf_ends_failed_with_the_reason(alice: Tenant, django_capture_on_commit_callbacks) -> None:
    response = _upload_file(
        alice,
        "broken.pdf",
        b"%PDF-1.7\n this is not a pdf body",
        "application/pdf",
        django_capture_on_commit_callbacks,
    )
    assert response.status_code == 202
    document = alice.client().get(f"/api/v1/documents/{response.json()['id']}/").json()
    assert document["status"] == "failed"
    assert document["error"]


def test_zip_bomb_docx_ends_failed_without_decompressing(
    alice: Tenant, zip_bomb_docx: bytes, django_capture_on_commit_callbacks
) -> None:
    response = _upload_file(
        alice,
        "bomb.docx",
        zip_bomb_docx,
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        django_capture_on_commit_callbacks,
    )
    assert response.status_code in (202, 400)
    if response.status_code == 202:
        document = alice.client().get(f"/api/v1/documents/{response.json()['id']}/").json()
        assert document["status"] == "failed"
        assert "uncompress" in document["error"] or "limit" in document["error"]


def test_same_content_twice_is_indexed_once(alice: Tenant, django_capture_on_commit_callbacks) -> None:
    first = _upload_text(alice, "Classes", CLASSES, django_capture_on_commit_callbacks)
    second = _upload_text(alice, "Classes again", CLASSES, django_capture_on_commit_callbacks)
    assert second.status_code == 200
    assert second.json()["duplicate"] is True
    assert second.json()["id"] == first.json()["id"]
    assert Document.objects.filter(organization=alice.organization).count() == 1


def test_list_is_paginated_with_status_and_counts(alice: Tenant, django_capture_on_commit_callbacks) -> None:
    _upload_text(alice, "Classes", CLASSES, django_capture_on_commit_callbacks)
    _upload_text(alice, "Generators", GENERATORS, django_capture_on_commit_callbacks)
    page = alice.client().get("/api/v1/documents/", {"limit": 1}).json()
    assert page["count"] == 2 and len(page["results"]) == 1 and page["next"]
    assert {"status", "chunks_total", "chunks_embedded"} <= set(page["results"][0])


def test_search_ranks_the_relevant_chunk_first(alice: Tenant, django_capture_on_commit_callbacks) -> None:
    _upload_text(alice, "Classes", CLASSES, django_capture_on_commit_callbacks)
    _upload_text(alice, "Generators", GENERATORS, django_capture_on_commit_callbacks)
    hits = (
        alice.client()
        .post("/api/v1/search/", {"query": "how do I yield values lazily?", "top_k": 2}, format="json")
        .json()["data"]
    )
    assert [hit["title"] for hit in hits] == ["Generators", "Classes"]
    assert hits[0]["score"] > hits[1]["score"]
    assert {"document_id", "chunk_id", "score", "text", "title"} <= set(hits[0])


def test_search_restricted_to_document_ids_and_min_score(
    alice: Tenant, django_capture_on_commit_callbacks
) -> None:
    classes = _upload_text(alice, "Classes", CLASSES, django_capture_on_commit_callbacks).json()["id"]
    _upload_text(alice, "Generators", GENERATORS, django_capture_on_commit_callbacks)
    hits = (
        alice.client()
        .post("/api/v1/search/", {"query": "yield", "document_ids": [classes]}, format="json")
        .json()
    )
    assert {hit["document_id"] for hit in hits["data"]} == {classes}
    none = alice.client().post("/api/v1/search/", {"query": "yield", "min_score": 0.99}, format="json").json()
    assert none["data"] == []


def test_deleted_document_is_never_retrieved_again(alice: Tenant, django_capture_on_commit_callbacks) -> None:
    doc_id = _upload_text(alice, "Generators", GENERATORS, django_capture_on_commit_callbacks).json()["id"]
    with django_capture_on_commit_callbacks(execute=True):
        assert alice.client().delete(f"/api/v1/documents/{doc_id}/").status_code == 204
    assert alice.client().post("/api/v1/search/", {"query": "yield"}, format="json").json()["data"] == []
    assert_error_shape(alice.client().get(f"/api/v1/documents/{doc_id}/"), status=404)
    assert index_store().count(org_key=org_key(alice.organization)) == 0


def test_missing_or_damaged_index_is_rebuilt_from_the_database(
    alice: Tenant, index_dir, django_capture_on_commit_callbacks
) -> None:
    _upload_text(alice, "Generators", GENERATORS, django_capture_on_commit_callbacks)
    path = index_dir / f"{org_key(alice.organization)}.faiss"
    path.write_bytes(b"garbage")
    hits = alice.client().post("/api/v1/search/", {"query": "yield"}, format="json").json()["data"]
    assert hits and hits[0]["title"] == "Generators"
    path.unlink()
    assert alice.client().post("/api/v1/search/", {"query": "yield"}, format="json").json()["data"]


def test_abandoned_ingestion_is_queued_again(alice: Tenant, django_capture_on_commit_callbacks) -> None:
    response = _upload_text(alice, "Classes", CLASSES, django_capture_on_commit_callbacks)
    document = Document.objects.get(pk=response.json()["id"])
    # As a worker that died mid-document leaves it: running, no progress for a while.
    Document.objects.filter(pk=document.pk).update(
        status="embedding", heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert documents_recover_stale() == 1
    document.refresh_from_db()
    assert document.status == "indexed"
    assert document.attempts == 2
    assert Chunk.objects.filter(document=document).count() == document.chunks_total


def test_failed_document_can_be_retried(alice: Tenant, django_capture_on_commit_callbacks) -> None:
    response = _upload_file(
        alice, "broken.pdf", b"%PDF-1.7\n broken", "application/pdf", django_capture_on_commit_callbacks
    )
    doc_id = response.json()["id"]
    with django_capture_on_commit_callbacks(execute=True):
        retried = alice.client().post(f"/api/v1/documents/{doc_id}/retry/")
    assert retried.status_code == 202
    assert Document.objects.get(pk=doc_id).attempts == 2


def test_scopes_are_enforced(alice: Tenant) -> None:
    _key, reader = api_key_create(organization=alice.organization, name="reader", scopes=["documents:read"])
    response = alice.client(reader).post("/api/v1/documents/", {"title": "t", "text": "x"}, format="json")
    assert "documents:write" in assert_error_shape(response, status=403, code="missing_scope")["message"]
    assert alice.client(reader).get("/api/v1/documents/").status_code == 200


def test_charlie_cannot_see_touch_or_retrieve_alices_documents(
    alice: Tenant, charlie: Tenant, django_capture_on_commit_callbacks
) -> None:
    doc_id = _upload_text(alice, "Generators", GENERATORS, django_capture_on_commit_callbacks).json()["id"]
    _upload_text(charlie, "Classes", CLASSES, django_capture_on_commit_callbacks)
    client = charlie.client()
    assert_error_shape(client.get(f"/api/v1/documents/{doc_id}/"), status=404)
    assert_error_shape(client.delete(f"/api/v1/documents/{doc_id}/"), status=404)
    assert_error_shape(client.post(f"/api/v1/documents/{doc_id}/retry/"), status=404)
    assert [d["title"] for d in client.get("/api/v1/documents/").json()["results"]] == ["Classes"]
    hits = client.post("/api/v1/search/", {"query": "yield", "top_k": 10}, format="json").json()["data"]
    assert all(hit["title"] == "Classes" for hit in hits)
    foreign = client.post(
        "/api/v1/search/", {"query": "yield", "document_ids": [doc_id]}, format="json"
    ).json()
    assert foreign["data"] == []
    assert Document.objects.filter(pk=doc_id).exists()


def test_rag_answers_with_numbered_sources_and_charges_the_enriched_prompt(
    alice: Tenant, openai_backend: str, django_capture_on_commit_callbacks
) -> None:
    _upload_text(alice, "Generators", GENERATORS, django_capture_on_commit_callbacks)
    question = "What does yield do?"
    response = alice.client().post(
        "/api/v1/rag/", {"prompt": question, "max_tokens": 5, "top_k": 1}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["output"] == "tok0 tok1 tok2 tok3 tok4 "
    assert [source["title"] for source in body["sources"]] == ["Generators"]
    assert {"document_id", "chunk_id", "score", "text"} <= set(body["sources"][0])
    # The fake upstream counts one token per word of the prompt it received: the enriched prompt.
    assert body["meta"]["prompt_tokens"] > len(question.split()) + len(GENERATORS.split())


def test_rag_streams_its_sources_then_tokens_then_the_whole_body(
    alice: Tenant, openai_backend: str, django_capture_on_commit_callbacks
) -> None:
    _upload_text(alice, "Generators", GENERATORS, django_capture_on_commit_callbacks)
    response = alice.client().post(
        "/api/v1/rag/",
        {"prompt": "What does yield do?", "max_tokens": 3, "top_k": 1, "stream": True},
        format="json",
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    events = b"".join(response.streaming_content).decode().strip().split("\n\n")
    names = [e.split("\n", 1)[0] for e in events]
    assert names == ["event: sources", "event: token", "event: token", "event: token", "event: done"]
    sources = json.loads(events[0].split("data: ", 1)[1])["sources"]
    assert [source["title"] for source in sources] == ["Generators"]
    done = json.loads(events[-1].split("data: ", 1)[1])
    assert done["output"] == "tok0 tok1 tok2 "
    assert done["sources"] == sources
    assert done["meta"]["prompt_tokens"] > len(GENERATORS.split())  # the enriched prompt


def test_rag_without_documents_answers_clearly(alice: Tenant, openai_backend: str) -> None:
    response = alice.client().post(
        "/api/v1/rag/", {"prompt": "What does yield do?", "max_tokens": 3}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["sources"] == []
    assert "no indexed documents" in response.json()["note"]
