"""The admin and the HTML pages keep Django's whole middleware stack; the API skips it."""

from __future__ import annotations

import pytest
from django.test import Client

from accounts.models import User
from tests.conftest import Tenant, assert_error_shape

pytestmark = pytest.mark.django_db


def test_admin_pages_get_csrf_sessions_and_clickjacking_protection() -> None:
    client = Client(enforce_csrf_checks=True)
    page = client.get("/admin/login/")
    assert page.status_code == 200
    assert page["X-Frame-Options"] == "DENY"
    assert "csrftoken" in page.cookies
    refused = client.post("/admin/login/", {"username": "x", "password": "y"})
    assert refused.status_code == 403  # no CSRF token


def test_admin_login_keeps_a_session() -> None:
    User.objects.create_superuser("op@example.test", "correct horse battery staple")
    client = Client()
    assert client.login(email="op@example.test", password="correct horse battery staple")
    assert client.get("/admin/").status_code == 200


def test_an_admin_session_cookie_does_not_authenticate_the_api(alice: Tenant) -> None:
    User.objects.create_superuser("op@example.test", "correct horse battery staple")
    client = Client()
    assert client.login(email="op@example.test", password="correct horse battery staple")
    response = client.get("/api/v1/me/")
    assert_error_shape(response, status=401)
    assert "Set-Cookie" not in response
