from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import cast

from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify
from oauth2_provider.models import get_application_model

from accounts import keycache, keys
from accounts.models import APIKey, BudgetPeriod, Membership, OAuthClient, Organization, User
from accounts.scopes import ALL_SCOPES, ordered
from accounts.selectors import api_key_prefixes
from common.errors import APIError


class InvalidScopes(APIError):
    code = "invalid_scope"


def _validated_scopes(scopes: Iterable[str] | None) -> list[str]:
    if scopes is None:
        return list(ALL_SCOPES)
    chosen = list(dict.fromkeys(scopes))
    unknown = [scope for scope in chosen if scope not in ALL_SCOPES]
    if unknown:
        raise InvalidScopes(
            f"Unknown scope(s): {', '.join(unknown)}. Known scopes: {', '.join(ALL_SCOPES)}.",
            param="scopes",
        )
    return chosen


def api_key_scopes_check(
    *, organization: Organization, user: User | None, scopes: Iterable[str] | None
) -> list[str]:
    """The scopes a key for `user` (None: for the whole organization) is created or updated
    with: `scopes` when they are known and within the member's role, the role's scopes when
    `scopes` is None (every scope for an organization-wide key). More than the role grants is
    refused, so that a key never claims what it could not use."""
    if user is None:
        return _validated_scopes(scopes)
    membership = Membership.objects.filter(user=user, organization=organization).first()
    if membership is None:
        raise APIError(f"{user.email} is not a member of {organization.slug}.", param="user")
    if scopes is None:
        return ordered(membership.scopes)
    chosen = _validated_scopes(scopes)
    beyond = [scope for scope in chosen if scope not in membership.scopes]
    if beyond:
        raise InvalidScopes(
            f"A key for {user.email}, a {membership.role} of {organization.slug}, cannot have the "
            f"scope(s) {', '.join(beyond)}: the role grants only {', '.join(ordered(membership.scopes))}.",
            param="scopes",
        )
    return chosen


def api_key_cache_invalidate(*, prefixes: Iterable[str]) -> None:
    """Forgets cached key lookups now and again once the surrounding transaction commits (a
    concurrent request may have read the old row in between), so that the next request in
    any process reads the new state. `accounts.signals` calls it on every write that changes
    what a key resolves to."""
    prefixes = list(prefixes)
    if not prefixes:
        return
    keycache.invalidate(prefixes)
    transaction.on_commit(lambda: keycache.invalidate(prefixes))


def organization_cache_invalidate(*, organization: Organization) -> None:
    api_key_cache_invalidate(prefixes=api_key_prefixes(organization_id=organization.pk))


@transaction.atomic
def user_create(*, email: str, password: str | None = None, full_name: str = "") -> User:
    return User.objects.create_user(email, password, full_name=full_name)


def user_deactivate(*, user: User) -> User:
    """The user can no longer sign in, and their JWTs and keys stop working in every process at
    once; reactivating them restores both."""
    user.is_active = False
    user.save(update_fields=["is_active"])
    return user


def user_reactivate(*, user: User) -> User:
    user.is_active = True
    user.save(update_fields=["is_active"])
    return user


def user_delete(*, user: User) -> None:
    """Deletes the user with their memberships and keys (their keys stop working in every
    process: `accounts.signals`)."""
    user.delete()


@transaction.atomic
def organization_create(*, slug: str, name: str = "", owner: User | None = None) -> Organization:
    if slugify(slug) != slug:
        raise APIError(f"'{slug}' is not a valid slug (lowercase letters, digits, hyphens).", param="slug")
    if Organization.objects.filter(slug=slug).exists():
        raise APIError(
            f"An organization with slug '{slug}' already exists.", param="slug", code="conflict", status=409
        )
    organization = Organization.objects.create(slug=slug, name=name or slug)
    if owner is not None:
        Membership.objects.create(user=owner, organization=organization, role=Membership.Role.OWNER)
    return organization


def _validated_role(role: str) -> str:
    if role not in Membership.Role.values:
        raise APIError(f"Unknown role '{role}'. Roles: {', '.join(Membership.Role.values)}.", param="role")
    return role


@transaction.atomic
def membership_create(
    *, organization: Organization, user: User, role: str = Membership.Role.MEMBER
) -> Membership:
    return Membership.objects.create(organization=organization, user=user, role=_validated_role(role))


def membership_role_set(*, membership: Membership, role: str) -> Membership:
    """The member's JWTs and keys get the new role's scopes on their next request (a key's own
    scopes are cut down to its member's role when it is resolved: `accounts.scopes`)."""
    membership.role = _validated_role(role)
    membership.save(update_fields=["role"])
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership) -> None:
    """The user leaves the organization: their JWTs for it stop working in every process at
    once, and their keys in it are revoked (kept for the usage that names them), so that they do
    not come back to life if the user is invited again."""
    revoked = APIKey.objects.filter(
        organization_id=membership.organization_id, user_id=membership.user_id, revoked_at__isnull=True
    )
    prefixes = list(revoked.values_list("prefix", flat=True))
    revoked.update(revoked_at=timezone.now())
    api_key_cache_invalidate(prefixes=prefixes)  # update() sends no signal
    membership.delete()


@transaction.atomic
def organization_update(*, organization: Organization, **fields: object) -> Organization:
    for name, value in fields.items():
        setattr(organization, name, value)
    organization.save()
    return organization


def organization_suspend(*, organization: Organization, reason: str = "") -> Organization:
    return organization_update(
        organization=organization, status=Organization.Status.SUSPENDED, status_reason=reason
    )


def organization_reactivate(*, organization: Organization) -> Organization:
    return organization_update(organization=organization, status=Organization.Status.ACTIVE, status_reason="")


def organization_delete(*, organization: Organization) -> None:
    """Deletes the organization with its members, keys and clients (refused while usage that
    must be billed refers to it: suspend it instead)."""
    organization.delete()


@transaction.atomic
def api_key_create(
    *,
    organization: Organization,
    name: str,
    user: User | None = None,
    scopes: Sequence[str] | None = None,
    expires_in_days: int | None = None,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    token_budget: int | None = None,
    budget_period: str = BudgetPeriod.MONTH,
    expires_at: datetime | None = None,
) -> tuple[APIKey, str]:
    """Creates a key and returns it with its secret, which is never stored and cannot be shown
    again. A key for a member has at most the member's role's scopes (by default, all of them);
    an organization-wide key (no `user`) every scope by default. `expires_at` (a rotation's
    copy) takes the place of `expires_in_days`."""
    if expires_in_days is not None and expires_in_days < 1:
        raise APIError("expires_in_days must be at least 1.", param="expires_in_days")
    chosen_scopes = api_key_scopes_check(organization=organization, user=user, scopes=scopes)
    if expires_in_days:
        expires_at = timezone.now() + timedelta(days=expires_in_days)
    for _attempt in range(5):
        raw_key = keys.generate_key()
        try:
            with transaction.atomic():
                api_key = APIKey.objects.create(
                    organization=organization,
                    user=user,
                    name=name,
                    prefix=keys.key_prefix(raw_key),
                    secret_hash=keys.hash_key(raw_key),
                    scopes=chosen_scopes,
                    expires_at=expires_at,
                    requests_per_minute=requests_per_minute,
                    tokens_per_minute=tokens_per_minute,
                    token_budget=token_budget,
                    budget_period=budget_period,
                )
        except IntegrityError:
            continue  # prefix collision: astronomically rare, draw another key
        return api_key, raw_key
    raise RuntimeError("Could not draw a unique API key prefix.")


@transaction.atomic
def api_key_update(*, api_key: APIKey, **fields: object) -> APIKey:
    if "scopes" in fields or "user" in fields:
        fields["scopes"] = api_key_scopes_check(
            organization=api_key.organization,
            user=cast("User | None", fields.get("user", api_key.user)),
            scopes=cast("list[str] | None", fields.get("scopes", api_key.scopes)),
        )
    for name, value in fields.items():
        setattr(api_key, name, value)
    api_key.save()
    return api_key


def api_key_revoke(*, api_key: APIKey) -> APIKey:
    if api_key.revoked_at is not None:
        return api_key
    return api_key_update(api_key=api_key, revoked_at=timezone.now())


def api_key_delete(*, api_key: APIKey) -> None:
    api_key.delete()


@transaction.atomic
def api_key_rotate(*, api_key: APIKey, grace_seconds: int) -> tuple[APIKey, str]:
    """Makes a new key with the old one's name, member, scopes, limits, budget and expiry, and
    ends the old one `grace_seconds` from now (at once for 0; never later than it would have
    ended anyway). Returns the new key and its secret. A key is rotated once: the old one's
    row is locked, so two concurrent rotations cannot both succeed.

    The new key counts against the same token budget as the old one (`budget_lineage`): a
    rotation moves the secret, not the spending, so whoever holds a capped key cannot rotate
    it to start the cap afresh; during the grace both keys draw on that one budget."""
    old = APIKey.objects.select_for_update().get(pk=api_key.pk)
    now = timezone.now()
    if old.revoked_at is not None or old.is_expired(now=now):
        raise APIError("A revoked or expired key cannot be rotated.", param="id", code="api_key_inactive")
    if old.replaced_by_id is not None:
        raise APIError(
            "This key was already rotated; rotate its replacement instead.",
            param="id",
            code="conflict",
            status=409,
        )
    new_key, secret = api_key_create(
        organization=old.organization,
        name=old.name,
        user=old.user,
        scopes=old.scopes,
        requests_per_minute=old.requests_per_minute,
        tokens_per_minute=old.tokens_per_minute,
        token_budget=old.token_budget,
        budget_period=old.budget_period,
        expires_at=old.expires_at,
    )
    APIKey.objects.filter(pk=new_key.pk).update(budget_lineage=old.budget_subject)
    new_key.budget_lineage = old.budget_subject
    ends_at = now + timedelta(seconds=grace_seconds)
    fields: dict[str, object] = {"replaced_by": new_key}
    if grace_seconds == 0:
        fields["revoked_at"] = now
    elif old.expires_at is None or ends_at < old.expires_at:
        fields["expires_at"] = ends_at
    api_key_update(api_key=old, **fields)
    api_key.refresh_from_db()
    return new_key, secret


_touched_at: dict[int, float] = {}


def api_key_touch(*, api_key_id: int, resolution_seconds: int) -> None:
    """Records that a key was used, at most once per `resolution_seconds` per key across all
    processes (a cache add is the gate), so authentication does not write on every request.
    A per-process memory of the last touch spares the shared cache a round trip per request."""
    now = time.monotonic()
    if now - _touched_at.get(api_key_id, -resolution_seconds) < resolution_seconds:
        return
    _touched_at[api_key_id] = now
    if cache.add(f"auth:apikey-used:{api_key_id}", 1, timeout=resolution_seconds):
        APIKey.objects.filter(pk=api_key_id).update(last_used_at=timezone.now())


@transaction.atomic
def oauth_client_create(
    *, organization: Organization, name: str, scopes: Sequence[str] | None = None
) -> tuple[OAuthClient, str, str]:
    """Creates a client-credentials application for the organization. Returns the client with
    its id and secret; the secret is stored hashed and cannot be shown again."""
    application_model = get_application_model()
    client_secret = secrets.token_urlsafe(32)
    application = application_model.objects.create(
        name=name,
        client_type=application_model.CLIENT_CONFIDENTIAL,
        authorization_grant_type=application_model.GRANT_CLIENT_CREDENTIALS,
        client_secret=client_secret,
    )
    client = OAuthClient.objects.create(
        application=application, organization=organization, scopes=_validated_scopes(scopes)
    )
    return client, application.client_id, client_secret
