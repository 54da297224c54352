"""Roles mean something: a JWT carries its member's role's scopes, a member's API key never
does more than the member's role, whatever it was given, and every route answers each role as
the matrix below says."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.apps import apps
from django.core.management import call_command
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from accounts.models import APIKey, Membership, User
from accounts.services import (
    InvalidScopes,
    api_key_create,
    api_key_update,
    membership_create,
    membership_role_set,
    user_create,
)
from tests.conftest import Tenant, assert_error_shape

PASSWORD = "correct horse battery staple"
ROLES = ("owner", "admin", "member", "reader")
PUBLIC = "public"

# Every route under /api/v1/ and /v1/, by method: which roles it serves (the others answer 403
# `missing_scope`). A route added without a row here fails `test_the_matrix_covers_every_route`.
#                                                    owner  admin  member reader
MATRIX: dict[tuple[str, str], tuple[bool, bool, bool, bool] | str] = {
    ("GET", "/api/v1/me/"): (True, True, True, True),
    ("GET", "/api/v1/status/"): (True, True, True, True),
    ("GET", "/v1/models"): (True, True, True, True),
    ("GET", "/v1/models/<path:model>"): (True, True, True, True),
    ("POST", "/api/v1/generate/"): (True, True, True, False),
    ("POST", "/api/v1/jobs/"): (True, True, True, False),
    ("GET", "/api/v1/jobs/<uuid:job_id>/"): (True, True, True, False),
    ("POST", "/v1/chat/completions"): (True, True, True, False),
    ("POST", "/v1/completions"): (True, True, True, False),
    ("POST", "/v1/embeddings"): (True, True, True, False),
    ("POST", "/api/v1/rag/"): (True, True, True, False),
    ("POST", "/api/v1/search/"): (True, True, True, True),
    ("GET", "/api/v1/documents/"): (True, True, True, True),
    ("GET", "/api/v1/documents/<int:document_id>/"): (True, True, True, True),
    ("POST", "/api/v1/documents/"): (True, True, False, False),
    ("DELETE", "/api/v1/documents/<int:document_id>/"): (True, True, False, False),
    ("POST", "/api/v1/documents/<int:document_id>/retry/"): (True, True, False, False),
    ("GET", "/api/v1/usage/"): (True, True, False, True),
    ("GET", "/api/v1/organization/keys/"): (True, True, False, True),
    ("POST", "/api/v1/organization/keys/"): (True, True, False, False),
    ("GET", "/api/v1/organization/keys/<int:key_id>/"): (True, True, False, True),
    ("PATCH", "/api/v1/organization/keys/<int:key_id>/"): (True, True, False, False),
    ("DELETE", "/api/v1/organization/keys/<int:key_id>/"): (True, True, False, False),
    ("POST", "/api/v1/organization/keys/<int:key_id>/rotate/"): (True, True, False, False),
    ("GET", "/api/v1/organization/members/"): (True, True, False, True),
    ("POST", "/api/v1/organization/members/"): (True, True, False, False),
    ("PATCH", "/api/v1/organization/members/<int:membership_id>/"): (True, True, False, False),
    ("DELETE", "/api/v1/organization/members/<int:membership_id>/"): (True, True, False, False),
    ("DELETE", "/api/v1/organization/invitations/<int:invitation_id>/"): (True, True, False, False),
    ("GET", "/api/v1/organization/audit/"): (True, True, False, False),
    ("GET", "/api/v1/organization/alerts/"): (True, True, False, True),
    ("PUT", "/api/v1/organization/alerts/"): (True, True, False, False),
    ("GET", "/api/v1/organization/webhooks/"): (True, True, False, True),
    ("POST", "/api/v1/organization/webhooks/"): (True, True, False, False),
    ("DELETE", "/api/v1/organization/webhooks/<int:endpoint_id>/"): (True, True, False, False),
    ("GET", "/api/v1/organization/webhooks/<int:endpoint_id>/deliveries/"): (True, True, False, True),
    ("POST", "/api/v1/invitations/accept/"): PUBLIC,
    ("GET", "/api/v1/billing/invoices/"): (True, False, False, False),
    ("GET", "/api/v1/billing/invoices/<int:invoice_id>/"): (True, False, False, False),
    ("GET", "/api/v1/billing/current/"): (True, False, False, False),
    ("GET", "/api/v1/billing/costs/"): (True, False, False, False),
    ("POST", "/api/v1/billing/setup-intent/"): (True, False, False, False),
    ("GET", "/api/v1/billing/payment-methods/"): (True, False, False, False),
    ("POST", "/api/v1/billing/payment-methods/"): (True, False, False, False),
    ("DELETE", "/api/v1/billing/payment-methods/<str:payment_method_id>/"): (True, False, False, False),
    ("GET", "/api/v1/billing/plans/"): (True, True, True, True),
    ("POST", "/api/v1/billing/subscription/"): (True, False, False, False),
    ("GET", "/api/v1/organization/budgets/"): (True, True, False, True),
    ("PUT", "/api/v1/organization/budgets/"): (True, True, False, False),
    ("POST", "/api/v1/signup/"): PUBLIC,
    ("POST", "/api/v1/auth/token/"): PUBLIC,
    ("POST", "/api/v1/auth/token/refresh/"): PUBLIC,
    ("POST", "/api/v1/billing/stripe/webhook/"): PUBLIC,
}

SAMPLE_ARGUMENTS = {
    "<int:document_id>": "987654",
    "<int:invoice_id>": "987654",
    "<int:key_id>": "987654",
    "<int:membership_id>": "987654",
    "<int:invitation_id>": "987654",
    "<int:endpoint_id>": "987654",
    "<str:payment_method_id>": "pm_nope",
    "<uuid:job_id>": str(uuid.UUID(int=1)),
    "<path:model>": "no-such-model",
}


def _routes(resolver: URLResolver | None = None, prefix: str = "/") -> Iterator[tuple[str, Any]]:
    for entry in (resolver or get_resolver()).url_patterns:
        if isinstance(entry, URLResolver):
            yield from _routes(entry, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry.callback


def _api_routes() -> set[tuple[str, str]]:
    found = set()
    for route, callback in _routes():
        if not route.startswith(("/api/v1/", "/v1/")):
            continue
        view_class = getattr(callback, "view_class", None) or getattr(callback, "cls", None)
        for method in ("get", "post", "put", "patch", "delete"):
            if hasattr(view_class, method):
                found.add((method.upper(), route))
    return found


def _url(route: str) -> str:
    for pattern, value in SAMPLE_ARGUMENTS.items():
        route = route.replace(pattern, value)
    return route


def _member(tenant: Tenant, role: str) -> User:
    if role == "owner":
        return tenant.owner
    user = user_create(email=f"{role}@alice.test", password=PASSWORD)
    membership_create(organization=tenant.organization, user=user, role=role)
    return user


def _jwt_client(email: str) -> APIClient:
    client = APIClient()
    response = client.post("/api/v1/auth/token/", {"email": email, "password": PASSWORD}, format="json")
    assert response.status_code == 200, response.content
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['access']}")
    return client


def _send(client: APIClient, method: str, url: str) -> Any:
    if method in ("POST", "PUT", "PATCH"):
        return client.generic(method, url, "{}", content_type="application/json")
    return client.generic(method, url)


def _refused_for_scope(response: Any) -> bool:
    if response.status_code != 403:
        return False
    return assert_error_shape(response, status=403)["code"] == "missing_scope"


def test_the_matrix_covers_every_route() -> None:
    assert _api_routes() == set(MATRIX)


def _matrix_cases() -> Iterator[Any]:
    for (method, route), allowed in MATRIX.items():
        if allowed == PUBLIC:
            continue
        for role, serves in zip(ROLES, allowed, strict=True):
            yield pytest.param(method, route, role, serves, id=f"{role}-{method}-{route}")


@pytest.mark.django_db
@pytest.mark.parametrize(("method", "route", "role", "serves"), list(_matrix_cases()))
def test_role_matrix(alice: Tenant, method: str, route: str, role: str, serves: bool) -> None:
    client = _jwt_client(_member(alice, role).email)
    response = _send(client, method, _url(route))
    assert response.status_code != 401, response.content
    assert _refused_for_scope(response) is not serves, (
        role,
        method,
        route,
        response.status_code,
        response.content,
    )


@pytest.mark.django_db
@pytest.mark.parametrize("role", ROLES)
def test_jwt_carries_its_roles_scopes_and_a_default_key_the_same(alice: Tenant, role: str) -> None:
    user = _member(alice, role)
    jwt_scopes = _jwt_client(user.email).get("/api/v1/me/").json()["scopes"]
    _key, secret = api_key_create(organization=alice.organization, name=role, user=user)
    key_scopes = alice.client(secret).get("/api/v1/me/").json()["scopes"]
    expected = {
        "owner": [
            "billing:read",
            "billing:write",
            "documents:read",
            "documents:write",
            "generate",
            "organization:read",
            "organization:write",
            "rag",
            "usage:read",
        ],
        "admin": [
            "documents:read",
            "documents:write",
            "generate",
            "organization:read",
            "organization:write",
            "rag",
            "usage:read",
        ],
        "member": ["documents:read", "generate", "rag"],
        "reader": ["documents:read", "organization:read", "usage:read"],
    }[role]
    assert jwt_scopes == expected
    assert key_scopes == expected


@pytest.mark.django_db
def test_a_key_for_a_member_with_more_than_the_role_is_refused(alice: Tenant, bob: Any) -> None:
    user, _membership = bob
    with pytest.raises(InvalidScopes) as refused:
        api_key_create(
            organization=alice.organization, name="too much", user=user, scopes=["documents:write"]
        )
    assert refused.value.param == "scopes"
    assert "documents:write" in refused.value.message
    assert not APIKey.objects.filter(name="too much").exists()
    api_key, _secret = api_key_create(organization=alice.organization, name="ok", user=user, scopes=["rag"])
    with pytest.raises(InvalidScopes):
        api_key_update(api_key=api_key, scopes=["rag", "usage:read"])
    assert api_key.scopes == ["rag"]
    api_key.refresh_from_db()
    assert api_key.scopes == ["rag"]


@pytest.mark.django_db
def test_an_organization_wide_key_keeps_the_scopes_it_was_given(alice: Tenant) -> None:
    _key, secret = api_key_create(
        organization=alice.organization, name="ops", scopes=["usage:read", "billing:read"]
    )
    assert alice.client(secret).get("/api/v1/me/").json()["scopes"] == ["billing:read", "usage:read"]


@pytest.mark.django_db
def test_a_key_made_for_an_admin_shrinks_with_its_member_on_the_next_request(alice: Tenant) -> None:
    user = _member(alice, "admin")
    _key, secret = api_key_create(organization=alice.organization, name="admin key", user=user)
    client = alice.client(secret)
    assert (
        client.get("/api/v1/usage/", {"start": "2026-01-01", "end": "2026-01-31"}).status_code == 200
    )  # cached
    membership_role_set(membership=Membership.objects.get(user=user), role="member")
    response = client.get("/api/v1/usage/", {"start": "2026-01-01", "end": "2026-01-31"})
    assert_error_shape(response, status=403, code="missing_scope")
    assert client.get("/api/v1/me/").json()["scopes"] == ["documents:read", "generate", "rag"]


@pytest.mark.django_db
def test_a_key_given_every_scope_before_roles_is_cut_down_to_its_members_role(
    alice: Tenant, bob: Any
) -> None:
    user, _membership = bob
    api_key, secret = api_key_create(organization=alice.organization, name="old", user=user)
    APIKey.objects.filter(pk=api_key.pk).update(scopes=["generate", "documents:write", "usage:read"])
    response = alice.client(secret).delete("/api/v1/documents/1/")
    assert_error_shape(response, status=403, code="missing_scope")
    assert alice.client(secret).get("/api/v1/me/").json()["scopes"] == ["generate"]


@pytest.mark.django_db
def test_a_jwt_follows_its_members_role_change(alice: Tenant) -> None:
    user = _member(alice, "admin")
    client = _jwt_client(user.email)
    assert client.get("/api/v1/usage/", {"start": "2026-01-01", "end": "2026-01-31"}).status_code == 200
    membership_role_set(membership=Membership.objects.get(user=user), role="member")
    response = client.get("/api/v1/usage/", {"start": "2026-01-01", "end": "2026-01-31"})
    assert_error_shape(response, status=403, code="missing_scope")


@pytest.mark.django_db
def test_create_api_key_command_for_a_member_defaults_to_the_role(
    alice: Tenant, bob: Any, capsys: Any
) -> None:
    call_command("create_api_key", "--org", "alice", "--user", "bob@alice.test")
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert APIKey.objects.get(prefix=secret[:12]).scopes == ["generate", "rag", "documents:read"]


def _admin_add_key(client: Any, alice: Tenant, user: User, scopes: str) -> Any:
    admin = User.objects.create_superuser("ops@platform.test", PASSWORD)
    client.force_login(admin)
    return client.post(
        "/admin/accounts/apikey/add/",
        {
            "organization": alice.organization.pk,
            "user": user.pk,
            "name": "from the admin",
            "scopes": scopes,
            "budget_period": "month",
        },
    )


@pytest.mark.django_db
def test_the_admin_refuses_a_key_beyond_its_members_role(alice: Tenant, bob: Any, client: Any) -> None:
    user, _membership = bob
    response = _admin_add_key(client, alice, user, '["generate", "usage:read"]')
    assert response.status_code == 200  # the form again, with its error
    assert "cannot have the scope(s) usage:read" in response.content.decode()
    assert not APIKey.objects.filter(name="from the admin").exists()


@pytest.mark.django_db
def test_the_admin_refuses_a_key_for_someone_outside_the_organization(
    alice: Tenant, charlie: Tenant, client: Any
) -> None:
    response = _admin_add_key(client, alice, charlie.owner, "[]")
    assert response.status_code == 200
    assert "is not a member of alice" in response.content.decode()
    assert not APIKey.objects.filter(name="from the admin").exists()


@pytest.mark.django_db
def test_the_admin_creates_a_key_within_its_members_role(alice: Tenant, bob: Any, client: Any) -> None:
    user, _membership = bob
    response = _admin_add_key(client, alice, user, '["generate", "rag"]')
    assert response.status_code == 302
    assert APIKey.objects.get(name="from the admin").scopes == ["generate", "rag"]


@pytest.mark.django_db
def test_keys_and_clients_that_read_usage_keep_reading_invoices_after_the_migration(alice: Tenant) -> None:
    api_key, _secret = api_key_create(organization=alice.organization, name="reports", scopes=["usage:read"])
    untouched, _secret = api_key_create(organization=alice.organization, name="gen", scopes=["generate"])
    migration = importlib.import_module("accounts.migrations.0003_membership_reader_role")
    migration.grant_billing_read_with_usage_read(apps, None)
    assert APIKey.objects.get(pk=api_key.pk).scopes == ["usage:read", "billing:read"]
    assert APIKey.objects.get(pk=untouched.pk).scopes == ["generate"]


@pytest.mark.django_db
def test_unknown_role_is_refused(alice: Tenant) -> None:
    user = user_create(email="eve@alice.test", password=PASSWORD)
    with pytest.raises(Exception, match="Unknown role"):
        membership_create(organization=alice.organization, user=user, role="superuser")
