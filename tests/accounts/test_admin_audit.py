"""An operator's changes in the admin reach the tenant's audit log, as the operator's."""

from __future__ import annotations

import pytest
from django.test import Client

from accounts.models import APIKey, AuditEvent, User
from tests.conftest import Tenant

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator() -> Client:
    User.objects.create_superuser("ops@platform.test", "correct horse battery staple")
    client = Client()
    client.login(email="ops@platform.test", password="correct horse battery staple")
    return client


def _events(tenant: Tenant) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(organization=tenant.organization).order_by("id"))


def test_a_key_made_and_revoked_in_the_admin_is_audited_as_the_operator(
    operator: Client, alice: Tenant
) -> None:
    response = operator.post(
        "/admin/accounts/apikey/add/",
        {
            "organization": alice.organization.pk,
            "name": "ops-made",
            "scopes": '["generate"]',
            "budget_period": "month",
        },
    )
    assert response.status_code == 302, response.content
    key = APIKey.objects.get(name="ops-made")
    operator.post("/admin/accounts/apikey/", {"action": "revoke", "_selected_action": [key.pk]})
    created, revoked = _events(alice)
    assert (created.action, revoked.action) == ("apikey.created", "apikey.revoked")
    assert created.actor_type == "operator" and created.actor_label == "operator ops@platform.test"
    assert created.target_id == str(key.pk) and created.changes["name"] == "ops-made"


def test_an_organizations_limits_changed_in_the_admin_are_audited(operator: Client, alice: Tenant) -> None:
    page = operator.get(f"/admin/accounts/organization/{alice.organization.pk}/change/")
    assert page.status_code == 200
    form = page.context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None}
    data.update(requests_per_minute=42, status="active")
    for inline in page.context["inline_admin_formsets"]:
        formset = inline.formset
        for name, value in formset.management_form.initial.items():
            data[f"{formset.prefix}-{name}"] = value
        for inline_form in formset.forms:
            for name, value in inline_form.initial.items():
                data[f"{inline_form.prefix}-{name}"] = value if value is not None else ""
            data[f"{inline_form.prefix}-id"] = inline_form.instance.pk
    response = operator.post(f"/admin/accounts/organization/{alice.organization.pk}/change/", data)
    assert response.status_code == 302, [i.formset.errors for i in response.context["inline_admin_formsets"]]
    [event] = [e for e in _events(alice) if e.action == "organization.updated"]
    assert event.changes == {"requests_per_minute": 42} and event.actor_type == "operator"


def test_the_audit_log_and_invitations_have_admin_pages(operator: Client, alice: Tenant) -> None:
    alice.client().post("/api/v1/organization/members/", {"email": "x@example.test"}, format="json")
    assert operator.get("/admin/accounts/auditevent/").status_code == 200
    assert operator.get("/admin/accounts/invitation/").status_code == 200
    assert operator.get("/admin/accounts/auditevent/add/").status_code == 403
