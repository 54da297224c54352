"""Hostile input to the knowledge routes: ids the database cannot hold and overlong lists or
queries are a 400 naming the field; an upload is checked against KNOWLEDGE_MAX_UPLOAD_BYTES
before it is read, and one whose Content-Length is already too large is refused unread."""

from __future__ import annotations

import socket
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile, TemporaryUploadedFile

from knowledge.models import Document
from tests.conftest import Tenant, assert_error_shape
from tests.test_hostile_input import RecordingBody

RAG_AND_SEARCH = [("/api/v1/search/", "query"), ("/api/v1/rag/", "prompt")]


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "text_field"), RAG_AND_SEARCH)
@pytest.mark.parametrize("document_id", [10**30, 2**63, 0, -1])
def test_document_id_out_of_the_database_range_is_400(
    alice: Tenant, path: str, text_field: str, document_id: int
) -> None:
    body = {text_field: "classes", "document_ids": [1, document_id]}
    error = assert_error_shape(alice.client().post(path, body, format="json"), status=400)
    assert error["param"] == "document_ids.1", error


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "text_field"), RAG_AND_SEARCH)
def test_too_many_document_ids_is_400_before_each_is_validated(
    alice: Tenant, path: str, text_field: str
) -> None:
    # Ids that would each be refused: the list's length is the error named.
    ids = [10**30] * (settings.KNOWLEDGE_MAX_DOCUMENT_IDS + 1)
    response = alice.client().post(path, {text_field: "classes", "document_ids": ids}, format="json")
    error = assert_error_shape(response, status=400, code="max_length")
    assert error["param"] == "document_ids", error


@pytest.mark.django_db
def test_search_query_over_the_cap_is_400(alice: Tenant) -> None:
    body = {"query": "x" * (settings.KNOWLEDGE_MAX_QUERY_CHARS + 1)}
    error = assert_error_shape(alice.client().post("/api/v1/search/", body, format="json"), status=400)
    assert error["param"] == "query", error


# --- Uploads --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_upload_declaring_a_gigabyte_is_413_without_reading_the_body(alice: Tenant) -> None:
    body = RecordingBody(b"--boundary\r\n" + b"x" * 1024)
    response = alice.client().generic(
        "POST",
        "/api/v1/documents/",
        body.data,
        content_type="multipart/form-data; boundary=boundary",
        CONTENT_LENGTH=str(10**9),
        **{"wsgi.input": body},
    )
    error = assert_error_shape(response, status=413, code="file_too_large")
    assert error["param"] == "file"
    assert body.bytes_read == 0
    assert not Document.objects.exists()


@pytest.mark.django_db
def test_upload_titled_with_a_nul_is_400_naming_the_title(alice: Tenant) -> None:
    """PostgreSQL cannot store a NUL: the form's title is checked as the JSON body's is."""
    upload = SimpleUploadedFile("notes.txt", b"Classes bundle data and behaviour.", "text/plain")
    response = alice.client().post(
        "/api/v1/documents/", {"file": upload, "title": "Not\x00es"}, format="multipart"
    )
    error = assert_error_shape(response, status=400)
    assert error["param"] == "title", error
    assert not Document.objects.exists()


@pytest.mark.django_db
@pytest.mark.usefixtures("eager_tasks")
def test_file_over_the_limit_is_413_before_it_is_read(
    alice: Tenant, settings: Any, monkeypatch: Any, django_capture_on_commit_callbacks: Any
) -> None:
    """Streamed to a temporary file and measured by Django; refused on that size, unread."""
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1024
    settings.KNOWLEDGE_MAX_UPLOAD_BYTES = 4096

    def no_read(self: Any) -> Any:
        raise AssertionError("the upload was read")

    monkeypatch.setattr(TemporaryUploadedFile, "read", property(no_read))
    upload = SimpleUploadedFile("big.txt", b"word " * 2000, "text/plain")
    with django_capture_on_commit_callbacks(execute=True):
        response = alice.client().post("/api/v1/documents/", {"file": upload}, format="multipart")
    assert_error_shape(response, status=413, code="file_too_large")


@pytest.mark.django_db
@pytest.mark.usefixtures("eager_tasks")
def test_file_larger_than_memory_is_streamed_to_disk_and_ingested(
    alice: Tenant, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1024
    text = b"Classes bundle data and functionality together. " * 100
    with django_capture_on_commit_callbacks(execute=True):
        response = alice.client().post(
            "/api/v1/documents/",
            {"file": SimpleUploadedFile("classes.txt", text, "text/plain"), "title": "Classes"},
            format="multipart",
        )
    assert response.status_code == 202, response.content
    document = Document.objects.get(pk=response.json()["id"])
    assert (document.status, document.size_bytes, document.title) == ("indexed", len(text), "Classes")


@pytest.mark.django_db
def test_json_document_over_the_body_limit_is_413(alice: Tenant, settings: Any) -> None:
    """A JSON upload is a JSON body: larger documents go as a multipart file."""
    settings.API_MAX_JSON_BODY_BYTES = settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    body = {"title": "Long", "text": "word " * 1000}
    response = alice.client().post("/api/v1/documents/", body, format="json")
    assert_error_shape(response, status=413, code="request_too_large")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_server_answers_a_declared_gigabyte_upload_413_at_once(alice: Tenant, start_web_server: Any) -> None:
    """Against the production web server: the client sends headers declaring 1 GB and 64 KiB of
    it; the answer comes while the rest was never sent, so nothing waited for it."""
    address = urlsplit(start_web_server(workers=1, threads=2))
    head = (
        "POST /api/v1/documents/ HTTP/1.1\r\n"
        f"Host: {address.netloc}\r\n"
        f"Authorization: Bearer {alice.secret}\r\n"
        "Content-Type: multipart/form-data; boundary=boundary\r\n"
        f"Content-Length: {10**9}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    with socket.create_connection((address.hostname, address.port), timeout=30) as connection:
        connection.sendall(head + b"--boundary\r\n" + b"x" * 65536)
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            received += chunk
    assert time.monotonic() - started < 10
    status_line, _, rest = received.partition(b"\r\n")
    assert status_line.split()[1] == b"413", received
    assert b'"code":"file_too_large"' in rest.replace(b" ", b""), received


@pytest.mark.django_db
def test_document_list_limit_beyond_the_database_range_is_clamped(alice: Tenant) -> None:
    response = alice.client().get("/api/v1/documents/", {"limit": 10**23, "offset": 0})
    assert response.status_code == 200, response.content
    assert response.json()["results"] == []
