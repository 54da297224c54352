"""Every failure under /api/ and /v1/ answers the one JSON error shape, never HTML."""

from __future__ import annotations

import pytest
import redis

from tests.conftest import Tenant, assert_error_shape


@pytest.mark.django_db
def test_unknown_route_is_404_json(alice: Tenant) -> None:
    assert_error_shape(alice.client().get("/api/v1/does-not-exist/"), status=404, code="unknown_url")
    assert_error_shape(alice.client().get("/v1/nothing-here"), status=404, code="unknown_url")


@pytest.mark.django_db
def test_wrong_method_is_405_json(alice: Tenant) -> None:
    assert_error_shape(alice.client().delete("/api/v1/me/"), status=405, code="method_not_allowed")


@pytest.mark.django_db
def test_validation_error_is_400_naming_the_field(alice: Tenant) -> None:
    response = alice.client().get("/api/v1/usage/", {"start": "yesterday", "end": "2026-01-31"})
    error = assert_error_shape(response, status=400)
    assert error["param"] == "start"
    assert error["type"] == "invalid_request_error"


@pytest.mark.django_db
def test_unhandled_exception_is_500_json_without_traceback(alice: Tenant, monkeypatch) -> None:
    def explode(**kwargs: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr("usage.apis.usage_report", explode)
    client = alice.client()
    client.raise_request_exception = False
    response = client.get("/api/v1/usage/", {"start": "2026-01-01", "end": "2026-01-02"})
    error = assert_error_shape(response, status=500, code="internal_error")
    assert "secret internals" not in response.content.decode()
    assert "Traceback" not in response.content.decode()
    assert error["type"] == "server_error"


@pytest.mark.django_db
def test_request_id_is_echoed_when_sane_and_minted_otherwise(alice: Tenant) -> None:
    client = alice.client()
    assert client.get("/api/v1/me/", HTTP_X_REQUEST_ID="abc-123")["X-Request-ID"] == "abc-123"
    minted = client.get("/api/v1/me/", HTTP_X_REQUEST_ID="bad id with spaces\n")["X-Request-ID"]
    assert minted.startswith("req_")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "target, error",
    [
        ("usage.middleware.requests_hit", redis.exceptions.ConnectionError("Connection refused")),
        ("usage.apis.usage_report", redis.exceptions.TimeoutError("Timeout reading from socket")),
    ],
)
def test_shared_store_unreachable_is_503_to_retry(
    alice: Tenant, monkeypatch, target: str, error: Exception
) -> None:
    """Redis down, in a middleware or in a view: a 503 that says to retry, not an opaque 500."""

    def unreachable(**kwargs: object) -> None:
        raise error

    monkeypatch.setattr(target, unreachable)
    client = alice.client()
    client.raise_request_exception = False
    response = client.get("/api/v1/usage/", {"start": "2026-01-01", "end": "2026-01-02"})
    assert_error_shape(response, status=503, code="store_unavailable")
    assert response["Retry-After"] == "1"
