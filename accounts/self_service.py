"""What a tenant does to its own organization: keys and members. Each function checks that the
actor may do it (`check_*`, Zulip's split), makes the change through `accounts.services`, and
writes the audit event, all in one transaction.

The rules, beyond the route's scope (`organization:write`):
- nothing made or changed has a scope the actor lacks: a key never grants more than the role of
  whoever made it, nor more than the role of the member it acts for;
- only an owner makes, demotes or removes an owner, and the last owner stays;
- a key of another member, or one with scopes the actor lacks, is not rotated by the actor (the
  new secret would let them act as someone they are not).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import QuerySet

from accounts.audit import Actor, audit_record, field_changes
from accounts.models import APIKey, Invitation, Membership, Organization, User
from accounts.scopes import ordered, role_scopes
from accounts.services import (
    InvalidScopes,
    api_key_create,
    api_key_revoke,
    api_key_rotate,
    api_key_scopes_check,
    api_key_update,
    membership_remove,
    membership_role_set,
)
from common.errors import APIError, NotFound

MAX_ROTATION_GRACE_SECONDS = 7 * 24 * 3600


class OwnerRequired(APIError):
    status = 403
    type = "permission_error"
    code = "owner_required"


# Selectors, each scoped by the organization: another tenant's id is "missing" (404).


def api_key_list(*, organization: Organization) -> QuerySet[APIKey]:
    return APIKey.objects.filter(organization=organization).select_related("user", "replaced_by")


def api_key_get(*, organization: Organization, key_id: int) -> APIKey:
    api_key = api_key_list(organization=organization).filter(pk=key_id).first()
    if api_key is None:
        raise NotFound("No such API key.", param="id")
    return api_key


def member_list(*, organization: Organization) -> QuerySet[Membership]:
    return Membership.objects.filter(organization=organization).select_related("user").order_by("created_at")


def member_get(*, organization: Organization, membership_id: int) -> Membership:
    membership = member_list(organization=organization).filter(pk=membership_id).first()
    if membership is None:
        raise NotFound("No such member.", param="id")
    return membership


def invitation_list_pending(*, organization: Organization) -> QuerySet[Invitation]:
    return Invitation.objects.filter(
        organization=organization, accepted_at__isnull=True, revoked_at__isnull=True
    )


# Keys.


def _check_scopes_within_actor(*, actor: Actor, scopes: Iterable[str]) -> None:
    beyond = [scope for scope in scopes if scope not in actor.scopes]
    if beyond:
        raise InvalidScopes(
            f"A key cannot have scope(s) your credentials do not have: {', '.join(beyond)}.",
            param="scopes",
        )


def _check_limits_within_organization(*, organization: Organization, fields: dict[str, Any]) -> None:
    """A key's limits and budget never exceed its organization's (which its plan sets)."""
    ceilings = {
        "requests_per_minute": organization.requests_per_minute,
        "tokens_per_minute": organization.tokens_per_minute,
        "token_budget": organization.token_quota,
    }
    for name, ceiling in ceilings.items():
        value = fields.get(name)
        if value is not None and ceiling is not None and value > ceiling:
            raise APIError(f"{name} cannot be above the organization's ({ceiling}).", param=name)


def _key_member(*, organization: Organization, user_id: int) -> User:
    membership = (
        Membership.objects.filter(organization=organization, user_id=user_id).select_related("user").first()
    )
    if membership is None:
        raise NotFound("No such member.", param="user")
    return membership.user


@dataclass(frozen=True)
class IssuedKey:
    api_key: APIKey
    secret: str


_KEY_FIELDS = ("name", "scopes", "token_budget", "budget_period", "requests_per_minute", "tokens_per_minute")


def _key_summary(api_key: APIKey) -> dict[str, Any]:
    summary = {name: getattr(api_key, name) for name in _KEY_FIELDS}
    summary.update(user=api_key.user_id, expires_at=api_key.expires_at, prefix=api_key.prefix)
    return summary


@transaction.atomic
def key_issue(
    *,
    organization: Organization,
    actor: Actor,
    name: str,
    for_user_id: int | None,
    scopes: list[str] | None,
    expires_in_days: int | None,
    token_budget: int | None,
    budget_period: str,
    requests_per_minute: int | None,
    tokens_per_minute: int | None,
) -> IssuedKey:
    """A key for the member `for_user_id` (None: for the whole organization). Its scopes are
    `scopes`, or by default everything both the actor and the member's role may do."""
    user = _key_member(organization=organization, user_id=for_user_id) if for_user_id is not None else None
    if scopes is None:
        reach = actor.scopes if user is None else actor.scopes & role_scopes(_role_of(organization, user))
        scopes = ordered(reach)
    _check_scopes_within_actor(actor=actor, scopes=scopes)
    _check_limits_within_organization(
        organization=organization,
        fields={
            "requests_per_minute": requests_per_minute,
            "tokens_per_minute": tokens_per_minute,
            "token_budget": token_budget,
        },
    )
    api_key, secret = api_key_create(
        organization=organization,
        name=name,
        user=user,
        scopes=scopes,
        expires_in_days=expires_in_days,
        token_budget=token_budget,
        budget_period=budget_period,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
    )
    audit_record(
        organization=organization,
        actor=actor,
        action="api_key.created",
        target=api_key,
        changes=_key_summary(api_key),
    )
    return IssuedKey(api_key=api_key, secret=secret)


def _role_of(organization: Organization, user: User) -> str:
    return (
        Membership.objects.filter(organization=organization, user=user).values_list("role", flat=True).first()
        or ""
    )


@transaction.atomic
def key_change(
    *, organization: Organization, actor: Actor, api_key: APIKey, fields: dict[str, Any]
) -> APIKey:
    """Renames the key, changes its scopes, expiry, limits or budget (`fields`)."""
    if api_key.revoked_at is not None:
        raise APIError("A revoked key cannot be changed.", param="id", code="api_key_inactive")
    if "scopes" in fields:
        _check_scopes_within_actor(actor=actor, scopes=fields["scopes"])
        fields["scopes"] = api_key_scopes_check(
            organization=organization, user=api_key.user, scopes=fields["scopes"]
        )
    _check_limits_within_organization(organization=organization, fields=fields)
    changes = field_changes(instance=api_key, fields=fields)
    if changes:
        api_key_update(api_key=api_key, **fields)
        audit_record(
            organization=organization, actor=actor, action="api_key.updated", target=api_key, changes=changes
        )
    return api_key


@transaction.atomic
def key_revoke(*, organization: Organization, actor: Actor, api_key: APIKey) -> APIKey:
    """Every process refuses the key from its next request (`accounts.signals`)."""
    if api_key.revoked_at is None:
        api_key_revoke(api_key=api_key)
        audit_record(organization=organization, actor=actor, action="api_key.revoked", target=api_key)
    return api_key


def check_may_rotate(*, actor: Actor, api_key: APIKey) -> None:
    acts_for_another = api_key.user_id is not None and (
        actor.user is None or api_key.user_id != actor.user.pk
    )
    if acts_for_another and actor.role != Membership.Role.OWNER:
        raise OwnerRequired("A member's key is rotated by the member or an owner.", param="id")
    beyond = [scope for scope in api_key.scopes if scope not in actor.scopes]
    if beyond:
        raise InvalidScopes(
            f"This key has scope(s) your credentials do not have ({', '.join(beyond)}): you cannot rotate it.",
            param="id",
        )


@transaction.atomic
def key_rotate(*, organization: Organization, actor: Actor, api_key: APIKey, grace_seconds: int) -> IssuedKey:
    if not 0 <= grace_seconds <= MAX_ROTATION_GRACE_SECONDS:
        raise APIError(
            f"grace_seconds must be from 0 to {MAX_ROTATION_GRACE_SECONDS}.", param="grace_seconds"
        )
    check_may_rotate(actor=actor, api_key=api_key)
    new_key, secret = api_key_rotate(api_key=api_key, grace_seconds=grace_seconds)
    audit_record(
        organization=organization,
        actor=actor,
        action="api_key.rotated",
        target=api_key,
        changes={"replaced_by": new_key.prefix, "old_key_ends_at": api_key.revoked_at or api_key.expires_at},
    )
    return IssuedKey(api_key=new_key, secret=secret)


# Members.


def _lock_owners(*, organization: Organization) -> int:
    """Locks the organization's row, which serializes every change of its owners, and counts
    them: two owners demoting each other at once cannot leave none."""
    Organization.objects.select_for_update().filter(pk=organization.pk).first()
    return Membership.objects.filter(organization=organization, role=Membership.Role.OWNER).count()


def _check_owner_change(
    *, organization: Organization, actor: Actor, membership: Membership, new_role: str | None
) -> None:
    """`new_role` None: the member is removed."""
    touches_owner = membership.role == Membership.Role.OWNER or new_role == Membership.Role.OWNER
    if touches_owner and actor.role != Membership.Role.OWNER:
        raise OwnerRequired("Only an owner makes, demotes or removes an owner.", param="role")
    demotes_owner = membership.role == Membership.Role.OWNER and new_role != Membership.Role.OWNER
    if demotes_owner and _lock_owners(organization=organization) <= 1:
        raise APIError(
            "The last owner cannot be removed or demoted: make another member an owner first.",
            param="id",
            code="last_owner",
            status=409,
        )


@transaction.atomic
def member_role_change(
    *, organization: Organization, actor: Actor, membership: Membership, role: str
) -> Membership:
    if role not in Membership.Role.values:
        raise APIError(f"Unknown role '{role}'. Roles: {', '.join(Membership.Role.values)}.", param="role")
    membership = Membership.objects.select_for_update().get(pk=membership.pk)
    _check_owner_change(organization=organization, actor=actor, membership=membership, new_role=role)
    old_role = membership.role
    if old_role != role:
        membership_role_set(membership=membership, role=role)
        audit_record(
            organization=organization,
            actor=actor,
            action="member.role_changed",
            target=membership,
            target_label=membership.user.email,
            changes={"role": [old_role, role]},
        )
    return membership


@transaction.atomic
def member_remove(*, organization: Organization, actor: Actor, membership: Membership) -> None:
    """Removes the member (their keys in the organization are revoked)."""
    membership = Membership.objects.select_for_update().select_related("user").get(pk=membership.pk)
    _check_owner_change(organization=organization, actor=actor, membership=membership, new_role=None)
    audit_record(
        organization=organization,
        actor=actor,
        action="member.removed",
        target=membership,
        target_label=membership.user.email,
        changes={"role": membership.role},
    )
    membership_remove(membership=membership)


def key_expiry_check(*, expires_at: datetime | None, now: datetime) -> None:
    if expires_at is not None and expires_at <= now:
        raise APIError("expires_at must be in the future.", param="expires_at")
