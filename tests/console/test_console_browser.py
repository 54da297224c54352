"""The console in a real headless Chromium (Debian's `chromium`, driven by Playwright), against
the Procfile's web server and a real Celery worker: sign in, make a key and call the model with
it through the openai SDK, revoke it, upload a document and watch it reach indexed, search it,
stream an answer in the playground, see the usage chart and download its CSV; a member who
cannot see billing; a tenant who cannot see another's data.

With `CONSOLE_SCREENSHOTS=<folder>` it also saves every page at 1280×800 and 390×844 (the
README's screenshots come from this run)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from django.conf import settings

from accounts.services import api_key_create, membership_create, user_create
from billing.services import plan_create, subscription_change
from tests.conftest import ROOT, free_port, make_tenant, wait_http

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PASSWORD = "correct horse battery staple"
SCREENSHOTS = os.environ.get("CONSOLE_SCREENSHOTS")
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not settings.REDIS_URL, reason="a worker and the web server share state through Redis"
    ),
]

if CHROMIUM is None and os.environ.get("CI") == "true":  # CI installs it (.ci/run): never skip there
    raise RuntimeError("Chromium is missing: .ci/run installs Debian's chromium package")


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no Chromium here (apt-get install chromium; CI installs it)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the test's own database calls
    # between browser steps are synchronous Django and safe.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


def _sign_in(page: Any, base: str, email: str) -> None:
    page.goto(f"{base}/console/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/console/")


def _shoot(page: Any, name: str) -> None:
    if not SCREENSHOTS:
        return
    folder = Path(SCREENSHOTS)
    folder.mkdir(parents=True, exist_ok=True)
    for size, (width, height) in SIZES.items():
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(150)
        page.screenshot(path=str(folder / f"{name}-{size}.png"), full_page=False)
    page.set_viewport_size({"width": 1280, "height": 800})


@pytest.mark.django_db(transaction=True)
def test_an_owner_runs_their_organization_from_the_console(
    browser: Any, openai_backend: str, start_web_server: Any, celery_worker_process: Any, tmp_path: Path
) -> None:
    alice = make_tenant("alice")
    plan = plan_create(
        slug="starter",
        name="Starter",
        monthly_price=Decimal("20.00"),
        prompt_price_per_1k=Decimal("0.50"),
        completion_price_per_1k=Decimal("1.50"),
        token_quota=1_000_000,
    )
    subscription_change(organization=alice.organization, plan=plan)
    base = start_web_server(workers=1, threads=8)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.on("dialog", lambda dialog: dialog.accept())  # the confirmations of revoke and rotate

    page.goto(f"{base}/")
    _shoot(page, "landing")
    page.goto(f"{base}/console/login/")
    _shoot(page, "login")
    _sign_in(page, base, alice.owner.email)
    assert page.locator("h1").inner_text() == "Alice"
    _shoot(page, "overview")

    # A key, made in the console and used with the openai SDK, then revoked.
    page.goto(f"{base}/console/keys/")
    page.locator("summary").click()
    page.get_by_label("Name").fill("browser key")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("[data-secret]").get_attribute("data-secret")
    assert secret and secret.startswith("sk-")
    _shoot(page, "keys")
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0)
    answer = client.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "hello"}], max_tokens=5
    )
    assert answer.usage is not None and answer.usage.completion_tokens == 5
    row = page.locator("tr", has=page.locator("td", has_text="browser key"))
    row.get_by_role("button", name="Revoke").click()
    page.wait_for_url(f"{base}/console/keys/")
    assert "revoked" in page.locator("tr", has=page.locator("td", has_text="browser key")).inner_text()
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])

    # A document: uploaded through the file picker, watched until indexed, then searched.
    document = tmp_path / "gardening.md"
    document.write_text(
        "# Tomatoes\n\nTomatoes need six hours of sun a day and deep watering twice a week. "
        "Prune the suckers so that the plant puts its strength into the fruit.\n"
    )
    page.goto(f"{base}/console/documents/")
    page.locator("#file-input").set_input_files(str(document))
    page.wait_for_selector("tr[data-status=indexed]", timeout=90_000)
    progress = page.locator("tr[data-status=indexed]").inner_text()
    assert "of" in progress and "chunks" in progress
    page.get_by_label("Question").fill("How much sun do tomatoes need?")
    page.get_by_role("button", name="Search").click()
    page.wait_for_selector("[data-passage]")
    assert "six hours of sun" in page.locator("[data-passage]").first.inner_text()
    _shoot(page, "documents")

    # The playground streams its answer and says what it cost.
    page.goto(f"{base}/console/playground/")
    page.wait_for_selector("#pg-model option", state="attached")
    page.locator("#pg-model").select_option("fake-model")
    page.get_by_label("Max tokens").fill("12")
    page.get_by_role("button", name="Send").click()
    page.wait_for_selector("#pg-usage[data-total-tokens]")
    assert page.locator("#pg-output").inner_text().split() == [f"tok{i}" for i in range(12)]
    assert "12 completion" in page.locator("#pg-usage").inner_text()
    assert "USD at your plan's prices" in page.locator("#pg-usage").inner_text()
    _shoot(page, "playground")

    # Usage: the chart has a bar per model and day used, the CSV downloads.
    from usage.services import usage_stream_flush

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and usage_stream_flush() == 0:
        time.sleep(0.2)
    time.sleep(0.5)
    usage_stream_flush()
    page.goto(f"{base}/console/usage/")
    page.wait_for_selector("#usage-chart svg rect[data-model]")
    assert page.locator("#usage-chart rect[data-model='fake-model']").count() == 1
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download CSV").click()
    lines = Path(download_info.value.path()).read_text().splitlines()
    assert lines[0].startswith("model,requests")
    assert any(line.startswith("fake-model,2,") for line in lines[1:]), (
        lines
    )  # the SDK's and the playground's
    _shoot(page, "usage")

    for name in ("members", "webhooks", "billing", "audit"):
        page.goto(f"{base}/console/{name}/")
        assert page.locator("h1").inner_text() != ""
        _shoot(page, name)
    page.goto(f"{base}/console/audit/")
    assert "api_key.revoked" in page.locator("table").inner_text()
    page.close()


@pytest.mark.django_db(transaction=True)
def test_a_member_sees_no_billing_and_a_tenant_nothing_of_another(
    browser: Any, start_web_server: Any
) -> None:
    alice = make_tenant("alice")
    charlie = make_tenant("charlie")
    api_key_create(organization=charlie.organization, name="charlie-secret-project", user=charlie.owner)
    member = user_create(email="bob@alice.test", password=PASSWORD)
    membership_create(organization=alice.organization, user=member, role="member")
    base = start_web_server(workers=1, threads=8)

    page = browser.new_page(viewport={"width": 390, "height": 844})
    _sign_in(page, base, member.email)
    assert page.get_by_role("link", name="Billing").count() == 0
    assert page.get_by_role("link", name="Playground").count() == 1
    response = page.goto(f"{base}/console/billing/")
    assert response is not None and response.status == 403
    assert "billing:read" in page.locator("main").inner_text()
    page.close()

    page = browser.new_page()
    _sign_in(page, base, alice.owner.email)
    page.goto(f"{base}/console/keys/")
    assert "charlie-secret-project" not in page.content() and charlie.api_key.prefix not in page.content()
    page.goto(f"{base}/console/members/")
    assert charlie.owner.email not in page.content()
    page.close()


@pytest.mark.django_db(transaction=True)
def test_an_owner_gives_a_card_on_the_billing_page_through_stripe_js(
    browser: Any, start_web_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    stand_in = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "billing" / "localstripe_server.py"),
            "--port",
            str(port),
            "--from-scratch",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        stripe_url = f"http://127.0.0.1:{port}"
        wait_http(f"{stripe_url}/v1/customers", stand_in)
        monkeypatch.setenv("STRIPE_API_KEY", "sk_test_console")
        monkeypatch.setenv("STRIPE_API_BASE", stripe_url)
        monkeypatch.setenv("STRIPE_PUBLISHABLE_KEY", "pk_test_console")
        monkeypatch.setenv("STRIPE_JS_URL", f"{stripe_url}/js.stripe.com/v3/")  # localstripe's Stripe.js
        alice = make_tenant("alice")
        base = start_web_server(workers=1, threads=8)
        page = browser.new_page()
        _sign_in(page, base, alice.owner.email)
        page.goto(f"{base}/console/billing/")
        for field, value in (
            ("number", "4242424242424242"),
            ("exp_month", "12"),
            ("exp_year", "30"),  # localstripe's card element prefixes "20"
            ("cvc", "123"),
            ("postal_code", "75001"),
        ):
            page.fill(f"#card-element input[placeholder={field}]", value)
        page.get_by_role("button", name="Save card").click()
        page.wait_for_selector("[data-card='4242']", timeout=20_000)
        assert "default" in page.locator("[data-card='4242']").inner_text()
        _shoot(page, "billing-card")
        page.close()
    finally:
        stand_in.terminate()
        stand_in.wait(timeout=10)
