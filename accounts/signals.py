"""Key cache invalidation after every write that changes what a cached API key resolves to.

Signals, although STYLE keeps domain logic out of them, because this is not domain logic: it
decides nothing, it only forgets cached copies, and it must follow every path that writes these
rows, not only the services. The admin saves and deletes rows itself, a deleted organization or
user takes its keys and memberships with it without calling any service (Django's cascade), and
other apps save organizations. A service that forgot to invalidate, or a path that bypassed the
services, would leave a removed key working for `API_KEY_CACHE_SECONDS`.

`QuerySet.update()` sends no signal: an update of these models that changes a field in
`accounts.selectors.CACHED_FIELDS` must call `api_key_cache_invalidate` itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import models
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from accounts.models import APIKey, Membership, Organization, User
from accounts.selectors import CACHED_FIELDS, api_key_prefixes
from accounts.services import api_key_cache_invalidate, organization_cache_invalidate


def _changes_cached_fields(model: type[models.Model], update_fields: Iterable[str] | None) -> bool:
    """False only for a save limited to fields that no cached entry holds (a rehashed password,
    `last_login`)."""
    if update_fields is None:
        return True
    attnames = {
        name: field.attname for field in model._meta.concrete_fields for name in (field.name, field.attname)
    }
    return any(attnames.get(name, name) in CACHED_FIELDS[model] for name in update_fields)


@receiver(post_save, sender=APIKey, dispatch_uid="accounts.api_key_saved")
def _api_key_saved(sender: Any, instance: APIKey, created: bool, update_fields: Any, **kwargs: Any) -> None:
    if not created and _changes_cached_fields(APIKey, update_fields):
        api_key_cache_invalidate(prefixes=[instance.prefix])


@receiver(post_delete, sender=APIKey, dispatch_uid="accounts.api_key_deleted")
def _api_key_deleted(sender: Any, instance: APIKey, **kwargs: Any) -> None:
    api_key_cache_invalidate(prefixes=[instance.prefix])


@receiver(post_save, sender=Organization, dispatch_uid="accounts.organization_saved")
def _organization_saved(
    sender: Any, instance: Organization, created: bool, update_fields: Any, **kwargs: Any
) -> None:
    # A deleted organization's keys are deleted with it, each one invalidating itself.
    if not created and _changes_cached_fields(Organization, update_fields):
        organization_cache_invalidate(organization=instance)


@receiver(post_save, sender=User, dispatch_uid="accounts.user_saved")
def _user_saved(sender: Any, instance: User, created: bool, update_fields: Any, **kwargs: Any) -> None:
    # A deleted user's keys are deleted with them, each one invalidating itself.
    if not created and _changes_cached_fields(User, update_fields):
        api_key_cache_invalidate(prefixes=api_key_prefixes(user_id=instance.pk))


@receiver(post_save, sender=Membership, dispatch_uid="accounts.membership_saved")
@receiver(post_delete, sender=Membership, dispatch_uid="accounts.membership_deleted")
def _membership_changed(sender: Any, instance: Membership, **kwargs: Any) -> None:
    # A new membership too: the member's keys may be cached as belonging to no member.
    api_key_cache_invalidate(
        prefixes=api_key_prefixes(organization_id=instance.organization_id, user_id=instance.user_id)
    )
