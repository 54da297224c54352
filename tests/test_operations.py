from __future__ import annotations

import pytest
from django.test import Client


@pytest.mark.django_db
def test_healthz_and_readyz_report_ok() -> None:
    client = Client()
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["database"] == "ok"
    assert ready.json()["checks"]["cache"] == "ok"


@pytest.mark.django_db
def test_metrics_expose_request_counters() -> None:
    client = Client()
    client.get("/healthz")
    body = client.get("/metrics").content.decode()
    assert "llmp_http_requests_total" in body


@pytest.mark.django_db
def test_openapi_schema_describes_the_three_authentication_schemes_and_the_error_shape() -> None:
    client = Client()
    response = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = response.json()
    schemes = schema["components"]["securitySchemes"]
    assert {"ApiKeyBearer", "ApiKeyHeader", "JWT", "OAuth2"} <= set(schemes)
    assert "/api/v1/me/" in schema["paths"]
    assert "Error" in schema["components"]["schemas"]
    for page in ("/swagger/", "/redoc/"):
        assert client.get(page).status_code == 200


@pytest.mark.django_db
def test_admin_pages_render_for_an_operator(alice, admin_client) -> None:
    for url in (
        "/admin/accounts/organization/",
        f"/admin/accounts/organization/{alice.organization.pk}/change/",
        "/admin/accounts/apikey/",
        "/admin/accounts/apikey/add/",
        f"/admin/usage/usagedaily/organization/{alice.organization.pk}/",
    ):
        assert admin_client.get(url).status_code == 200, url


@pytest.mark.django_db
def test_bootstrap_demo_puts_the_demo_organization_on_a_free_plan_once() -> None:
    import io

    from django.core.management import call_command
    from rest_framework.test import APIClient

    from billing.models import Subscription

    for _ in range(2):
        out = io.StringIO()
        call_command("bootstrap_demo", stdout=out)
    secret = next(line for line in out.getvalue().splitlines() if line.startswith("API key")).rsplit(" ", 1)[
        1
    ]
    [subscription] = Subscription.objects.all()
    assert subscription.plan.slug == "demo" and subscription.plan.monthly_price == 0
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    me = client.get("/api/v1/me/")
    assert me.status_code == 200, me.content
