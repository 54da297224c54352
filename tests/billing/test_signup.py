"""Sign-up through the API: a new organization on DEFAULT_PLAN, its owner, a JWT that works at
once; off unless enabled (on in development and tests), throttled per address, no answer that
says an address has an account beyond what cannot be helped (billing/signup.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from accounts.models import AuditEvent, Membership, Organization, User
from accounts.services import user_create, user_deactivate
from billing.models import Plan, Subscription
from billing.services import default_plan_ensure
from tests.billing.conftest import PASSWORD
from tests.conftest import BIN, ROOT, Tenant, assert_error_shape
from tests.test_settings import _production

pytestmark = pytest.mark.django_db

SIGNUP = "/api/v1/signup/"
STRONG = "a long and uncommon passphrase"


@pytest.fixture(autouse=True)
def _signup_settings(settings: Any) -> None:
    settings.SIGNUP_ENABLED = True
    settings.DEFAULT_PLAN = "free"
    settings.SIGNUP_THROTTLE_IP_ATTEMPTS = 10
    settings.SIGNUP_THROTTLE_WINDOW_SECONDS = 3600


@pytest.fixture(autouse=True)
def free_plan(db: Any) -> Plan:
    return default_plan_ensure(slug="free")


def _sign_up(email: str = "dana@example.com", password: str = STRONG, name: str = "Acme Inc") -> Any:
    return APIClient().post(
        SIGNUP, {"email": email, "password": password, "organization_name": name}, format="json"
    )


def test_sign_up_makes_an_organization_on_the_default_plan_and_a_jwt_that_works(free_plan: Plan) -> None:
    response = _sign_up(email="Dana@Example.com")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["object"] == "signup"
    assert body["organization"]["slug"] == "acme-inc"
    assert body["organization"]["name"] == "Acme Inc"
    assert (body["user"]["email"], body["user"]["role"]) == ("dana@example.com", "owner")
    assert body["plan"] == {"slug": "free", "name": "Free"}
    organization = Organization.objects.get(slug="acme-inc")
    assert Subscription.objects.get(organization=organization).plan == free_plan
    organization.refresh_from_db()
    assert organization.token_quota == free_plan.token_quota  # the plan's limits apply at once

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {body['access']}")
    me = client.get("/api/v1/me/")
    assert me.status_code == 200, me.content
    assert me.json()["organization"]["slug"] == "acme-inc"
    assert me.json()["user"]["role"] == "owner"
    assert me.json()["auth_method"] == "jwt"
    refreshed = APIClient().post("/api/v1/auth/token/refresh/", {"refresh": body["refresh"]}, format="json")
    assert refreshed.status_code == 200

    created, changed = (
        AuditEvent.objects.get(organization=organization, action=action)
        for action in ("organization.created", "subscription.changed")
    )
    user = User.objects.get(email="dana@example.com")
    assert (created.actor_type, created.actor_user, created.actor_label, created.ip) == (
        "anonymous",
        user,
        "dana@example.com",
        "127.0.0.1",
    )
    assert created.changes["plan"] == "free" and created.changes["new_account"] is True
    assert changed.changes["plan"] == [None, "free"]


def test_the_slug_is_made_unique_and_a_name_without_latin_letters_gets_one(free_plan: Plan) -> None:
    assert _sign_up(email="a@example.com").json()["organization"]["slug"] == "acme-inc"
    assert _sign_up(email="b@example.com").json()["organization"]["slug"] == "acme-inc-2"
    assert _sign_up(email="c@example.com", name="株式会社").json()["organization"]["slug"] == "org"


def test_an_existing_account_with_its_password_signs_up_another_organization(alice: Tenant) -> None:
    response = _sign_up(email=alice.owner.email, password=PASSWORD, name="Alice Two")
    assert response.status_code == 201, response.content
    assert response.json()["user"]["id"] == alice.owner.pk
    assert set(Membership.objects.filter(user=alice.owner).values_list("organization__slug", flat=True)) == {
        "alice",
        "alice-two",
    }
    event = AuditEvent.objects.get(action="organization.created")
    assert event.changes["new_account"] is False
    assert User.objects.count() == 1


def test_an_existing_account_with_another_password_is_a_generic_failure(alice: Tenant) -> None:
    response = _sign_up(email=alice.owner.email, password=STRONG)
    error = assert_error_shape(response, status=400, code="signup_failed")
    assert error["param"] is None
    for telling in ("exist", "registered", "taken", alice.owner.email):
        assert telling not in error["message"]
    assert Organization.objects.count() == 1
    assert not AuditEvent.objects.filter(action="organization.created").exists()


def test_a_deactivated_account_cannot_sign_up_even_with_its_password(alice: Tenant) -> None:
    user_deactivate(user=alice.owner)
    assert_error_shape(_sign_up(email=alice.owner.email, password=PASSWORD), status=400, code="signup_failed")


def test_an_account_without_a_usable_password_is_a_generic_failure(db: Any) -> None:
    user_create(email="invited@example.com")
    assert_error_shape(_sign_up(email="invited@example.com"), status=400, code="signup_failed")


@pytest.mark.parametrize(("password", "said"), [("short", "too short"), ("password123", "too common")])
def test_a_weak_password_is_400_naming_it(free_plan: Plan, password: str, said: str) -> None:
    error = assert_error_shape(_sign_up(password=password), status=400, code="invalid_password")
    assert error["param"] == "password"
    assert said in error["message"]
    assert not User.objects.exists()


@pytest.mark.parametrize("missing", ["email", "password", "organization_name"])
def test_a_body_without_a_field_is_400_naming_it(missing: str) -> None:
    body = {"email": "dana@example.com", "password": STRONG, "organization_name": "Acme"}
    del body[missing]
    response = APIClient().post(SIGNUP, body, format="json")
    assert assert_error_shape(response, status=400)["param"] == missing


def test_sign_up_is_refused_when_disabled(settings: Any, free_plan: Plan) -> None:
    settings.SIGNUP_ENABLED = False
    assert_error_shape(_sign_up(), status=404, code="signup_disabled")
    assert not User.objects.exists() and not Organization.objects.exists()


def test_attempts_are_throttled_per_address(settings: Any, free_plan: Plan, alice: Tenant) -> None:
    settings.SIGNUP_THROTTLE_IP_ATTEMPTS = 2
    for _ in range(3):
        assert _sign_up(password="short").status_code == 400  # refused before any account: not counted
    assert _sign_up(email="a@example.com").status_code == 201
    assert _sign_up(email=alice.owner.email).status_code == 400  # signup_failed counts
    throttled = _sign_up(email="c@example.com")
    assert_error_shape(throttled, status=429, code="rate_limit_exceeded")
    assert 1 <= int(throttled["Retry-After"]) <= 3600
    assert not User.objects.filter(email="c@example.com").exists()
    other_address = APIClient(REMOTE_ADDR="10.0.0.7").post(
        SIGNUP, {"email": "d@example.com", "password": STRONG, "organization_name": "D"}, format="json"
    )
    assert other_address.status_code == 201
    cache.clear()  # a new window
    assert _sign_up(email="c@example.com").status_code == 201


def test_without_a_default_plan_the_organization_has_none(settings: Any) -> None:
    settings.DEFAULT_PLAN = ""
    response = _sign_up()
    assert response.status_code == 201
    assert response.json()["plan"] is None
    assert not Subscription.objects.exists()


def test_a_default_plan_that_does_not_exist_refuses_sign_up_and_creates_nothing(settings: Any) -> None:
    settings.DEFAULT_PLAN = "gone"
    assert_error_shape(_sign_up(), status=503, code="signup_unavailable")
    assert not User.objects.exists() and not Organization.objects.exists()


# --- Configuration ---------------------------------------------------------------------------


def test_production_has_sign_up_off_unless_set() -> None:
    show = [
        "shell",
        "-c",
        "from django.conf import settings; print(settings.SIGNUP_ENABLED, settings.DEFAULT_PLAN)",
    ]
    assert _production(show).stdout.splitlines()[-1] == "False "
    enabled = _production(show, SIGNUP_ENABLED="true", DEFAULT_PLAN="starter")
    assert enabled.stdout.splitlines()[-1] == "True starter"


@pytest.mark.slow
def test_migrate_creates_the_default_plan_in_development(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    env.update(
        DJANGO_SETTINGS_MODULE="platform.settings.development",
        DATABASE_URL=f"sqlite:///{tmp_path / 'dev.sqlite3'}",
        PLATFORM_VAR_DIR=str(tmp_path),
        REDIS_URL="",
    )
    env.pop("DEFAULT_PLAN", None)

    def manage(*command: str) -> str:
        result = subprocess.run(
            [str(BIN / "python"), "manage.py", *command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    manage("migrate", "--noinput", "-v", "0")
    manage("migrate", "--noinput", "-v", "0")  # again: the plan is there, nothing changes
    listed = manage(
        "shell",
        "-c",
        "from billing.models import Plan; "
        "print([(p.slug, p.public, str(p.monthly_price), p.token_quota) for p in Plan.objects.all()])",
    )
    assert listed.splitlines()[-1] == "[('free', True, '0.00', 1000000)]"
