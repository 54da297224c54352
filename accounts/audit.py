"""The audit log: who changed what in an organization, when, from where.

Every change made through the self-service routes and the admin's equivalents is recorded by
`audit_record`, in the transaction of the change (a change that rolls back leaves no event).
The actor comes from the request once (`actor_from_request`, `actor_operator`) and is passed to
the services that change things, so the record names the member or key that asked, not only the
user behind it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from django.db import models
from django.db.models import QuerySet

from accounts.context import AuthContext
from accounts.models import AuditEvent, Organization, User
from accounts.scopes import ALL_SCOPES
from accounts.throttling import client_ip
from common.request_notes import request_notes


@dataclass(frozen=True)
class Actor:
    type: str  # AuditEvent.ActorType
    label: str
    user: User | None = None
    ip: str | None = None
    request_id: str = ""
    # The role the actor acts with, for the rules on owners (None: an organization-wide key,
    # an OAuth2 client or an operator, none of which is a member).
    role: str | None = None
    # What the actor may do; what it creates or grants stays within them.
    scopes: frozenset[str] = frozenset()


def _valid_ip(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def actor_from_context(*, context: AuthContext, ip: str = "", request_id: str = "") -> Actor:
    role = context.membership.role if context.membership is not None else None
    if context.api_key is not None:
        return Actor(
            type=AuditEvent.ActorType.API_KEY,
            label=f"{context.api_key.prefix}… ({context.api_key.name})",
            user=context.user,
            ip=_valid_ip(ip),
            request_id=request_id,
            role=role,
            scopes=context.scopes,
        )
    if context.oauth_client_id is not None:
        return Actor(
            type=AuditEvent.ActorType.OAUTH_CLIENT,
            label=f"oauth client {context.oauth_client_id}",
            ip=_valid_ip(ip),
            request_id=request_id,
            scopes=context.scopes,
        )
    return Actor(
        type=AuditEvent.ActorType.MEMBER,
        label=context.user.email if context.user is not None else "member",
        user=context.user,
        ip=_valid_ip(ip),
        request_id=request_id,
        role=role,
        scopes=context.scopes,
    )


def actor_from_request(request: Any) -> Actor:
    """The authenticated caller of an API request."""
    notes = request_notes(request)
    if not isinstance(notes.auth, AuthContext):
        raise RuntimeError("actor_from_request() called on a request the API pipeline did not authenticate")
    return actor_from_context(context=notes.auth, ip=client_ip(request), request_id=notes.request_id)


def actor_anonymous(request: Any, *, label: str, user: User | None = None) -> Actor:
    """Someone not yet signed in: a sign-up, an invitation being accepted."""
    return Actor(
        type=AuditEvent.ActorType.ANONYMOUS,
        label=label,
        user=user,
        ip=_valid_ip(client_ip(request)),
        request_id=request_notes(request).request_id,
    )


def actor_operator(request: Any) -> Actor:
    """A staff user in the Django admin: an operator may do anything, owners included."""
    user = request.user
    return Actor(
        type=AuditEvent.ActorType.OPERATOR,
        label=f"operator {user.email}",
        user=user,
        ip=_valid_ip(client_ip(request)),
        request_id=request_notes(request).request_id,
        role="owner",
        scopes=frozenset(ALL_SCOPES),
    )


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, models.Model):
        return value.pk
    return str(value)  # datetimes, decimals, enums


def audit_record(
    *,
    organization: Organization,
    actor: Actor,
    action: str,
    target: models.Model | None = None,
    target_label: str = "",
    changes: dict[str, Any] | None = None,
) -> AuditEvent:
    """Writes one event. `action` is `<thing>.<verb>` (`api_key.created`, `member.role_changed`);
    `changes` holds the new values (or `{field: [old, new]}` for an update)."""
    return AuditEvent.objects.create(
        organization=organization,
        actor_type=actor.type,
        actor_user=actor.user,
        actor_label=actor.label[:254],
        action=action,
        target_type=(target._meta.model_name or "") if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        target_label=(target_label or (str(target) if target is not None else ""))[:254],
        changes=_jsonable(changes or {}),
        ip=actor.ip,
        request_id=actor.request_id,
    )


def field_changes(*, instance: models.Model, fields: dict[str, Any]) -> dict[str, list[Any]]:
    """`{field: [old, new]}` for the fields whose value `fields` changes."""
    return {
        name: [getattr(instance, name), value]
        for name, value in fields.items()
        if getattr(instance, name) != value
    }


def audit_event_list(*, organization: Organization) -> QuerySet[AuditEvent]:
    return AuditEvent.objects.filter(organization=organization).select_related("actor_user")
