from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db import models
from django.db.models import QuerySet

from accounts import keycache
from accounts.keycache import local_key_cache
from accounts.models import APIKey, Membership, Organization, User

ModelT = TypeVar("ModelT", bound=models.Model)

# What authentication and admission read of each row; a key's entry holds these and nothing
# else (no password hash, no billing details). A field left out is loaded from the database if
# something reads it.
CACHED_FIELDS: dict[type[models.Model], tuple[str, ...]] = {
    APIKey: (
        "id",
        "organization_id",
        "user_id",
        "name",
        "prefix",
        "secret_hash",
        "scopes",
        "requests_per_minute",
        "tokens_per_minute",
        "token_budget",
        "budget_period",
        "expires_at",
        "revoked_at",
        "budget_lineage",
    ),
    Organization: (
        "id",
        "name",
        "slug",
        "status",
        "status_reason",
        "requests_per_minute",
        "tokens_per_minute",
        "token_quota",
        "quota_period",
        "end_user_token_budget",
        "end_user_budget_period",
        "search_requests_per_minute",
        "ingestion_token_quota",
        "allowed_models",
    ),
    User: ("id", "email", "full_name", "is_active"),
    Membership: ("id", "user_id", "organization_id", "role", "token_budget", "budget_period"),
}


def _snapshot(instance: models.Model) -> dict[str, Any]:
    return {name: getattr(instance, name) for name in CACHED_FIELDS[type(instance)]}


def _restore(model: type[ModelT], snapshot: dict[str, Any]) -> ModelT:
    # `from_db` takes the values of the fields it is given in the model's field order.
    names = [field.attname for field in model._meta.concrete_fields if field.attname in snapshot]
    return model.from_db(None, names, [snapshot[name] for name in names])


@dataclass(frozen=True)
class ResolvedAPIKey:
    api_key: APIKey
    organization: Organization
    user: User | None
    membership: Membership | None


def api_key_resolve(*, prefix: str) -> ResolvedAPIKey | None:
    """The key with this prefix, its organization, user and membership: from this process's
    cache, else the shared cache, else the database (`accounts.keycache`). Every save or delete
    of a key, organization, user or membership invalidates the entries it affects
    (`accounts.signals`)."""
    entry = local_key_cache.get(prefix)
    if entry is not None:
        return _resolved(entry)
    generation = local_key_cache.generation()
    entry, version = keycache.shared_get(prefix)  # the version, read before the database
    if entry is not None and not _complete(entry):
        entry = None  # written by a version that cached fewer fields: read it again, once
    if entry is None:
        api_key = APIKey.objects.select_related("organization", "user").filter(prefix=prefix).first()
        if api_key is None:
            return None
        membership = None
        if api_key.user_id is not None:
            membership = Membership.objects.filter(
                user_id=api_key.user_id, organization_id=api_key.organization_id
            ).first()
        entry = {
            "api_key": _snapshot(api_key),
            "organization": _snapshot(api_key.organization),
            "user": _snapshot(api_key.user) if api_key.user is not None else None,
            "membership": _snapshot(membership) if membership is not None else None,
        }
        keycache.shared_put(prefix, entry, version=version)
    local_key_cache.put(prefix, entry, generation)
    return _resolved(entry)


_ENTRY_MODELS = {"api_key": APIKey, "organization": Organization, "user": User, "membership": Membership}
_ENTRY_FIELDS = {part: frozenset(CACHED_FIELDS[model]) for part, model in _ENTRY_MODELS.items()}


def _complete(entry: dict[str, Any]) -> bool:
    """Whether the entry holds every field this version caches: one from before a field was
    added (a rolling upgrade) would load that field from the database on every request."""
    return all(
        entry.get(part) is None or fields <= entry[part].keys() for part, fields in _ENTRY_FIELDS.items()
    )


def _resolved(entry: dict[str, Any]) -> ResolvedAPIKey:
    organization = _restore(Organization, entry["organization"])
    api_key = _restore(APIKey, entry["api_key"])
    api_key.organization = organization
    user = _restore(User, entry["user"]) if entry["user"] is not None else None
    api_key.user = user
    membership = _restore(Membership, entry["membership"]) if entry["membership"] else None
    if membership is not None and user is not None:
        membership.user, membership.organization = user, organization
    return ResolvedAPIKey(api_key=api_key, organization=organization, user=user, membership=membership)


def membership_get(*, user_id: int, organization_id: int) -> Membership | None:
    return (
        Membership.objects.select_related("user", "organization")
        .filter(user_id=user_id, organization_id=organization_id)
        .first()
    )


def membership_list_for_user(*, user: User) -> QuerySet[Membership]:
    return Membership.objects.select_related("organization").filter(user=user)


def organization_get_by_slug(*, slug: str) -> Organization | None:
    return Organization.objects.filter(slug=slug).first()


def api_key_list(*, organization: Organization) -> QuerySet[APIKey]:
    return APIKey.objects.filter(organization=organization)


def api_key_prefixes(*, organization_id: int | None = None, user_id: int | None = None) -> list[str]:
    """The prefixes of the keys of an organization, of a user, or of a user in an organization."""
    assert organization_id is not None or user_id is not None
    keys = APIKey.objects.all()
    if organization_id is not None:
        keys = keys.filter(organization_id=organization_id)
    if user_id is not None:
        keys = keys.filter(user_id=user_id)
    return list(keys.values_list("prefix", flat=True))


def organization_model_allowed(*, organization: Organization) -> Callable[[str], bool]:
    """Whether the organization may use a model (by its public name): those its plan lists, or
    every one when it lists none."""
    if not organization.allowed_models:
        return lambda name: True
    return frozenset(organization.allowed_models).__contains__
