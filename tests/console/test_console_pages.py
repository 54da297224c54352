"""The console's pages, through Django's test client: each role sees and does what its scopes
allow (a member does not see billing), a tenant never sees another's data, and what the console
changes goes through the API's services (same rules, same audit log)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from accounts.models import APIKey, AuditEvent, Membership
from accounts.services import membership_create, user_create
from tests.conftest import Tenant

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"
PAGES = {
    "/console/": None,
    "/console/keys/": "organization:read",
    "/console/members/": "organization:read",
    "/console/webhooks/": "organization:read",
    "/console/usage/": "usage:read",
    "/console/documents/": "documents:read",
    "/console/playground/": "generate",
    "/console/billing/": "billing:read",
    "/console/audit/": "organization:write",
}


def _signed_in(email: str) -> Client:
    client = Client()
    response = client.post("/console/login/", {"email": email, "password": PASSWORD})
    assert response.status_code == 302, response.content
    return client


def _member(tenant: Tenant, role: str) -> Client:
    user = user_create(email=f"{role}@{tenant.organization.slug}.test", password=PASSWORD)
    membership_create(organization=tenant.organization, user=user, role=role)
    return _signed_in(user.email)


def test_landing_links_to_the_console_and_the_docs(client: Client) -> None:
    page = client.get("/").content.decode()
    assert 'href="/console/"' in page and 'href="/redoc/"' in page


def test_signed_out_pages_send_to_sign_in_and_back(client: Client, alice: Tenant) -> None:
    response = client.get("/console/keys/")
    assert response.status_code == 302 and response["Location"] == "/console/login/?next=%2Fconsole%2Fkeys%2F"
    page = client.get(response["Location"]).content.decode()
    assert 'for="id_email">Email<' in page and 'for="id_password">Password<' in page and ">Sign in<" in page
    signed = client.post(
        "/console/login/?next=/console/keys/", {"email": alice.owner.email, "password": PASSWORD}
    )
    assert signed["Location"] == "/console/keys/"


def test_a_wrong_password_is_refused_and_counted(client: Client, alice: Tenant, settings: Any) -> None:
    settings.AUTH_THROTTLE_ACCOUNT_FAILURES = 2
    for _ in range(2):
        assert (
            client.post("/console/login/", {"email": alice.owner.email, "password": "nope"}).status_code
            == 400
        )
    throttled = client.post("/console/login/", {"email": alice.owner.email, "password": PASSWORD})
    assert throttled.status_code == 429 and b"Too many failed sign-in attempts" in throttled.content


def test_an_open_redirect_after_sign_in_is_not_followed(client: Client, alice: Tenant) -> None:
    response = client.post(
        "/console/login/?next=https://evil.test/", {"email": alice.owner.email, "password": PASSWORD}
    )
    assert response["Location"] == "/console/"


@pytest.mark.parametrize("role", ["owner", "admin", "member", "reader"])
def test_each_role_sees_the_pages_its_scopes_allow(alice: Tenant, role: str) -> None:
    client = _signed_in(alice.owner.email) if role == "owner" else _member(alice, role)
    scopes = Membership.objects.get(
        organization=alice.organization, user__email__startswith=role if role != "owner" else "owner"
    ).scopes
    for page, scope in PAGES.items():
        response = client.get(page)
        allowed = scope is None or scope in scopes
        assert response.status_code == (200 if allowed else 403), (role, page, response.status_code)
        if not allowed:
            assert scope in response.content.decode()
    nav = client.get("/console/").content.decode()
    assert ('href="/console/billing/"' in nav) is ("billing:read" in scopes)


def test_a_member_cannot_see_billing_or_change_keys(alice: Tenant) -> None:
    client = _member(alice, "member")
    assert client.get("/console/billing/").status_code == 403
    assert client.get("/console/billing/invoices/1/").status_code == 403
    assert client.post("/console/keys/", {"name": "x", "budget_period": "month"}).status_code == 403
    assert client.post(f"/console/keys/{alice.api_key.pk}/revoke/").status_code == 403
    assert APIKey.objects.get(pk=alice.api_key.pk).revoked_at is None


def test_creating_a_key_shows_its_secret_once_and_audits_it(alice: Tenant) -> None:
    client = _signed_in(alice.owner.email)
    page = client.post(
        "/console/keys/",
        {"name": "from-console", "budget_period": "month", "user": "", "scopes": ["generate"]},
    )
    assert page.status_code == 200
    html = page.content.decode()
    key = APIKey.objects.get(name="from-console")
    assert f'data-secret="{key.prefix}' in html and key.user is None and key.scopes == ["generate"]
    assert 'data-secret="' not in client.get("/console/keys/").content.decode()
    event = AuditEvent.objects.get(action="api_key.created", organization=alice.organization)
    assert event.actor_type == "member" and event.actor_label == alice.owner.email


def test_a_tenant_never_sees_or_touches_anothers_data(alice: Tenant, charlie: Tenant) -> None:
    client = _signed_in(alice.owner.email)
    assert charlie.api_key.prefix not in client.get("/console/keys/").content.decode()
    assert charlie.owner.email not in client.get("/console/members/").content.decode()
    assert client.post(f"/console/keys/{charlie.api_key.pk}/revoke/").status_code == 302
    assert APIKey.objects.get(pk=charlie.api_key.pk).revoked_at is None
    charlie_owner = Membership.objects.get(organization=charlie.organization)
    client.post(f"/console/members/{charlie_owner.pk}/remove/")
    assert Membership.objects.filter(pk=charlie_owner.pk).exists()
    assert client.get("/console/billing/invoices/987654/").status_code == 404


def test_the_console_token_acts_for_the_chosen_organization_only(alice: Tenant, charlie: Tenant) -> None:
    membership_create(organization=charlie.organization, user=alice.owner, role="reader")
    client = _signed_in(alice.owner.email)
    anonymous = Client()
    assert anonymous.post("/console/token/").status_code == 302  # signed out: to sign in

    def me(token_client: Client) -> dict[str, Any]:
        access = token_client.post("/console/token/").json()["access"]
        return Client().get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {access}").json()

    first = me(client)
    client.post("/console/switch/", {"organization": str(charlie.organization.pk)})
    second = me(client)
    client.post("/console/switch/", {"organization": str(charlie.organization.pk + 999)})  # not theirs
    third = me(client)
    roles = {answer["organization"]["slug"]: answer["user"]["role"] for answer in (first, second)}
    assert roles == {"alice": "owner", "charlie": "reader"}
    assert third["organization"]["slug"] == second["organization"]["slug"]  # unchanged


def test_the_session_cookie_does_not_authenticate_the_api(alice: Tenant) -> None:
    client = _signed_in(alice.owner.email)
    response = client.get("/api/v1/me/")
    assert response.status_code == 401


def test_an_invitation_is_accepted_in_the_console(alice: Tenant) -> None:
    owner = _signed_in(alice.owner.email)
    page = owner.post(
        "/console/members/", {"email": "newbie@example.test", "role": "member"}
    ).content.decode()
    url = page.split("data-accept-url>")[1].split("<")[0]
    path = url.replace("http://testserver", "")
    invitee = Client()
    form = invitee.get(path)
    assert form.status_code == 200 and "Join Alice" in form.content.decode()
    token = path.split("token=")[1]
    joined = invitee.post("/console/invitations/accept/", {"token": token, "password": PASSWORD})
    assert joined.status_code == 302 and joined["Location"] == "/console/"
    assert invitee.get("/console/").status_code == 200
    assert invitee.get(path).status_code == 409  # used once


def test_usage_csv_download(alice: Tenant) -> None:
    client = _signed_in(alice.owner.email)
    response = client.get("/console/usage.csv?group_by=model")
    assert response.status_code == 200 and response["Content-Type"] == "text/csv"
    assert (
        response.content.decode().splitlines()[0]
        == "model,requests,prompt_tokens,completion_tokens,total_tokens"
    )
    assert "attachment" in response["Content-Disposition"]


def test_sign_up_in_the_console_makes_an_organization_and_signs_in(client: Client, settings: Any) -> None:
    settings.SIGNUP_ENABLED = True
    weak = client.post(
        "/console/signup/", {"email": "new@example.test", "password": "123", "organization_name": "New Co"}
    )
    assert weak.status_code == 400 and b"Password:" in weak.content
    created = client.post(
        "/console/signup/", {"email": "new@example.test", "password": PASSWORD, "organization_name": "New Co"}
    )
    assert created.status_code == 302 and created["Location"] == "/console/"
    overview = client.get("/console/")
    assert overview.status_code == 200 and "New Co" in overview.content.decode()
    membership = Membership.objects.get(user__email="new@example.test")
    assert membership.role == "owner" and membership.organization.name == "New Co"


def test_sign_up_is_a_404_when_disabled(client: Client, settings: Any) -> None:
    settings.SIGNUP_ENABLED = False
    assert client.get("/console/signup/").status_code == 404
    assert b"/console/signup/" not in client.get("/console/login/").content


def test_a_webhook_endpoint_is_added_watched_and_deleted_in_the_console(
    alice: Tenant, charlie: Tenant
) -> None:
    from accounts.audit import actor_from_context
    from webhooks.models import WebhookEndpoint
    from webhooks.services import endpoint_create, webhook_emit

    client = _signed_in(alice.owner.email)
    refused = client.post(
        "/console/webhooks/", {"url": "http://127.0.0.1:9/hooks", "description": "no events"}
    )
    assert refused.status_code == 400 and "This field is required" in refused.content.decode()
    page = client.post(
        "/console/webhooks/",
        {
            "url": "http://127.0.0.1:9/hooks",
            "events": ["job.completed", "budget.threshold"],
            "description": "ops",
        },
    )
    assert page.status_code == 200, page.content
    endpoint = WebhookEndpoint.objects.get(organization=alice.organization)
    assert f'data-secret="{endpoint.signing_secret()}"' in page.content.decode()
    assert endpoint.events == ["job.completed", "budget.threshold"] and endpoint.description == "ops"
    event = AuditEvent.objects.get(action="webhook.created", organization=alice.organization)
    assert event.actor_label == alice.owner.email

    webhook_emit(organization_id=alice.organization.pk, type="job.completed", data={})
    listed = client.get("/console/webhooks/").content.decode()
    assert 'data-secret="' not in listed  # shown once
    assert (
        "http://127.0.0.1:9/hooks" in listed
        and "<td>job.completed</td>" in listed
        and "<td>pending</td>" in listed
    )

    theirs, _secret = endpoint_create(
        organization=charlie.organization,
        actor=actor_from_context(context=charlie.context()),
        url="http://127.0.0.1:9/theirs",
        events=["job.failed"],
    )
    assert "theirs" not in listed
    assert client.post(f"/console/webhooks/{theirs.pk}/delete/").status_code == 302
    assert WebhookEndpoint.objects.get(pk=theirs.pk).deleted_at is None
    assert client.post(f"/console/webhooks/{endpoint.pk}/delete/").status_code == 302
    assert WebhookEndpoint.objects.get(pk=endpoint.pk).deleted_at is not None
    assert "No endpoints yet." in client.get("/console/webhooks/").content.decode()

    member = _member(alice, "member")
    response = member.post("/console/webhooks/", {"url": "http://127.0.0.1:9/x", "events": ["job.completed"]})
    assert response.status_code == 403
