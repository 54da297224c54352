"""A queued job runs as its caller is when it starts, not as it was when it was queued."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings

from accounts.models import Membership
from accounts.services import (
    api_key_create,
    api_key_revoke,
    membership_create,
    membership_role_set,
    organization_suspend,
    user_create,
)
from inference.jobs import job_run
from inference.models import GenerationJob
from tests.conftest import Tenant
from usage.services import get_ledger

pytestmark = [
    pytest.mark.django_db(transaction=True),
    # Without a broker a job runs as it is queued: there is no wait to revoke anything in.
    pytest.mark.skipif(not settings.REDIS_URL, reason="needs the Redis broker (CI sets REDIS_URL)"),
]


def _revoke_key(tenant: Tenant, secret: str) -> None:
    api_key_revoke(api_key=tenant.api_key)


def _delete_key(tenant: Tenant, secret: str) -> None:
    tenant.api_key.delete()


def _suspend(tenant: Tenant, secret: str) -> None:
    organization_suspend(organization=tenant.organization)


def _remove_member(tenant: Tenant, secret: str) -> None:
    Membership.objects.filter(organization=tenant.organization, user__email="dev@alice.test").delete()


def _make_reader(tenant: Tenant, secret: str) -> None:
    membership = Membership.objects.get(organization=tenant.organization, user__email="dev@alice.test")
    membership_role_set(membership=membership, role=Membership.Role.READER)


def _deactivate_member(tenant: Tenant, secret: str) -> None:
    from accounts.models import User

    User.objects.filter(email="dev@alice.test").update(is_active=False)


@pytest.mark.parametrize(
    ("remove_access", "code"),
    [
        (_revoke_key, "api_key_revoked"),
        (_delete_key, "api_key_revoked"),
        (_suspend, "organization_suspended"),
        (_remove_member, "member_inactive"),
        (_deactivate_member, "member_inactive"),
        (_make_reader, "missing_scope"),
    ],
)
def test_a_job_whose_access_was_removed_while_it_waited_does_not_run_and_costs_nothing(
    alice: Tenant, openai_backend: str, remove_access: Callable[[Tenant, str], Any], code: str
) -> None:
    developer = user_create(email="dev@alice.test", password="correct horse battery staple")
    membership_create(organization=alice.organization, user=developer)
    key, secret = api_key_create(organization=alice.organization, name="dev", user=developer)
    tenant = Tenant(organization=alice.organization, owner=developer, api_key=key, secret=secret)
    alice.organization.token_quota = 1_000
    alice.organization.save()
    response = tenant.client().post("/api/v1/jobs/", {"prompt": "later", "max_tokens": 20}, format="json")
    assert response.status_code == 202, response.content
    assert get_ledger().active_reservations() == 1
    remove_access(tenant, secret)
    job_run(job_id=response.json()["id"])
    job = GenerationJob.objects.get()
    assert job.status == GenerationJob.Status.FAILED
    assert job.error["code"] == code
    assert get_ledger().active_reservations() == 0
    from django.utils import timezone

    from usage.services import charged_key

    assert get_ledger().charged(
        [charged_key(organization_id=alice.organization.pk, when=timezone.now())]
    ) == [None]
