"""Tenants manage their own keys and members through the API: each role and key does what the
role table allows and nothing more, another tenant's ids are 404, the last owner stays, an
invitation is single-use and expires, and every change is in the audit log."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import APIKey, AuditEvent, Invitation, Membership, User
from accounts.services import api_key_create, membership_create, user_create
from tests.conftest import Tenant, assert_error_shape

PASSWORD = "correct horse battery staple"
KEYS = "/api/v1/organization/keys/"
MEMBERS = "/api/v1/organization/members/"
ACCEPT = "/api/v1/invitations/accept/"


def _member(tenant: Tenant, role: str, *, email: str | None = None) -> tuple[User, Membership, str]:
    """A member with `role` and a key with everything the role allows; returns its secret."""
    user = user_create(email=email or f"{role}@{tenant.organization.slug}.test", password=PASSWORD)
    membership = membership_create(organization=tenant.organization, user=user, role=role)
    _key, secret = api_key_create(organization=tenant.organization, name=role, user=user)
    return user, membership, secret


def _jwt(email: str) -> APIClient:
    client = APIClient()
    response = client.post("/api/v1/auth/token/", {"email": email, "password": PASSWORD}, format="json")
    assert response.status_code == 200, response.content
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['access']}")
    return client


def _events(tenant: Tenant, action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(organization=tenant.organization, action=action))


# --- Keys ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_owner_creates_a_key_sees_its_secret_once_and_it_works(alice: Tenant) -> None:
    client = alice.client()
    created = client.post(
        KEYS,
        {"name": "ci", "scopes": ["generate", "usage:read"], "expires_in_days": 30, "token_budget": 5000},
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["secret"].startswith("sk-") and body["prefix"] == body["secret"][: len(body["prefix"])]
    assert body["scopes"] == ["generate", "usage:read"]
    assert body["user"] == {"id": alice.owner.pk, "email": alice.owner.email}  # default: the caller
    assert body["token_budget"] == 5000 and body["expires_at"] is not None
    me = alice.client(body["secret"]).get("/api/v1/me/").json()
    assert me["scopes"] == ["generate", "usage:read"]

    listed = client.get(KEYS).json()["data"]
    assert body["id"] in [key["id"] for key in listed]
    assert all("secret" not in key for key in listed)
    shown = client.get(f"{KEYS}{body['id']}/").json()
    assert "secret" not in shown and shown["last_used_at"] is not None  # it was just used

    [event] = _events(alice, "api_key.created")
    assert event.actor_label.startswith(alice.api_key.prefix) and event.actor_user == alice.owner
    assert event.changes["scopes"] == ["generate", "usage:read"] and event.ip == "127.0.0.1"


@pytest.mark.django_db
def test_an_organization_wide_key_and_a_key_for_another_member(alice: Tenant, bob: Any) -> None:
    user, _membership = bob
    wide = alice.client().post(KEYS, {"name": "wide", "user": None}, format="json").json()
    assert wide["user"] is None and "billing:write" in wide["scopes"]  # the owner's reach
    for_bob = alice.client().post(KEYS, {"name": "bob's", "user": user.pk}, format="json").json()
    assert for_bob["scopes"] == ["generate", "rag", "documents:read"]  # a member's role
    refused = alice.client().post(
        KEYS, {"name": "x", "user": user.pk, "scopes": ["usage:read"]}, format="json"
    )
    assert assert_error_shape(refused, status=400, code="invalid_scope")["param"] == "scopes"


@pytest.mark.django_db
def test_an_admin_cannot_make_a_key_with_more_than_its_role(alice: Tenant) -> None:
    _user, _membership, secret = _member(alice, "admin")
    client = alice.client(secret)
    refused = client.post(KEYS, {"name": "x", "scopes": ["billing:read"]}, format="json")
    assert_error_shape(refused, status=400, code="invalid_scope")
    wide = client.post(KEYS, {"name": "wide", "user": None}, format="json").json()
    assert "billing:read" not in wide["scopes"] and "organization:write" in wide["scopes"]


@pytest.mark.django_db
def test_a_key_without_organization_write_reads_but_changes_nothing(alice: Tenant) -> None:
    _key, reader_secret = api_key_create(
        organization=alice.organization, name="ro", user=alice.owner, scopes=["organization:read"]
    )
    client = alice.client(reader_secret)
    assert client.get(KEYS).status_code == 200
    assert client.get(MEMBERS).status_code == 200
    for method, url in (
        ("post", KEYS),
        ("delete", f"{KEYS}{alice.api_key.pk}/"),
        ("post", f"{KEYS}{alice.api_key.pk}/rotate/"),
        ("post", MEMBERS),
        ("get", "/api/v1/organization/audit/"),
    ):
        response = getattr(client, method)(url, {"name": "x", "email": "x@y.test"}, format="json")
        assert_error_shape(response, status=403, code="missing_scope")
    _key, none_secret = api_key_create(
        organization=alice.organization, name="gen", user=alice.owner, scopes=["generate"]
    )
    assert_error_shape(alice.client(none_secret).get(KEYS), status=403, code="missing_scope")


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["member", "reader"])
def test_members_and_readers_cannot_manage_keys(alice: Tenant, role: str) -> None:
    user, _membership, _secret = _member(alice, role)
    client = _jwt(user.email)
    assert_error_shape(client.post(KEYS, {"name": "x"}, format="json"), status=403, code="missing_scope")
    assert client.get(KEYS).status_code == (200 if role == "reader" else 403)


@pytest.mark.django_db
def test_another_tenants_keys_and_members_are_404(alice: Tenant, charlie: Tenant) -> None:
    client = alice.client()
    theirs = charlie.api_key.pk
    charlie_owner = Membership.objects.get(organization=charlie.organization)
    for method, url in (
        ("get", f"{KEYS}{theirs}/"),
        ("patch", f"{KEYS}{theirs}/"),
        ("delete", f"{KEYS}{theirs}/"),
        ("post", f"{KEYS}{theirs}/rotate/"),
        ("patch", f"{MEMBERS}{charlie_owner.pk}/"),
        ("delete", f"{MEMBERS}{charlie_owner.pk}/"),
    ):
        response = getattr(client, method)(url, {"name": "mine now", "role": "reader"}, format="json")
        assert_error_shape(response, status=404, code="not_found")
    created = client.post(KEYS, {"name": "x", "user": charlie.owner.pk}, format="json")
    assert_error_shape(created, status=404, code="not_found")  # not a member here
    assert charlie.organization.api_keys.get().revoked_at is None
    assert charlie.api_key.pk not in [key["id"] for key in client.get(KEYS).json()["data"]]
    assert charlie.client().get("/api/v1/me/").status_code == 200


@pytest.mark.django_db
def test_revoking_a_key_refuses_it_at_once(alice: Tenant) -> None:
    created = alice.client().post(KEYS, {"name": "temp"}, format="json").json()
    assert alice.client(created["secret"]).get("/api/v1/me/").status_code == 200
    revoked = alice.client().delete(f"{KEYS}{created['id']}/")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert_error_shape(alice.client(created["secret"]).get("/api/v1/me/"), status=401, code="api_key_revoked")
    assert len(_events(alice, "api_key.revoked")) == 1


@pytest.mark.django_db
def test_rotation_gives_a_new_secret_and_ends_the_old_key_after_the_grace(alice: Tenant) -> None:
    created = alice.client().post(KEYS, {"name": "rotating", "token_budget": 900}, format="json").json()
    rotated = alice.client().post(f"{KEYS}{created['id']}/rotate/", {"grace_seconds": 60}, format="json")
    assert rotated.status_code == 201, rotated.content
    new = rotated.json()
    assert new["secret"] != created["secret"] and new["name"] == "rotating" and new["token_budget"] == 900
    assert alice.client(new["secret"]).get("/api/v1/me/").status_code == 200
    assert alice.client(created["secret"]).get("/api/v1/me/").status_code == 200  # within the grace
    old = APIKey.objects.get(pk=created["id"])
    assert old.replaced_by_id == new["id"]
    assert timedelta(seconds=55) < old.expires_at - timezone.now() <= timedelta(seconds=60)
    again = alice.client().post(f"{KEYS}{created['id']}/rotate/", {}, format="json")
    assert_error_shape(again, status=409, code="conflict")  # rotated once

    APIKey.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    from accounts.services import api_key_cache_invalidate

    api_key_cache_invalidate(prefixes=[old.prefix])  # the grace ends (as time would)
    assert_error_shape(alice.client(created["secret"]).get("/api/v1/me/"), status=401, code="api_key_expired")


@pytest.mark.django_db
def test_rotation_without_grace_stops_the_old_key_at_once(alice: Tenant) -> None:
    created = alice.client().post(KEYS, {"name": "now"}, format="json").json()
    new = alice.client().post(f"{KEYS}{created['id']}/rotate/", {"grace_seconds": 0}, format="json").json()
    assert_error_shape(alice.client(created["secret"]).get("/api/v1/me/"), status=401, code="api_key_revoked")
    assert alice.client(new["secret"]).get("/api/v1/me/").status_code == 200


@pytest.mark.django_db
def test_an_admin_cannot_rotate_the_owners_key_to_act_as_the_owner(alice: Tenant) -> None:
    _user, _membership, admin_secret = _member(alice, "admin")
    response = alice.client(admin_secret).post(f"{KEYS}{alice.api_key.pk}/rotate/", {}, format="json")
    assert_error_shape(response, status=403, code="owner_required")
    assert APIKey.objects.get(pk=alice.api_key.pk).replaced_by is None


@pytest.mark.django_db
def test_key_limits_cannot_exceed_the_organizations(alice: Tenant) -> None:
    alice.organization.requests_per_minute = 100
    alice.organization.save()
    response = alice.client().post(KEYS, {"name": "x", "requests_per_minute": 101}, format="json")
    assert assert_error_shape(response, status=400)["param"] == "requests_per_minute"
    changed = alice.client().patch(f"{KEYS}{alice.api_key.pk}/", {"requests_per_minute": 50}, format="json")
    assert changed.status_code == 200 and changed.json()["requests_per_minute"] == 50
    [event] = _events(alice, "api_key.updated")
    assert event.changes == {"requests_per_minute": [None, 50]}


# --- Members and invitations ------------------------------------------------------------------


def _invite(client: APIClient, email: str, role: str = "member") -> dict[str, Any]:
    response = client.post(MEMBERS, {"email": email, "role": role}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def _token(invitation: dict[str, Any]) -> str:
    return invitation["accept_url"].split("token=")[1]


@pytest.mark.django_db
def test_an_invitation_is_emailed_accepted_once_and_signs_the_new_member_in(
    alice: Tenant, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        invitation = _invite(alice.client(), "Dana@Example.test", role="reader")
    assert invitation["email"] == "dana@example.test" and invitation["role"] == "reader"
    assert invitation["accept_url"].startswith("http://testserver/console/invitations/accept/?token=")
    [message] = mail.outbox
    assert message.to == ["dana@example.test"] and invitation["accept_url"] in message.body
    listed = alice.client().get(MEMBERS).json()
    assert [pending["email"] for pending in listed["invitations"]] == ["dana@example.test"]

    anonymous = APIClient()
    weak = anonymous.post(ACCEPT, {"token": _token(invitation), "password": "123"}, format="json")
    assert assert_error_shape(weak, status=400, code="invalid_password")["param"] == "password"
    accepted = anonymous.post(ACCEPT, {"token": _token(invitation), "password": PASSWORD}, format="json")
    assert accepted.status_code == 200, accepted.content
    body = accepted.json()
    assert body["role"] == "reader" and body["created_account"] is True
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {body['access']}")
    assert client.get("/api/v1/me/").json()["user"]["role"] == "reader"

    again = anonymous.post(ACCEPT, {"token": _token(invitation), "password": PASSWORD}, format="json")
    assert_error_shape(again, status=409, code="invalid_invitation")
    assert (
        Membership.objects.filter(organization=alice.organization, user__email="dana@example.test").count()
        == 1
    )
    assert [e.action for e in AuditEvent.objects.filter(organization=alice.organization)][:2] == [
        "member.joined",
        "member.invited",
    ]


@pytest.mark.django_db
def test_an_expired_or_replaced_invitation_is_refused(alice: Tenant) -> None:
    first = _invite(alice.client(), "erin@example.test")
    second = _invite(alice.client(), "erin@example.test")
    replaced = APIClient().post(ACCEPT, {"token": _token(first), "password": PASSWORD}, format="json")
    assert_error_shape(replaced, status=404, code="invalid_invitation")
    Invitation.objects.filter(pk=second["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    expired = APIClient().post(ACCEPT, {"token": _token(second), "password": PASSWORD}, format="json")
    assert "expired" in assert_error_shape(expired, status=409, code="invalid_invitation")["message"]
    assert not User.objects.filter(email="erin@example.test").exists()


@pytest.mark.django_db
def test_an_existing_user_joins_without_a_password_and_a_wrong_one_joins_no_one(
    alice: Tenant, charlie: Tenant
) -> None:
    invitation = _invite(alice.client(), charlie.owner.email, role="admin")
    wrong = APIClient().post(
        ACCEPT, {"token": _token(invitation), "password": "not it at all"}, format="json"
    )
    assert_error_shape(wrong, status=400, code="invalid_password")
    joined = APIClient().post(ACCEPT, {"token": _token(invitation)}, format="json").json()
    assert joined["created_account"] is False and joined["access"] is None
    assert Membership.objects.get(organization=alice.organization, user=charlie.owner).role == "admin"


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_acceptances_of_one_token_make_one_member(alice: Tenant) -> None:
    token = _token(_invite(alice.client(), "fay@example.test"))

    def accept(_: int) -> int:
        try:
            return APIClient().post(ACCEPT, {"token": token, "password": PASSWORD}, format="json").status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = sorted(pool.map(accept, range(4)))
    assert statuses[0] == 200 and statuses.count(200) == 1, statuses
    assert Membership.objects.filter(user__email="fay@example.test").count() == 1


@pytest.mark.django_db
def test_only_an_owner_makes_or_removes_owners(alice: Tenant) -> None:
    admin, _m, admin_secret = _member(alice, "admin")
    _bob, bob_membership, _s = _member(alice, "member", email="bob@alice.test")
    owner_membership = Membership.objects.get(organization=alice.organization, user=alice.owner)
    client = alice.client(admin_secret)
    assert_error_shape(
        client.post(MEMBERS, {"email": "x@example.test", "role": "owner"}, format="json"),
        status=403,
        code="owner_required",
    )
    assert_error_shape(
        client.patch(f"{MEMBERS}{bob_membership.pk}/", {"role": "owner"}, format="json"),
        status=403,
        code="owner_required",
    )
    assert_error_shape(client.delete(f"{MEMBERS}{owner_membership.pk}/"), status=403, code="owner_required")
    promoted = client.patch(f"{MEMBERS}{bob_membership.pk}/", {"role": "reader"}, format="json")
    assert promoted.status_code == 200 and promoted.json()["role"] == "reader"
    made_owner = alice.client().patch(f"{MEMBERS}{bob_membership.pk}/", {"role": "owner"}, format="json")
    assert made_owner.json()["role"] == "owner"
    [event, *_] = _events(alice, "member.role_changed")
    assert event.changes == {"role": ["reader", "owner"]} and event.target_label == "bob@alice.test"


@pytest.mark.django_db
def test_the_last_owner_can_be_neither_removed_nor_demoted(alice: Tenant) -> None:
    owner_membership = Membership.objects.get(organization=alice.organization, user=alice.owner)
    client = alice.client()
    assert_error_shape(
        client.patch(f"{MEMBERS}{owner_membership.pk}/", {"role": "admin"}, format="json"),
        status=409,
        code="last_owner",
    )
    assert_error_shape(client.delete(f"{MEMBERS}{owner_membership.pk}/"), status=409, code="last_owner")
    assert Membership.objects.get(pk=owner_membership.pk).role == "owner"


@pytest.mark.django_db(transaction=True)
def test_two_owners_demoting_each_other_at_once_leave_one(alice: Tenant) -> None:
    second, second_membership, second_secret = _member(alice, "owner", email="second@alice.test")
    first_membership = Membership.objects.get(organization=alice.organization, user=alice.owner)

    def demote(args: tuple[str, int]) -> int:
        secret, membership_id = args
        try:
            return (
                alice.client(secret)
                .patch(f"{MEMBERS}{membership_id}/", {"role": "admin"}, format="json")
                .status_code
            )
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=2) as pool:
        statuses = sorted(
            pool.map(demote, [(alice.secret, second_membership.pk), (second_secret, first_membership.pk)])
        )
    assert Membership.objects.filter(organization=alice.organization, role="owner").count() == 1
    # The loser is refused as the last owner, or, when it runs second, as no longer an owner.
    assert statuses[0] == 200 and statuses[1] in (403, 409), statuses


@pytest.mark.django_db
def test_removing_a_member_revokes_their_keys_here(alice: Tenant) -> None:
    _user, membership, secret = _member(alice, "member", email="gus@alice.test")
    assert alice.client(secret).get("/api/v1/me/").status_code == 200
    assert alice.client().delete(f"{MEMBERS}{membership.pk}/").status_code == 204
    assert_error_shape(alice.client(secret).get("/api/v1/me/"), status=401, code="api_key_revoked")
    [event] = _events(alice, "member.removed")
    assert event.target_label == "gus@alice.test"


@pytest.mark.django_db
def test_the_audit_log_is_for_owners_and_admins_of_the_organization_only(
    alice: Tenant, charlie: Tenant
) -> None:
    alice.client().post(KEYS, {"name": "audited"}, format="json")
    charlie.client().post(KEYS, {"name": "theirs"}, format="json")
    log = alice.client().get("/api/v1/organization/audit/").json()
    assert log["count"] == 1
    [event] = log["results"]
    assert event["action"] == "api_key.created" and event["actor"]["type"] == "api_key"
    assert event["target"]["type"] == "apikey" and event["changes"]["name"] == "audited"
    _user, _membership, admin_secret = _member(alice, "admin")
    assert alice.client(admin_secret).get("/api/v1/organization/audit/").json()["count"] == 1
    reader, _m, _s = _member(alice, "reader")
    assert_error_shape(
        _jwt(reader.email).get("/api/v1/organization/audit/"), status=403, code="missing_scope"
    )


def _key_budget(client: APIClient) -> dict[str, Any]:
    (budget,) = [b for b in client.get("/api/v1/me/").json()["budgets"] if b["scope"] == "api_key"]
    return budget


@pytest.mark.django_db
@pytest.mark.parametrize("redis_lost", [False, True])
def test_rotating_a_capped_key_does_not_start_its_budget_afresh(
    alice: Tenant, openai_backend: str, redis_lost: bool
) -> None:
    """A capped key rotated (after a leak, say) moves its secret, not its spending: the new key
    draws on what is left of the same budget (with the counter in Redis, and rebuilt from the
    usage records after Redis is lost), during the grace and after it."""
    from tests.conftest import _clear
    from usage.services import usage_stream_flush

    user, _membership, _secret = _member(alice, "member")
    key, secret = api_key_create(organization=alice.organization, name="capped", user=user, token_budget=40)
    old = alice.client(secret)
    first = old.post("/api/v1/generate/", {"prompt": "hello", "max_tokens": 8}, format="json")
    assert first.status_code == 200, first.content
    spent = _key_budget(old)["used"]
    assert spent > 0

    rotated = alice.client().post(f"{KEYS}{key.pk}/rotate/", {"grace_seconds": 60}, format="json")
    assert rotated.status_code == 201, rotated.content
    new = alice.client(rotated.json()["secret"])
    if redis_lost:
        usage_stream_flush()
        _clear()  # Redis restarted empty: every counter is rebuilt from the database
    assert _key_budget(new)["used"] == _key_budget(old)["used"] == spent
    # More than is left, less than a fresh budget would have allowed.
    over = new.post("/api/v1/generate/", {"prompt": "hello", "max_tokens": 40 - spent}, format="json")
    assert_error_shape(over, status=429, code="insufficient_quota")
    assert new.post("/api/v1/generate/", {"prompt": "hi", "max_tokens": 1}, format="json").status_code == 200
    assert _key_budget(old)["used"] == _key_budget(new)["used"] > spent


@pytest.mark.django_db
def test_keys_rotated_before_the_upgrade_get_their_line(alice: Tenant) -> None:
    """Migration 0008 gives keys rotated before it the line their `replaced_by` chain names."""
    from importlib import import_module

    from django.apps import apps

    from accounts.services import api_key_rotate

    first, _ = api_key_create(organization=alice.organization, name="old", token_budget=10)
    second, _ = api_key_rotate(api_key=first, grace_seconds=0)
    third, _ = api_key_rotate(api_key=second, grace_seconds=0)
    assert {second.budget_lineage, third.budget_lineage} == {first.pk}
    APIKey.objects.update(budget_lineage=None)  # as before the migration
    import_module("accounts.migrations.0008_api_key_budget_lineage").lineages_from_rotations(apps, None)
    lines = dict(
        APIKey.objects.filter(pk__in=[first.pk, second.pk, third.pk]).values_list("pk", "budget_lineage")
    )
    assert lines == {first.pk: None, second.pk: first.pk, third.pk: first.pk}
