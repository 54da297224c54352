"""Tenant webhooks against a local receiver: an endpoint's secret is shown once and signs every
delivery; a budget crossing its threshold is delivered exactly once; a failing receiver is
retried with growing delays and the deliveries say so; redirects are not followed; a private
address is refused unless allowed, and a name that turns private after the check (DNS
rebinding) is never sent to; another tenant's endpoints are 404."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from accounts.models import AuditEvent
from billing.alerts import spend_alerts_check
from tests.conftest import Tenant, assert_error_shape
from usage.services import usage_stream_flush
from webhooks.models import WebhookDelivery, WebhookEndpoint
from webhooks.services import delivery_attempt, webhook_emit

pytestmark = pytest.mark.django_db
WEBHOOKS = "/api/v1/organization/webhooks/"


class Receiver:
    """An HTTP server on loopback that records what it receives and answers `statuses` in turn
    (then the last one for ever)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.statuses = [200]
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                receiver.received.append({"headers": dict(self.headers), "body": body})
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                self.send_response(status)
                if status in (301, 302, 307):
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, type: str | None = None) -> list[dict[str, Any]]:
        parsed = [json.loads(item["body"]) for item in self.received]
        return [event for event in parsed if type is None or event["type"] == type]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver()
    yield started
    started.server.shutdown()


def _verify(secret: str, headers: dict[str, str], body: str) -> bool:
    parts = dict(part.split("=", 1) for part in headers["Webhook-Signature"].split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.{body}".encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"]) and abs(time.time() - int(parts["t"])) < 300


def _endpoint(tenant: Tenant, url: str, events: list[str]) -> dict[str, Any]:
    response = tenant.client().post(WEBHOOKS, {"url": url, "events": events}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_an_endpoint_shows_its_secret_once_and_is_audited(alice: Tenant, receiver: Receiver) -> None:
    created = _endpoint(alice, receiver.url, ["budget.threshold", "document.indexed"])
    assert created["secret"].startswith("whsec_") and created["events"] == [
        "budget.threshold",
        "document.indexed",
    ]
    listed = alice.client().get(WEBHOOKS).json()["data"]
    assert [item["id"] for item in listed] == [created["id"]] and "secret" not in listed[0]
    assert AuditEvent.objects.filter(organization=alice.organization, action="webhook.created").count() == 1
    refused = alice.client().post(WEBHOOKS, {"url": receiver.url, "events": ["nope"]}, format="json")
    assert_error_shape(refused, status=400)


def test_a_budget_crossing_80_percent_delivers_exactly_one_signed_event(
    alice: Tenant,
    receiver: Receiver,
    openai_backend: str,
    eager_tasks: None,
    django_capture_on_commit_callbacks: Any,
) -> None:
    endpoint = _endpoint(alice, receiver.url, ["budget.threshold"])
    call_command("set_budget", "--org", "alice", "--key", alice.api_key.prefix, "--tokens", "100")
    for _ in range(9):  # 11 tokens each ("hello" and 10): past 50 on the 5th, past 80 on the 8th
        body = {"prompt": "hello", "max_tokens": 10, "raw": True}
        assert alice.client().post("/api/v1/generate/", body, format="json").status_code == 200
        with django_capture_on_commit_callbacks(execute=True):
            usage_stream_flush()
            spend_alerts_check(organization=alice.organization)  # as beat does after the flush
    events = receiver.events()
    assert [event["data"]["threshold"] for event in events] == [0.5, 0.8]  # each once
    [event] = [event for event in events if event["data"]["threshold"] == 0.8]
    assert event["type"] == "budget.threshold" and event["id"].startswith("evt_")
    assert event["data"]["limit"] == 100 and 80 <= event["data"]["used"] < 100
    assert alice.api_key.prefix in event["data"]["budget"]
    signed = receiver.received[1]
    assert _verify(endpoint["secret"], signed["headers"], signed["body"])
    assert not _verify("whsec_wrong", signed["headers"], signed["body"])
    deliveries = alice.client().get(f"{WEBHOOKS}{endpoint['id']}/deliveries/").json()["results"]
    assert [(d["event_type"], d["status"], d["attempts"]) for d in deliveries] == [
        ("budget.threshold", "succeeded", 1)
    ] * 2


def test_a_failing_receiver_is_retried_with_growing_delays(
    alice: Tenant, receiver: Receiver, settings: Any
) -> None:
    settings.WEBHOOK_FIRST_RETRY_SECONDS = 30
    receiver.statuses = [500, 500, 503, 200]
    _endpoint(alice, receiver.url, ["job.completed"])
    [delivery] = webhook_emit(
        organization_id=alice.organization.pk, type="job.completed", data={"job": {"id": "x"}}
    )
    delays = []
    for _ in range(3):
        before = timezone.now()
        attempted = delivery_attempt(delivery_id=delivery.pk)
        assert attempted is not None and attempted.status == "pending"
        delays.append((attempted.next_attempt_at - before).total_seconds())
        assert delivery_attempt(delivery_id=delivery.pk) is None  # not due yet: nothing is sent
        WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    assert [round(delay / 10) * 10 for delay in delays] == [30, 60, 120]
    done = delivery_attempt(delivery_id=delivery.pk)
    assert done is not None and done.status == "succeeded" and done.attempts == 4
    assert len(receiver.received) == 4
    assert len({item["body"] for item in receiver.received}) == 1  # the same event each time


def test_a_delivery_past_the_retry_window_fails(alice: Tenant, receiver: Receiver) -> None:
    receiver.statuses = [500]
    _endpoint(alice, receiver.url, ["job.failed"])
    [delivery] = webhook_emit(organization_id=alice.organization.pk, type="job.failed", data={})
    WebhookDelivery.objects.filter(pk=delivery.pk).update(created_at=timezone.now() - timedelta(hours=24))
    attempted = delivery_attempt(delivery_id=delivery.pk)
    assert attempted is not None and attempted.status == "failed" and attempted.last_error == "answered 500"


def test_a_redirect_is_not_followed(alice: Tenant, receiver: Receiver) -> None:
    receiver.statuses = [302]
    _endpoint(alice, receiver.url, ["invoice.paid"])
    [delivery] = webhook_emit(organization_id=alice.organization.pk, type="invoice.paid", data={})
    attempted = delivery_attempt(delivery_id=delivery.pk)
    assert attempted is not None and attempted.last_status_code == 302 and attempted.status == "pending"
    assert len(receiver.received) == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/x",
        "http://localhost/x",
        "http://10.1.2.3/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/x",
        "http://192.168.0.10/x",
        "http://user:pass@example.com/x",
        "ftp://example.com/x",
    ],
)
def test_a_private_or_odd_address_is_refused_without_the_setting(
    alice: Tenant, settings: Any, url: str
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = False
    response = alice.client().post(WEBHOOKS, {"url": url, "events": ["job.completed"]}, format="json")
    assert assert_error_shape(response, status=400)["param"] == "url"


def test_a_private_address_that_was_allowed_is_not_sent_to_once_disallowed(
    alice: Tenant, receiver: Receiver, settings: Any
) -> None:
    _endpoint(alice, receiver.url, ["job.completed"])
    [delivery] = webhook_emit(organization_id=alice.organization.pk, type="job.completed", data={})
    settings.WEBHOOK_ALLOW_PRIVATE = False  # as if the name now resolved to a private address
    attempted = delivery_attempt(delivery_id=delivery.pk)
    assert attempted is not None and "not a public address" in attempted.last_error
    assert receiver.received == []


def test_another_tenants_endpoints_are_404_and_invisible(
    alice: Tenant, charlie: Tenant, receiver: Receiver
) -> None:
    theirs = _endpoint(charlie, receiver.url, ["job.completed"])
    assert alice.client().get(WEBHOOKS).json()["data"] == []
    assert_error_shape(alice.client().delete(f"{WEBHOOKS}{theirs['id']}/"), status=404)
    assert_error_shape(alice.client().get(f"{WEBHOOKS}{theirs['id']}/deliveries/"), status=404)
    assert len(charlie.client().get(WEBHOOKS).json()["data"]) == 1


def test_a_deleted_endpoint_receives_nothing_more(alice: Tenant, receiver: Receiver) -> None:
    created = _endpoint(alice, receiver.url, ["job.completed"])
    [pending] = webhook_emit(organization_id=alice.organization.pk, type="job.completed", data={})
    assert alice.client().delete(f"{WEBHOOKS}{created['id']}/").status_code == 204
    assert delivery_attempt(delivery_id=pending.pk) is None
    assert webhook_emit(organization_id=alice.organization.pk, type="job.completed", data={}) == []
    assert receiver.received == []


class _Rebinding:
    """A resolver for `rebind.test` that answers `first` once, then `later` (as a name with a
    zero TTL can), and counts the lookups; every other name resolves as usual. DNS is outside
    the project: this stands in for the resolver."""

    def __init__(self, monkeypatch: Any, *, first: str, later: str) -> None:
        self.lookups = 0
        real = socket.getaddrinfo

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if host != "rebind.test":
                return real(host, port, *args, **kwargs)
            self.lookups += 1
            address = first if self.lookups == 1 else later
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port or 0))]

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_a_name_that_turns_private_after_the_check_is_not_sent_to(
    alice: Tenant, receiver: Receiver, settings: Any, monkeypatch: Any
) -> None:
    """The check sees a public address; a second lookup would give loopback, where the
    receiver listens. The attempt connects to the address it checked (unreachable from here,
    so it fails), never to the one a later lookup gives."""
    endpoint = _endpoint(alice, receiver.url, ["job.completed"])
    port = receiver.server.server_address[1]
    WebhookEndpoint.objects.filter(pk=endpoint["id"]).update(url=f"http://rebind.test:{port}/hooks")
    settings.WEBHOOK_ALLOW_PRIVATE = False
    settings.WEBHOOK_TIMEOUT_SECONDS = 1
    resolver = _Rebinding(monkeypatch, first="192.0.43.10", later="127.0.0.1")
    [delivery] = webhook_emit(organization_id=alice.organization.pk, type="job.completed", data={})
    attempted = delivery_attempt(delivery_id=delivery.pk)
    assert attempted is not None and attempted.status == "pending" and attempted.last_error
    assert receiver.received == [] and resolver.lookups == 1


def test_an_attempt_reaches_the_address_it_checked_and_names_the_host(
    alice: Tenant, receiver: Receiver, monkeypatch: Any
) -> None:
    endpoint = _endpoint(alice, receiver.url, ["job.completed"])
    port = receiver.server.server_address[1]
    WebhookEndpoint.objects.filter(pk=endpoint["id"]).update(url=f"http://rebind.test:{port}/hooks")
    resolver = _Rebinding(monkeypatch, first="127.0.0.1", later="10.255.255.1")
    [delivery] = webhook_emit(organization_id=alice.organization.pk, type="job.completed", data={})
    attempted = delivery_attempt(delivery_id=delivery.pk)
    assert attempted is not None and attempted.status == "succeeded", attempted.last_error
    [received] = receiver.received
    assert received["headers"]["Host"] == f"rebind.test:{port}" and resolver.lookups == 1


def test_the_secret_is_sealed_at_rest_and_survives_a_key_rotation(
    alice: Tenant, receiver: Receiver, settings: Any
) -> None:
    """The database holds the secret sealed (a dump does not give it away); after
    DJANGO_SECRET_KEY changes, deliveries are still signed while the old key is a fallback,
    `reseal_secrets` moves them to the new key, and without any key that opens them a delivery
    fails with a clear error and sends nothing unsigned."""
    created = _endpoint(alice, receiver.url, ["job.completed"])
    stored = WebhookEndpoint.objects.get(pk=created["id"]).secret_sealed
    assert created["secret"] not in stored and created["secret"][6:] not in stored
    assert stored.startswith("sealed:v1:")

    def deliver() -> WebhookDelivery:
        [delivery] = webhook_emit(organization_id=alice.organization.pk, type="job.completed", data={})
        attempted = delivery_attempt(delivery_id=delivery.pk)
        assert attempted is not None
        return attempted

    old_key = settings.SECRET_KEY
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = "a-new-secret-key-" + "x" * 40, [old_key]
    assert deliver().status == "succeeded"
    assert _verify(created["secret"], receiver.received[-1]["headers"], receiver.received[-1]["body"])
    call_command("reseal_secrets", stdout=open(os.devnull, "w"))  # noqa: SIM115
    settings.SECRET_KEY_FALLBACKS = []
    assert deliver().status == "succeeded"
    assert _verify(created["secret"], receiver.received[-1]["headers"], receiver.received[-1]["body"])

    settings.SECRET_KEY = "yet-another-key-" + "y" * 40  # the old ones gone
    sent = len(receiver.received)
    failed = deliver()
    assert failed.status == "pending" and "cannot be read" in failed.last_error
    assert len(receiver.received) == sent


def test_secrets_kept_in_clear_before_the_upgrade_are_sealed_by_it(alice: Tenant, receiver: Receiver) -> None:
    from importlib import import_module

    from django.apps import apps

    created = _endpoint(alice, receiver.url, ["job.completed"])
    WebhookEndpoint.objects.filter(pk=created["id"]).update(secret_sealed="whsec_from_before")  # as in 0001
    import_module("webhooks.migrations.0002_sealed_secrets").seal_existing(apps, None)
    endpoint = WebhookEndpoint.objects.get(pk=created["id"])
    assert (
        endpoint.secret_sealed.startswith("sealed:v1:") and endpoint.signing_secret() == "whsec_from_before"
    )


def _tls_receiver(directory: Path, name: str) -> tuple[ThreadingHTTPServer, list[str]]:
    """An HTTPS receiver on loopback whose certificate (signed by a CA made here, in
    `directory/ca.crt`) names `name` only; it records each request's Host."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "1", "-subj", "/CN=test CA")  # fmt: skip
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "host.key",
        "-out",
        "host.csr",
        "-subj",
        f"/CN={name}",
    )
    (directory / "host.ext").write_text(f"subjectAltName=DNS:{name}\n")
    openssl("x509", "-req", "-in", "host.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "host.crt", "-days", "1", "-extfile", "host.ext")  # fmt: skip
    hosts: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers["Content-Length"]))
            hosts.append(self.headers["Host"])
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "host.crt", directory / "host.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, hosts


@pytest.mark.skipif(
    shutil.which("openssl") is None and not os.environ.get("CI"),
    reason="needs openssl (CI installs it, and must)",
)
def test_over_https_the_pinned_address_is_verified_against_the_hostname(
    alice: Tenant, receiver: Receiver, monkeypatch: Any, tmp_path: Path
) -> None:
    """Connecting to the checked address, not the name, still verifies the certificate against
    the name (TLS SNI): the receiver's certificate for rebind.test is accepted, and the same
    server reached under another name is refused."""
    server, hosts = _tls_receiver(tmp_path, "rebind.test")
    port = server.server_address[1]
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.crt"))  # httpx trusts the test CA
    try:
        endpoint = _endpoint(alice, receiver.url, ["job.completed"])
        WebhookEndpoint.objects.filter(pk=endpoint["id"]).update(url=f"https://rebind.test:{port}/hooks")
        _Rebinding(monkeypatch, first="127.0.0.1", later="10.255.255.1")
        [delivery] = webhook_emit(organization_id=alice.organization.pk, type="job.completed", data={})
        attempted = delivery_attempt(delivery_id=delivery.pk)
        assert attempted is not None and attempted.status == "succeeded", attempted.last_error
        assert hosts == [f"rebind.test:{port}"]

        WebhookEndpoint.objects.filter(pk=endpoint["id"]).update(url=f"https://127.0.0.1:{port}/hooks")
        [other] = webhook_emit(organization_id=alice.organization.pk, type="job.completed", data={})
        refused = delivery_attempt(delivery_id=other.pk)
        assert (
            refused is not None
            and refused.status == "pending"
            and "CERTIFICATE_VERIFY_FAILED" in refused.last_error
        )
        assert len(hosts) == 1
    finally:
        server.shutdown()
