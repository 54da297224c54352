from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings
from django.core.cache import cache
from django.db import models
from django.db.models import QuerySet

from accounts.keycache import local_key_cache
from accounts.models import APIKey, Membership, Organization, User

ModelT = TypeVar("ModelT", bound=models.Model)


def api_key_cache_key(prefix: str) -> str:
    return f"auth:apikey:{prefix}"


def _snapshot(instance: models.Model) -> dict[str, Any]:
    return {field.attname: getattr(instance, field.attname) for field in instance._meta.concrete_fields}


def _restore(model: type[ModelT], snapshot: dict[str, Any]) -> ModelT:
    return model.from_db(None, list(snapshot), list(snapshot.values()))


@dataclass(frozen=True)
class ResolvedAPIKey:
    api_key: APIKey
    organization: Organization
    user: User | None
    membership: Membership | None


def api_key_resolve(*, prefix: str) -> ResolvedAPIKey | None:
    """The key with this prefix, its organization, user and membership: from this process's
    cache (`accounts.keycache`), else the shared cache, else the database. Services that change a
    key or an organization delete the shared entry and tell every process to drop its own."""
    entry = local_key_cache.get(prefix)
    if entry is not None:
        return _resolved(entry)
    generation = local_key_cache.generation()
    entry = cache.get(api_key_cache_key(prefix))
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
        cache.set(api_key_cache_key(prefix), entry, timeout=settings.API_KEY_CACHE_SECONDS)
    local_key_cache.put(prefix, entry, generation)
    return _resolved(entry)


def _resolved(entry: dict[str, Any]) -> ResolvedAPIKey:
    organization = _restore(Organization, entry["organization"])
    api_key = _restore(APIKey, entry["api_key"])
    api_key.organization = organization
    user = _restore(User, entry["user"]) if entry["user"] is not None else None
    membership = _restore(Membership, entry["membership"]) if entry["membership"] else None
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
