from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from accounts.keys import hash_key
from accounts.models import APIKey
from accounts.services import api_key_create, api_key_revoke, api_key_update
from tests.conftest import Tenant, assert_error_shape


def _dump_database() -> str:
    """Every value of every table, as text."""
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT * FROM "{table}"')
            chunks.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(chunks)


@pytest.mark.django_db
def test_secret_is_nowhere_in_the_database(alice: Tenant) -> None:
    dump = _dump_database()
    assert alice.secret not in dump
    assert alice.secret[12:] not in dump
    assert alice.api_key.secret_hash == hash_key(alice.secret)
    assert alice.api_key.prefix == alice.secret[:12]


@pytest.mark.django_db
def test_key_authenticates_as_bearer_and_as_x_api_key(alice: Tenant, anonymous) -> None:
    assert alice.client().get("/api/v1/me/").status_code == 200
    response = anonymous.get("/api/v1/me/", HTTP_X_API_KEY=alice.secret)
    assert response.status_code == 200
    assert response.json()["organization"]["slug"] == "alice"
    assert response.json()["api_key"]["prefix"] == alice.api_key.prefix


@pytest.mark.django_db
def test_wrong_secret_with_a_real_prefix_is_401(alice: Tenant) -> None:
    forged = alice.secret[:12] + ("A" if alice.secret[12] != "A" else "B") + alice.secret[13:]
    error = assert_error_shape(alice.client(forged).get("/api/v1/me/"), status=401, code="invalid_api_key")
    assert error["type"] == "authentication_error"


@pytest.mark.django_db
def test_revocation_takes_effect_on_the_next_request(alice: Tenant) -> None:
    client = alice.client()
    assert client.get("/api/v1/me/").status_code == 200  # now cached
    api_key_revoke(api_key=APIKey.objects.get(pk=alice.api_key.pk))
    error = assert_error_shape(client.get("/api/v1/me/"), status=401, code="api_key_revoked")
    assert "revoked" in error["message"]


@pytest.mark.django_db
def test_expired_key_is_401_saying_expired(alice: Tenant) -> None:
    api_key, secret = api_key_create(organization=alice.organization, name="short", expires_in_days=1)
    client = alice.client(secret)
    assert client.get("/api/v1/me/").status_code == 200
    api_key_update(api_key=api_key, expires_at=timezone.now() - timedelta(seconds=1))
    error = assert_error_shape(client.get("/api/v1/me/"), status=401, code="api_key_expired")
    assert "expired" in error["message"]


@pytest.mark.django_db
def test_last_used_is_written_at_most_once_per_resolution(alice: Tenant, django_assert_num_queries) -> None:
    client = alice.client()
    client.get("/api/v1/me/")
    first = APIKey.objects.get(pk=alice.api_key.pk).last_used_at
    assert first is not None
    with django_assert_num_queries(0):
        client.get("/api/v1/me/")
        client.get("/api/v1/me/")
    assert APIKey.objects.get(pk=alice.api_key.pk).last_used_at == first


@pytest.mark.django_db
def test_create_api_key_command_prints_the_key_alone_on_its_last_line(alice: Tenant, capsys) -> None:
    call_command("create_api_key", "--org", "alice", "--scopes", "generate", "rag", "--expires-in-days", "30")
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    api_key = APIKey.objects.get(prefix=last_line[:12])
    assert api_key.secret_hash == hash_key(last_line)
    assert api_key.scopes == ["generate", "rag"]
    assert api_key.expires_at is not None


@pytest.mark.django_db
def test_create_api_key_without_scopes_grants_every_scope(alice: Tenant, capsys) -> None:
    call_command("create_api_key", "--org", "alice", "--user", alice.owner.email)
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    response = alice.client(secret).get("/api/v1/me/")
    assert response.json()["scopes"] == sorted(
        [
            "generate",
            "rag",
            "documents:read",
            "documents:write",
            "usage:read",
            "billing:read",
            "billing:write",
            "organization:read",
            "organization:write",
        ]
    )  # an owner's role grants every scope
    assert response.json()["user"]["email"] == alice.owner.email


@pytest.mark.django_db
def test_create_org_command(capsys) -> None:
    call_command("create_org", "acme", "--name", "Acme Inc")
    assert capsys.readouterr().out.strip() == "acme"
