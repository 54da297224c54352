"""The key cache forgets a key whatever path removes access to it — the services, the admin's
saves and deletes, the cascades of a deleted user or organization — never lets a fill that raced
a revocation put the old entry back, and never holds a password hash."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache

from accounts import keycache
from accounts.keycache import local_key_cache
from accounts.models import APIKey, Membership, Organization, User
from accounts.selectors import CACHED_FIELDS, api_key_resolve
from accounts.services import api_key_create, api_key_revoke, membership_create
from tests.conftest import Tenant, assert_error_shape


@pytest.fixture
def bob_key(alice: Tenant, bob: Any) -> tuple[User, str]:
    user, _membership = bob
    _key, secret = api_key_create(organization=alice.organization, name="bob", user=user)
    return user, secret


def _suspend(organization: Organization) -> None:
    organization.status = Organization.Status.SUSPENDED
    organization.save()


# What the admin and Django's cascades do, without the services.
WRITES: dict[str, tuple[Callable[[Tenant, User], Any], int, str]] = {
    "key deleted in bulk (the admin's delete action)": (
        lambda alice, bob: APIKey.objects.filter(user=bob).delete(),
        401,
        "invalid_api_key",
    ),
    "key revoked by a form save": (
        lambda alice, bob: [
            setattr(key, "revoked_at", key.created_at) or key.save()
            for key in APIKey.objects.filter(user=bob)
        ],
        401,
        "api_key_revoked",
    ),
    "user unticked as active": (
        lambda alice, bob: setattr(bob, "is_active", False) or bob.save(),
        401,
        "member_inactive",
    ),
    "user deleted (keys and memberships cascade)": (lambda alice, bob: bob.delete(), 401, "invalid_api_key"),
    "membership deleted in the organization's inline": (
        lambda alice, bob: Membership.objects.filter(user=bob).delete(),
        401,
        "member_inactive",
    ),
    "organization suspended in its form": (
        lambda alice, bob: _suspend(alice.organization),
        403,
        "organization_suspended",
    ),
    "organization deleted (everything cascades)": (
        lambda alice, bob: Organization.objects.filter(pk=alice.organization.pk).delete(),
        401,
        "invalid_api_key",
    ),
}


@pytest.mark.django_db
@pytest.mark.parametrize("write", list(WRITES))
def test_a_write_outside_the_services_takes_effect_on_the_next_request(
    alice: Tenant, bob_key: tuple[User, str], write: str, django_capture_on_commit_callbacks: Any
) -> None:
    user, secret = bob_key
    change, status, code = WRITES[write]
    client = alice.client(secret)
    assert client.get("/api/v1/me/").status_code == 200
    _fill_shared_cache(secret[:12])
    assert client.get("/api/v1/me/").status_code == 200  # cached in both levels
    with django_capture_on_commit_callbacks(execute=True):
        change(alice, user)
    assert_error_shape(client.get("/api/v1/me/"), status=status, code=code)


@pytest.mark.django_db
def test_a_member_added_back_gets_their_key_back_at_once(alice: Tenant, bob_key: tuple[User, str]) -> None:
    user, secret = bob_key
    Membership.objects.filter(user=user).delete()
    _fill_shared_cache(secret[:12])  # as a key of no member
    assert_error_shape(alice.client(secret).get("/api/v1/me/"), status=401, code="member_inactive")
    membership_create(organization=alice.organization, user=user)
    assert alice.client(secret).get("/api/v1/me/").status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("invalidated_before", [False, True], ids=["never invalidated", "invalidated before"])
def test_a_fill_racing_a_revocation_does_not_put_the_old_entry_back(
    alice: Tenant, monkeypatch: Any, django_capture_on_commit_callbacks: Any, invalidated_before: bool
) -> None:
    """The fill reads the key from the database, the revocation commits and invalidates, then the
    fill stores what it read: the next lookup, in any process, must see the revocation."""
    prefix = alice.api_key.prefix
    if invalidated_before:
        keycache.invalidate([prefix])
    store = keycache.shared_put

    def revoke_then_store(prefix: str, entry: dict[str, Any], *, version: str) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            api_key_revoke(api_key=APIKey.objects.get(prefix=prefix))
        store(prefix, entry, version=version)

    monkeypatch.setattr(keycache, "shared_put", revoke_then_store)
    raced = api_key_resolve(prefix=prefix)
    assert raced is not None and raced.api_key.revoked_at is None  # it started before the revocation
    monkeypatch.undo()

    local_key_cache.clear()  # another process
    resolved = api_key_resolve(prefix=prefix)
    assert resolved is not None
    assert resolved.api_key.revoked_at is not None


def _fill_shared_cache(prefix: str) -> None:
    """Resolves the key in this process and forgets it here: the shared cache holds it."""
    assert api_key_resolve(prefix=prefix) is not None
    local_key_cache.clear()


@pytest.mark.django_db
def test_a_filled_entry_is_served_from_the_shared_cache(
    alice: Tenant, django_assert_num_queries: Any
) -> None:
    prefix = alice.api_key.prefix
    _fill_shared_cache(prefix)
    with django_assert_num_queries(0):
        resolved = api_key_resolve(prefix=prefix)
    assert resolved is not None and resolved.user is not None
    assert resolved.user.email == alice.owner.email


@pytest.mark.django_db
def test_the_key_cache_holds_no_password_hash(alice: Tenant) -> None:
    prefix = alice.api_key.prefix
    assert alice.client().get("/api/v1/me/").status_code == 200
    _fill_shared_cache(prefix)
    entry, _version = keycache.shared_get(prefix)
    assert entry is not None
    assert set(entry["user"]) == set(CACHED_FIELDS[User])
    assert alice.owner.password not in repr(entry)
    assert "stripe_customer_id" not in entry["organization"]
    if settings.REDIS_URL:  # what Redis holds, as bytes
        from common.shared_redis import redis_client

        client = redis_client()
        stored = b"".join(
            client.get(key) or b"" for key in client.scan_iter(f"{settings.CACHE_KEY_PREFIX}*apikey*")
        )
        assert prefix.encode() in stored
        assert alice.owner.password.encode() not in stored


@pytest.mark.django_db
def test_a_password_change_does_not_empty_the_key_cache(
    alice: Tenant, django_assert_num_queries: Any
) -> None:
    prefix = alice.api_key.prefix
    _fill_shared_cache(prefix)
    alice.owner.set_password("another horse battery staple")
    alice.owner.save(update_fields=["password"])
    local_key_cache.clear()
    with django_assert_num_queries(0):
        api_key_resolve(prefix=prefix)


@pytest.mark.django_db
def test_a_field_read_that_the_cache_left_out_is_loaded(alice: Tenant) -> None:
    alice.organization.billing_email = "billing@alice.test"
    alice.organization.save()
    prefix = alice.api_key.prefix
    _fill_shared_cache(prefix)
    resolved = api_key_resolve(prefix=prefix)
    assert resolved is not None
    assert resolved.organization.billing_email == "billing@alice.test"


@pytest.mark.django_db
def test_an_unknown_prefix_leaves_nothing_behind(alice: Tenant) -> None:
    assert api_key_resolve(prefix="sk-unknown12") is None
    assert cache.get_many([keycache.entry_key("sk-unknown12"), keycache.version_key("sk-unknown12")]) == {}
