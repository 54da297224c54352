"""Several models, several upstreams: load spread, failover, cooldown and recovery, fallbacks and
per-plan access. Real upstream servers (`bench/fake_upstream.py`), each its own process, killed
and restarted by the tests; usage is checked in the database."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.conf import settings
from prometheus_client import REGISTRY

from inference import services as inference_services
from tests.conftest import BIN, ROOT, Tenant, assert_error_shape, free_port, get_status, wait_http
from usage.models import UsageRecord
from usage.services import usage_stream_flush


class Upstream:
    """One fake OpenAI-compatible server; `fail` is its FAKE_UPSTREAM_FAIL."""

    def __init__(self, *, fail: str = "", port: int | None = None) -> None:
        self.port = port or free_port()
        self.fail = fail
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> Upstream:
        self.process = subprocess.Popen(
            [
                str(BIN / "uvicorn"),
                "bench.fake_upstream:app",
                "--port",
                str(self.port),
                "--log-level",
                "critical",
            ],
            cwd=ROOT,
            env={**os.environ, "FAKE_UPSTREAM_FAIL": self.fail},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_http(f"{self.url}/models", self.process)
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def asked(self) -> int:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=5) as response:
            return int(json.loads(response.read())["completions"])


@pytest.fixture
def upstreams() -> Iterator[Callable[..., Upstream]]:
    started: list[Upstream] = []

    def start(*, fail: str = "") -> Upstream:
        upstream = Upstream(fail=fail).start()
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        if upstream.process is not None and upstream.process.poll() is None:
            upstream.kill()


def dead_url() -> str:
    """A loopback port nothing listens on: connections are refused."""
    return f"http://127.0.0.1:{free_port()}/v1"


@pytest.fixture
def models_file(settings: Any, tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], Path]]:
    """Writes a registry file, points LLM_MODELS_FILE at it and makes the process load it."""
    previous = inference_services._router

    def write(document: dict[str, Any]) -> Path:
        path = tmp_path / "models.yaml"
        path.write_text(yaml.safe_dump(document))
        settings.LLM_MODELS_FILE = str(path)
        settings.LLM_MAX_RETRIES = 0
        if inference_services._router not in (None, previous):
            inference_services._router.shutdown()
        inference_services._router = None
        return path

    yield write
    if inference_services._router not in (None, previous):
        inference_services._router.shutdown()
    inference_services._router = previous


FAST_ROUTER = {"cooldown_seconds": 30, "health_check_seconds": 0.2}


def model(name: str, *urls: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "deployments": [{"base_url": url, "model": "fake-model"} for url in urls], **extra}


def completion(tenant: Tenant, *, model: str | None = None, stream: bool = False, max_tokens: int = 4) -> Any:
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": max_tokens,
    }
    if model:
        body["model"] = model
    if stream:
        body["stream"] = True
    return tenant.client().post("/v1/chat/completions", body, format="json")


def records(tenant: Tenant) -> list[UsageRecord]:
    usage_stream_flush()
    return list(UsageRecord.objects.filter(organization=tenant.organization).order_by("created_at"))


def deployment_requests(model: str, deployment: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "llmp_deployment_requests_total", {"model": model, "deployment": deployment, "outcome": outcome}
    )
    return value or 0.0


def label(url: str) -> str:
    return url.split("//", 1)[1].split("/", 1)[0]


@pytest.mark.django_db
def test_two_deployments_share_the_load(alice: Tenant, upstreams: Any, models_file: Any) -> None:
    a, b = upstreams(), upstreams()
    models_file({"router": FAST_ROUTER, "models": [model("fast", a.url, b.url)]})
    for _ in range(20):
        response = completion(alice)
        assert response.status_code == 200, response.content
        assert response.json()["model"] == "fast"
    assert a.asked() + b.asked() == 20
    assert abs(a.asked() - b.asked()) <= 2
    assert len(records(alice)) == 20


@pytest.mark.django_db
def test_a_5xx_deployment_is_skipped_and_the_request_charged_once(
    alice: Tenant, upstreams: Any, models_file: Any
) -> None:
    broken, healthy = upstreams(fail="500"), upstreams()
    # Health checks (one-token completions) every minute: none during the test.
    router = {"cooldown_seconds": 60, "health_check_seconds": 60}
    models_file({"router": router, "models": [model("fast", broken.url, healthy.url)]})
    for _ in range(6):
        response = completion(alice)
        assert response.status_code == 200, response.content
    # Tried once, then cooled down: every later request went straight to the healthy one.
    assert broken.asked() == 1
    assert healthy.asked() == 6
    usage = records(alice)
    assert len(usage) == 6 and {r.model for r in usage} == {"fast"} and {r.status for r in usage} == {"ok"}
    assert deployment_requests("fast", label(broken.url), "failed") == 1
    assert deployment_requests("fast", label(healthy.url), "ok") == 6


@pytest.mark.django_db
def test_a_stream_cut_before_its_first_token_is_replayed_on_another_deployment(
    alice: Tenant, upstreams: Any, models_file: Any
) -> None:
    cut, healthy = upstreams(fail="cut"), upstreams()
    router = {"cooldown_seconds": 60, "health_check_seconds": 60}
    models_file({"router": router, "models": [model("fast", cut.url, healthy.url)]})
    for _ in range(2):  # whichever the first request goes to, the cut one is met once
        response = completion(alice, stream=True, max_tokens=3)
        assert response.status_code == 200
        body = b"".join(response.streaming_content).decode()
        assert "event: error" not in body
        chunks = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == (
            "tok0 tok1 tok2 "
        )
    assert cut.asked() == 1 and healthy.asked() == 2
    assert [(r.status, r.completion_tokens) for r in records(alice)] == [("ok", 3), ("ok", 3)]


@pytest.mark.django_db
def test_a_fallback_answers_when_every_deployment_is_down(
    alice: Tenant, upstreams: Any, models_file: Any
) -> None:
    backup = upstreams()
    dead_a, dead_b = dead_url(), dead_url()  # health checks of these never reach the backup
    models_file(
        {
            "router": FAST_ROUTER,
            "models": [model("fast", dead_a, dead_b, fallbacks=["backup"]), model("backup", backup.url)],
        }
    )
    for _ in range(3):
        response = completion(alice, model="fast")
        assert response.status_code == 200, response.content
        assert response.json()["model"] == "backup"  # the model that answered
    # Each dead deployment was tried once; the later requests went straight to the fallback.
    assert deployment_requests("fast", label(dead_a), "failed") == 1
    assert deployment_requests("fast", label(dead_b), "failed") == 1
    assert backup.asked() == 3
    assert [r.model for r in records(alice)] == ["backup"] * 3  # charged at the fallback's prices


@pytest.mark.django_db
def test_every_deployment_down_and_no_fallback_is_a_clear_error(alice: Tenant, models_file: Any) -> None:
    models_file({"router": FAST_ROUTER, "models": [model("fast", dead_url(), dead_url())]})
    assert_error_shape(completion(alice), status=502, code="upstream_error")
    # Both cool down: the next request is refused at once rather than sent to servers known down.
    error = assert_error_shape(completion(alice), status=503, code="model_unavailable")
    assert "cooling down" in error["message"]
    # A stream that cannot start is an HTTP error too, not a 200 carrying an error event.
    assert_error_shape(completion(alice, stream=True), status=503, code="model_unavailable")
    usage = records(alice)
    assert all(r.prompt_tokens + r.completion_tokens == 0 for r in usage)


@pytest.mark.django_db
def test_a_plan_limits_the_models_and_their_fallbacks(
    alice: Tenant, charlie: Tenant, upstreams: Any, models_file: Any
) -> None:
    backup = upstreams()
    models_file(
        {
            "router": FAST_ROUTER,
            "models": [
                model("fast", dead_url(), fallbacks=["backup"], aliases=["gpt-4o-mini"]),
                model("backup", backup.url),
            ],
        }
    )
    alice.organization.allowed_models = ["fast"]
    alice.organization.save()

    listed = [m["id"] for m in alice.client().get("/v1/models").json()["data"]]
    assert listed == ["fast", "gpt-4o-mini", inference_services.embedding_model_name()]
    assert_error_shape(completion(alice, model="backup"), status=404, code="model_not_found")
    assert alice.client().get("/v1/models/backup").status_code == 404
    # Its plan does not include the fallback: fast failing is an error, not a free upgrade.
    assert_error_shape(completion(alice, model="fast"), status=502, code="upstream_error")
    assert backup.asked() == 0

    # Another tenant with every model uses the fallback.
    listed = [m["id"] for m in charlie.client().get("/v1/models").json()["data"]]
    assert "backup" in listed
    assert completion(charlie, model="gpt-4o-mini").json()["model"] == "backup"


@pytest.mark.django_db
def test_a_plan_gives_its_models_to_the_organization(alice: Tenant) -> None:
    from billing.models import Plan
    from billing.services import subscription_change

    plan = Plan.objects.create(slug="small", name="Small", allowed_models=["default_model"])
    subscription_change(organization=alice.organization, plan=plan)
    alice.organization.refresh_from_db()
    assert alice.organization.allowed_models == ["default_model"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not settings.REDIS_URL, reason="a server process shares the ledger through Redis")
def test_a_deployment_killed_mid_run_loses_no_request_that_had_not_started_streaming(
    alice: Tenant, upstreams: Any, models_file: Any, start_web_server: Any
) -> None:
    a, b = upstreams(), upstreams()
    models_file({"router": FAST_ROUTER, "models": [model("fast", a.url, b.url)]})
    alice.organization.requests_per_minute = None
    alice.organization.tokens_per_minute = None
    alice.organization.save()
    base = start_web_server(workers=1, threads=16)
    outcomes: list[tuple[bool, int, bool, bool]] = []  # stream, status, content seen, completed
    lock = threading.Lock()
    done = threading.Semaphore(0)

    def client(index: int) -> None:
        for i in range(12):
            stream = (index + i) % 2 == 0
            body = {
                "messages": [{"role": "user", "content": "SLOW_STREAM hello" if stream else "hello"}],
                "max_tokens": 6,
                "stream": stream,
            }
            request = urllib.request.Request(
                f"{base}/v1/chat/completions",
                data=json.dumps(body).encode(),
                headers={"Authorization": f"Bearer {alice.secret}", "Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    text = response.read().decode()
                    status = response.status
            except urllib.error.HTTPError as error:
                text, status = error.read().decode(), error.code
            content = '"content"' in text if stream else status == 200
            completed = ("[DONE]" in text and "event: error" not in text) if stream else status == 200
            with lock:
                outcomes.append((stream, status, content, completed))
            done.release()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for _ in range(20):  # a third of the run, then one upstream dies
        done.acquire(timeout=60)
    assert a.asked() > 0  # it was taking its share
    a.kill()
    for thread in threads:
        thread.join(timeout=120)
    assert len(outcomes) == 72
    # Every plain request and every stream that had not started answered in full; only a stream
    # already streaming from the killed server may have been cut (with an error event).
    assert all(status == 200 for _s, status, _c, _d in outcomes)
    assert all(completed for stream, _st, content, completed in outcomes if not stream)
    cut = [o for o in outcomes if o[0] and not o[3]]
    assert all(content for _s, _st, content, _d in cut)
    assert len(cut) <= 6  # at most one stream per client thread was running on it

    # Charged once each: one record per request.
    deadline = time.monotonic() + 10
    while len(records(alice)) < 72 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(records(alice)) == 72

    # It comes back: the health check finds it and it takes requests again.
    a.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = json.loads(
            urllib.request.urlopen(
                urllib.request.Request(
                    f"{base}/api/v1/status/", headers={"Authorization": f"Bearer {alice.secret}"}
                ),
                timeout=5,
            ).read()
        )
        if status["models"][0]["available_deployments"] == 2:
            break
        time.sleep(0.1)
    assert status["models"][0]["available_deployments"] == 2
    before = a.asked()
    for _ in range(6):
        request = urllib.request.Request(
            f"{base}/v1/chat/completions",
            data=json.dumps({"messages": [{"role": "user", "content": "back?"}], "max_tokens": 2}).encode(),
            headers={"Authorization": f"Bearer {alice.secret}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
    assert a.asked() - before >= 2


def _post_completion(base: str, secret: str) -> int:
    request = urllib.request.Request(
        f"{base}/v1/chat/completions",
        data=json.dumps({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}).encode(),
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not settings.REDIS_URL, reason="the processes share cooldowns through Redis")
def test_a_deployment_one_process_finds_down_is_skipped_by_the_others(
    alice: Tenant, upstreams: Any, models_file: Any, start_web_server: Any
) -> None:
    """Two server processes: the first to send a request to a failing deployment cools it down,
    and the other sends it nothing from then on, without a failed request of its own to learn
    it. (Health checks are a minute apart here, so that nothing but requests reaches it.)"""
    failing, healthy = upstreams(fail="500"), upstreams()
    models_file(
        {
            "router": {"cooldown_seconds": 120, "health_check_seconds": 60},
            "models": [model("fast", failing.url, healthy.url)],
        }
    )
    alice.organization.requests_per_minute = None
    alice.organization.save()
    first, second = start_web_server(workers=1, threads=4), start_web_server(workers=1, threads=4)
    # The second process loads its router (and subscribes) without sending a completion.
    assert get_status(f"{second}/v1/models", alice.secret) == 200
    asked_before = failing.asked()
    for _ in range(4):  # the first process meets the failing deployment (and fails over)
        assert _post_completion(first, alice.secret) == 200
    assert failing.asked() > asked_before
    time.sleep(1)  # the message crosses Redis
    asked_before = failing.asked()
    statuses = [_post_completion(second, alice.secret) for _ in range(10)]
    assert statuses == [200] * 10
    assert failing.asked() == asked_before  # the second process never tried it
