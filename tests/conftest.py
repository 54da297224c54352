from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache
from rest_framework.test import APIClient

from accounts.models import APIKey, Membership, Organization, User
from accounts.services import api_key_create, membership_create, organization_create, user_create
from usage import services as usage_services


@pytest.fixture(autouse=True)
def _isolated_shared_state() -> Iterator[None]:
    """Every test starts with an empty cache and ledger (Redis keys of this run, or memory)."""
    _clear()
    yield
    _clear()


def _clear() -> None:
    if settings.REDIS_URL:
        client = usage_services.redis_client()
        for key in client.scan_iter(f"{settings.CACHE_KEY_PREFIX}*", count=1000):
            client.delete(key)
    else:
        cache.clear()
    usage_services._local_ledger = None


@dataclass
class Tenant:
    organization: Organization
    owner: User
    api_key: APIKey
    secret: str

    def client(self, secret: str | None = None) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret or self.secret}")
        return client


def make_tenant(slug: str, **org_fields: Any) -> Tenant:
    owner = user_create(email=f"owner@{slug}.test", password="correct horse battery staple")
    organization = organization_create(slug=slug, name=slug.title(), owner=owner)
    for name, value in org_fields.items():
        setattr(organization, name, value)
    if org_fields:
        organization.save()
    api_key, secret = api_key_create(organization=organization, name=f"{slug}-key", user=owner)
    return Tenant(organization=organization, owner=owner, api_key=api_key, secret=secret)


@pytest.fixture
def alice(db: Any) -> Tenant:
    """Alice's organization, which the tests act as."""
    return make_tenant("alice")


@pytest.fixture
def charlie(db: Any) -> Tenant:
    """Charlie's organization, which should have no access to Alice's stuff."""
    return make_tenant("charlie")


@pytest.fixture
def bob(alice: Tenant) -> tuple[User, Membership]:
    """Bob, a plain member of Alice's organization."""
    user = user_create(email="bob@alice.test", password="correct horse battery staple")
    return user, membership_create(organization=alice.organization, user=user)


@pytest.fixture
def anonymous() -> APIClient:
    return APIClient()


def assert_error_shape(response: Any, *, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]
