"""Password guessing is throttled: failed sign-ins at /api/v1/auth/token/ and /oauth/token/ are
limited per account and per client address, and an unknown account costs what a known one does."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.contrib.auth.hashers import MD5PasswordHasher
from django.urls import resolve
from rest_framework.test import APIClient

from accounts.apis import OAuthTokenApi
from accounts.services import oauth_client_create
from tests.conftest import Tenant, assert_error_shape

PASSWORD = "correct horse battery staple"
TOKEN_URL = "/api/v1/auth/token/"


@pytest.fixture(autouse=True)
def _limits(settings: Any) -> None:
    settings.AUTH_THROTTLE_WINDOW_SECONDS = 60
    settings.AUTH_THROTTLE_ACCOUNT_FAILURES = 5
    settings.AUTH_THROTTLE_IP_FAILURES = 20
    remaining = 60 - time.time() % 60
    if remaining < 10:  # a test's attempts all fall in one window
        time.sleep(remaining + 0.05)


def _sign_in(email: str, password: str, *, ip: str = "10.0.0.1", **headers: str) -> Any:
    return APIClient().post(
        TOKEN_URL, {"email": email, "password": password}, format="json", REMOTE_ADDR=ip, **headers
    )


def _assert_throttled(response: Any, *, param: str | None) -> None:
    error = assert_error_shape(response, status=429, code="rate_limit_exceeded")
    assert error["param"] == param
    assert 1 <= int(response["Retry-After"]) <= 60


@pytest.mark.django_db
def test_sixth_failure_for_an_account_is_429_even_with_the_right_password(alice: Tenant) -> None:
    email = alice.owner.email
    for _ in range(5):
        assert_error_shape(_sign_in(email, "wrong"), status=401)
    _assert_throttled(_sign_in(email, PASSWORD), param="email")
    _assert_throttled(
        _sign_in(email.upper(), PASSWORD, ip="10.0.0.2"), param="email"
    )  # any address, any case
    assert _sign_in("someone-else@alice.test", "wrong").status_code == 401  # the address is not blocked


@pytest.mark.django_db
def test_the_account_signs_in_again_in_the_next_window(alice: Tenant, settings: Any) -> None:
    settings.AUTH_THROTTLE_WINDOW_SECONDS = 2
    time.sleep(2 - time.time() % 2 + 0.05)
    for _ in range(5):
        assert _sign_in(alice.owner.email, "wrong").status_code == 401
    throttled = _sign_in(alice.owner.email, PASSWORD)
    _assert_throttled(throttled, param="email")
    time.sleep(int(throttled["Retry-After"]))
    assert _sign_in(alice.owner.email, PASSWORD).status_code == 200


@pytest.mark.django_db
def test_successful_sign_ins_are_not_counted(alice: Tenant) -> None:
    for _ in range(8):
        assert _sign_in(alice.owner.email, PASSWORD).status_code == 200


@pytest.mark.django_db
def test_twenty_failures_from_one_address_block_it_for_every_account(alice: Tenant) -> None:
    for number in range(20):
        assert _sign_in(f"guess{number}@alice.test", "wrong").status_code == 401
    _assert_throttled(_sign_in(alice.owner.email, PASSWORD), param=None)
    # A forged X-Forwarded-For is not another address (no proxy is configured).
    _assert_throttled(_sign_in(alice.owner.email, PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.9"), param=None)
    assert _sign_in(alice.owner.email, PASSWORD, ip="10.0.0.2").status_code == 200


class CountingHasher(MD5PasswordHasher):
    calls = 0

    def encode(self, password: str, salt: str) -> str:
        type(self).calls += 1
        return super().encode(password, salt)


@pytest.fixture
def counting_hasher(settings: Any) -> type[CountingHasher]:
    settings.PASSWORD_HASHERS = [f"{__name__}.CountingHasher"]
    CountingHasher.calls = 0
    return CountingHasher


@pytest.mark.django_db
def test_an_unknown_email_costs_the_same_password_hash_as_a_known_one(
    alice: Tenant, bob: Any, counting_hasher: type[CountingHasher]
) -> None:
    user, _membership = bob
    user.is_active = False
    user.save()
    costs = {}
    for email in (alice.owner.email, "nobody@alice.test", user.email):
        counting_hasher.calls = 0
        assert _sign_in(email, "wrong").status_code == 401
        costs[email] = counting_hasher.calls
    assert costs == {alice.owner.email: 1, "nobody@alice.test": 1, user.email: 1}


# --- /oauth/token/ --------------------------------------------------------------------------

OAUTH_URLS = pytest.mark.urls("tests.accounts.oauth_token_urls")


def test_oauth_token_route_is_the_throttled_view() -> None:
    assert resolve("/oauth/token/").func.view_class is OAuthTokenApi  # type: ignore[attr-defined]


def _oauth_token(client_id: str, secret: str, *, ip: str = "10.0.0.1") -> Any:
    return APIClient().post(
        "/oauth/token/",
        {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
        REMOTE_ADDR=ip,
    )


@OAUTH_URLS
@pytest.mark.django_db
def test_sixth_failed_client_authentication_is_429(alice: Tenant) -> None:
    _client, client_id, secret = oauth_client_create(
        organization=alice.organization, name="b", scopes=["generate"]
    )
    for _ in range(5):
        assert _oauth_token(client_id, "wrong").status_code == 401
    _assert_throttled(_oauth_token(client_id, secret, ip="10.0.0.2"), param="client_id")


@OAUTH_URLS
@pytest.mark.django_db
def test_issued_client_tokens_are_not_counted(alice: Tenant) -> None:
    _client, client_id, secret = oauth_client_create(
        organization=alice.organization, name="b", scopes=["generate"]
    )
    for _ in range(8):
        assert _oauth_token(client_id, secret).status_code == 200


@OAUTH_URLS
@pytest.mark.django_db
def test_logins_and_client_authentications_share_the_address_limit(alice: Tenant) -> None:
    for number in range(20):
        assert _oauth_token(f"unknown-client-{number}", "wrong").status_code == 401
    _assert_throttled(_sign_in(alice.owner.email, PASSWORD), param=None)


@OAUTH_URLS
@pytest.mark.django_db
def test_an_unknown_client_id_costs_the_same_hash_as_a_known_one(
    alice: Tenant, counting_hasher: type[CountingHasher]
) -> None:
    _client, client_id, _secret = oauth_client_create(
        organization=alice.organization, name="b", scopes=["generate"]
    )
    costs = []
    for candidate in (client_id, "no-such-client"):
        counting_hasher.calls = 0
        assert _oauth_token(candidate, "wrong").status_code == 401
        costs.append(counting_hasher.calls)
    assert costs == [1, 1]
