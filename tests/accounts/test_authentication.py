from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from accounts.services import (
    api_key_create,
    oauth_client_create,
    organization_reactivate,
    organization_suspend,
)
from tests.conftest import Tenant, assert_error_shape

PASSWORD = "correct horse battery staple"


def _jwt(client: APIClient, email: str, organization: str | None = None) -> dict:
    body = {"email": email, "password": PASSWORD}
    if organization:
        body["organization"] = organization
    response = client.post("/api/v1/auth/token/", body, format="json")
    assert response.status_code == 200, response.content
    return response.json()


@pytest.mark.django_db
def test_jwt_pair_authenticates_as_the_member(alice: Tenant, anonymous: APIClient) -> None:
    tokens = _jwt(anonymous, alice.owner.email)
    anonymous.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")
    me = anonymous.get("/api/v1/me/").json()
    assert me["auth_method"] == "jwt"
    assert me["organization"]["slug"] == "alice"
    assert me["user"]["email"] == alice.owner.email
    assert me["api_key"] is None


@pytest.mark.django_db
def test_jwt_refresh_gives_a_working_access_token(alice: Tenant, anonymous: APIClient) -> None:
    tokens = _jwt(anonymous, alice.owner.email)
    refreshed = anonymous.post("/api/v1/auth/token/refresh/", {"refresh": tokens["refresh"]}, format="json")
    assert refreshed.status_code == 200
    anonymous.credentials(HTTP_AUTHORIZATION=f"Bearer {refreshed.json()['access']}")
    assert anonymous.get("/api/v1/me/").json()["organization"]["slug"] == "alice"


@pytest.mark.django_db
def test_jwt_with_wrong_password_is_401(alice: Tenant, anonymous: APIClient) -> None:
    response = anonymous.post(
        "/api/v1/auth/token/", {"email": alice.owner.email, "password": "wrong"}, format="json"
    )
    assert_error_shape(response, status=401)


@pytest.mark.django_db
def test_jwt_for_an_organization_the_user_is_not_in_is_400(alice: Tenant, charlie: Tenant, anonymous) -> None:
    response = anonymous.post(
        "/api/v1/auth/token/",
        {"email": alice.owner.email, "password": PASSWORD, "organization": "charlie"},
        format="json",
    )
    error = assert_error_shape(response, status=400)
    assert error["param"] == "organization"


@pytest.mark.django_db
def test_tampered_jwt_is_401(alice: Tenant, anonymous: APIClient) -> None:
    access = _jwt(anonymous, alice.owner.email)["access"]
    anonymous.credentials(HTTP_AUTHORIZATION=f"Bearer {access[:-4]}AAAA")
    assert_error_shape(anonymous.get("/api/v1/me/"), status=401, code="invalid_token")


@pytest.mark.django_db
def test_oauth2_client_credentials_token_acts_for_its_organization(alice: Tenant, anonymous) -> None:
    _client, client_id, secret = oauth_client_create(
        organization=alice.organization, name="backend", scopes=["generate", "usage:read"]
    )
    response = anonymous.post(
        "/oauth/token/",
        {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": secret,
            "scope": "usage:read",
        },
    )
    assert response.status_code == 200, response.content
    token = response.json()["access_token"]
    anonymous.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    me = anonymous.get("/api/v1/me/").json()
    assert me["auth_method"] == "oauth2"
    assert me["organization"]["slug"] == "alice"
    assert me["scopes"] == ["usage:read"]


@pytest.mark.django_db
def test_oauth2_client_cannot_obtain_a_scope_it_was_not_given(alice: Tenant, anonymous) -> None:
    _client, client_id, secret = oauth_client_create(
        organization=alice.organization, name="b", scopes=["generate"]
    )
    response = anonymous.post(
        "/oauth/token/",
        {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": secret,
            "scope": "usage:read",
        },
    )
    assert response.status_code == 400


@pytest.mark.django_db
def test_unknown_bearer_token_is_401(anonymous: APIClient) -> None:
    anonymous.credentials(HTTP_AUTHORIZATION="Bearer not-a-token")
    assert_error_shape(anonymous.get("/api/v1/me/"), status=401, code="invalid_token")


@pytest.mark.django_db
def test_missing_credentials_is_401_with_www_authenticate(anonymous: APIClient) -> None:
    response = anonymous.get("/api/v1/me/")
    assert_error_shape(response, status=401, code="missing_credentials")
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db
def test_malformed_authorization_header_is_401(anonymous: APIClient) -> None:
    anonymous.credentials(HTTP_AUTHORIZATION="Basic dXNlcjpwYXNz")
    assert_error_shape(anonymous.get("/api/v1/me/"), status=401, code="invalid_authorization")


@pytest.mark.django_db
def test_suspended_organization_is_403_and_reactivation_restores_access(alice: Tenant) -> None:
    client = alice.client()
    assert client.get("/api/v1/me/").status_code == 200
    organization_suspend(organization=alice.organization, reason="unpaid")
    error = assert_error_shape(client.get("/api/v1/me/"), status=403, code="organization_suspended")
    assert "suspended" in error["message"]
    organization_reactivate(organization=alice.organization)
    assert client.get("/api/v1/me/").status_code == 200


@pytest.mark.django_db
def test_missing_scope_is_403_naming_the_scope(alice: Tenant) -> None:
    _key, secret = api_key_create(organization=alice.organization, name="gen-only", scopes=["generate"])
    response = alice.client(secret).get("/api/v1/usage/", {"start": "2026-01-01", "end": "2026-01-31"})
    error = assert_error_shape(response, status=403, code="missing_scope")
    assert "usage:read" in error["message"]
    assert error["type"] == "permission_error"
