"""Bodies a hostile client sends get a clear JSON 4xx, never a 500, and cost no more than the
limits allow: too many fields, a body over the limit (refused from its declared length, unread),
JSON nested too deeply for the decoder."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.conf import settings

from tests.conftest import Tenant, assert_error_shape

pytestmark = pytest.mark.django_db


class RecordingBody:
    """A request body that records how much of it the server read."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size is None or size < 0 else self.bytes_read + size
        chunk = self.data[self.bytes_read : end]
        self.bytes_read += len(chunk)
        return chunk

    def readline(self, size: int = -1) -> bytes:
        return self.read(size)


def _declaring(
    client: Any, path: str, *, declared: int, content_type: str, prefix: bytes
) -> tuple[Any, RecordingBody]:
    """POSTs a body whose Content-Length declares `declared` bytes of which only `prefix` exists."""
    body = RecordingBody(prefix)
    response = client.generic(
        "POST", path, prefix, content_type=content_type, CONTENT_LENGTH=str(declared), **{"wsgi.input": body}
    )
    return response, body


@pytest.mark.parametrize("path", ["/api/v1/search/", "/api/v1/rag/", "/api/v1/documents/"])
def test_multipart_with_too_many_fields_is_400(alice: Tenant, path: str) -> None:
    fields = {f"field{i}": "x" for i in range(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1)}
    response = alice.client().post(path, fields, format="multipart")
    error = assert_error_shape(response, status=400, code="too_many_fields")
    assert str(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS) in error["message"]


def test_multipart_field_over_the_memory_limit_is_413(alice: Tenant, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = alice.client().post("/api/v1/search/", {"query": "x" * 2000}, format="multipart")
    assert_error_shape(response, status=413, code="request_too_large")


@pytest.mark.parametrize(
    "path", ["/api/v1/generate/", "/v1/chat/completions", "/api/v1/search/", "/api/v1/documents/"]
)
def test_json_body_declared_over_the_limit_is_413_unread(alice: Tenant, path: str) -> None:
    response, body = _declaring(
        alice.client(),
        path,
        declared=settings.API_MAX_JSON_BODY_BYTES + 1,
        content_type="application/json",
        prefix=b'{"prompt": "',
    )
    assert_error_shape(response, status=413, code="request_too_large")
    assert body.bytes_read == 0


def test_json_body_over_the_limit_is_413_on_a_public_route(anonymous: Any) -> None:
    """No middleware reads a public route's body: the JSON parser bounds it itself."""
    response, body = _declaring(
        anonymous,
        "/api/v1/auth/token/",
        declared=1_000_000_000,
        content_type="application/json",
        prefix=b'{"email": "',
    )
    assert_error_shape(response, status=413, code="request_too_large")
    assert body.bytes_read == 0


def test_json_nested_too_deeply_is_400_not_500(anonymous: Any) -> None:
    anonymous.raise_request_exception = False
    response = anonymous.generic(
        "POST", "/api/v1/auth/token/", "[" * 100_000, content_type="application/json"
    )
    assert_error_shape(response, status=400, code="invalid_json")


def test_json_body_at_the_limit_is_read(anonymous: Any, settings: Any) -> None:
    settings.API_MAX_JSON_BODY_BYTES = settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    body = json.dumps({"email": "nobody@example.test", "password": "p" * 3000, "organization": "x"})
    response = anonymous.generic(
        "POST", "/api/v1/auth/token/", body + " " * (4096 - len(body)), content_type="application/json"
    )
    assert response.status_code == 401, response.content


def test_unparsable_multipart_is_400_saying_so(alice: Tenant) -> None:
    response = alice.client().generic("POST", "/api/v1/search/", "abc", content_type="multipart/form-data")
    error = assert_error_shape(response, status=400, code="invalid_body")
    assert "JSON" not in error["message"]
