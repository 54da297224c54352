from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache
from rest_framework.test import APIClient

from accounts import services as account_services
from accounts.context import AuthContext
from accounts.keycache import local_key_cache
from accounts.models import APIKey, Membership, Organization, User
from accounts.selectors import api_key_resolve
from accounts.services import api_key_create, membership_create, organization_create, user_create

# The benchmarks start their servers with the same helpers.
from bench.common import BIN, ROOT, free_port, wait_http, web_command  # noqa: F401
from bench.redis_cluster import LocalRedisCluster, redis_server_missing
from common.shared_redis import redis_client, shared_redis_configured
from usage import services as usage_services


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Iterator[None]:
    """A failed test's report shows what the servers it started logged (their warnings and
    errors: the lines of each request are left out)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed:
        return
    for path in getattr(item, "server_logs", []):
        if path.exists():
            lines = [
                line
                for line in path.read_text(errors="replace").splitlines()
                if '"level": "INFO"' not in line
            ]
            shown = "\n".join(lines[-60:]) or "(its request lines only)"
            report.sections.append((f"server log {path.name}", shown))


@pytest.fixture(autouse=True)
def _isolated_shared_state() -> Iterator[None]:
    """Every test starts with an empty cache and ledger (Redis keys of this run, or memory)."""
    _clear()
    yield
    _clear()


def _clear() -> None:
    if shared_redis_configured():
        client = redis_client()
        for key in client.scan_iter(f"{settings.CACHE_KEY_PREFIX}*", count=1000):
            client.delete(key)
    else:
        cache.clear()
    usage_services._local_ledger = None
    usage_services._keeper.clear()
    local_key_cache.clear()
    account_services._touched_at.clear()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalRedisCluster]:
    """A Redis Cluster of three nodes on loopback ports, for the whole session."""
    if redis_server_missing():
        pytest.skip("needs redis-server (CI installs it)")
    cluster = LocalRedisCluster()
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def on_redis_cluster(
    redis_cluster: LocalRedisCluster, settings: Any, monkeypatch: Any
) -> Iterator[list[str]]:
    """This process, and the servers and workers the test starts, keep their shared state on
    the Redis Cluster (REDIS_CLUSTER_NODES); Celery's broker stays REDIS_URL."""
    use_redis_cluster(redis_cluster.nodes, settings=settings, monkeypatch=monkeypatch)
    _clear()
    yield redis_cluster.nodes
    _clear()


def use_redis_cluster(nodes: list[str], *, settings: Any, monkeypatch: Any) -> None:
    """Points this test's shared state (and its servers' and workers') at the cluster of these
    nodes."""
    monkeypatch.setenv("REDIS_CLUSTER_NODES", ",".join(nodes))
    settings.REDIS_CLUSTER_NODES = nodes
    settings.CACHES = {
        "default": {
            "BACKEND": "common.cache.ClusterRedisCache",
            "LOCATION": nodes,
            "KEY_PREFIX": settings.CACHE_KEY_PREFIX,
        }
    }
    # This process's invalidation subscriber stays on the Redis it started on: no local key
    # cache here (the servers the test starts have theirs, subscribed to the cluster).
    settings.API_KEY_LOCAL_CACHE_SECONDS = 0


@pytest.fixture(params=["redis", "redis-cluster"])
def shared_redis(request: Any) -> str:
    """The test runs on one Redis (REDIS_URL), then on a Redis Cluster."""
    if request.param == "redis-cluster":
        request.getfixturevalue("on_redis_cluster")
    return str(request.param)


@dataclass
class Tenant:
    organization: Organization
    owner: User
    api_key: APIKey
    secret: str

    def client(self, secret: str | None = None) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret or self.secret}")
        return client

    def context(self) -> AuthContext:
        """What authentication resolves for the tenant's key."""
        resolved = api_key_resolve(prefix=self.api_key.prefix)
        assert resolved is not None
        return AuthContext(
            organization=resolved.organization,
            scopes=frozenset(),
            method="api_key",
            api_key=resolved.api_key,
            user=resolved.user,
            membership=resolved.membership,
        )


def get_status(url: str, secret: str) -> int:
    """The status of an authenticated GET against a server a test started."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {secret}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def make_tenant(slug: str, **org_fields: Any) -> Tenant:
    owner = user_create(email=f"owner@{slug}.test", password="correct horse battery staple")
    organization = organization_create(slug=slug, name=slug.title(), owner=owner)
    for name, value in org_fields.items():
        setattr(organization, name, value)
    if org_fields:
        organization.save()
    api_key, secret = api_key_create(organization=organization, name=f"{slug}-key", user=owner)
    return Tenant(organization=organization, owner=owner, api_key=api_key, secret=secret)


@pytest.fixture
def alice(db: Any) -> Tenant:
    """Alice's organization, which the tests act as."""
    return make_tenant("alice")


@pytest.fixture
def charlie(db: Any) -> Tenant:
    """Charlie's organization, which should have no access to Alice's stuff."""
    return make_tenant("charlie")


@pytest.fixture
def bob(alice: Tenant) -> tuple[User, Membership]:
    """Bob, a plain member of Alice's organization."""
    user = user_create(email="bob@alice.test", password="correct horse battery staple")
    return user, membership_create(organization=alice.organization, user=user)


@pytest.fixture
def anonymous() -> APIClient:
    return APIClient()


def assert_error_shape(response: Any, *, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


# --- Servers started by the tests -----------------------------------------------------------


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[str]:
    """The benchmark's OpenAI-compatible upstream, as a real HTTP server."""
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "uvicorn"), "bench.fake_upstream:app", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", process)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def openai_backend(settings: Any, fake_upstream: str) -> Iterator[str]:
    """The gateway's engine pointed at the fake upstream (the openai backend)."""
    from inference import services as inference_services

    settings.LLM_BACKEND = "openai"
    settings.LLM_MODEL = "fake-model"
    settings.LLM_BASE_URL = fake_upstream
    settings.LLM_MAX_RETRIES = 0
    previous = inference_services._router
    inference_services._router = None
    yield fake_upstream
    if inference_services._router is not None:
        inference_services._router.shutdown()
    inference_services._router = previous


def server_env(**extra: str) -> dict[str, str]:
    """The environment of a server or worker the tests start: the test settings, the test
    database, and the engine configuration the test has set."""
    from django.conf import settings as django_settings
    from django.db import connection

    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    env["DJANGO_SETTINGS_MODULE"] = "platform.settings.test"
    if os.environ.get("DATABASE_URL"):
        # pytest-django renamed the database to its test database.
        env["DATABASE_URL"] = (
            os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/" + connection.settings_dict["NAME"]
        )
    else:
        env["DATABASE_URL"] = f"sqlite:///{connection.settings_dict['NAME']}"
    for name in (
        "LLM_BACKEND",
        "LLM_MODEL",
        "LLM_BASE_URL",
        "LLM_MAX_RETRIES",
        "LLM_MODELS_FILE",
        "KNOWLEDGE_INDEX_DIR",
    ):
        env[name] = str(getattr(django_settings, name))
    return {**env, **extra}


@pytest.fixture
def eager_tasks() -> Iterator[None]:
    """Runs Celery tasks in the calling process, as the embedded default does."""
    from platform.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


# A real Celery worker, one process, as the tests start it (the Procfile's command, quieter).
CELERY_WORKER_COMMAND = [
    str(BIN / "celery"),
    "-A",
    "platform.celery:app",
    "worker",
    "--loglevel",
    "WARNING",
    "--concurrency",
    "1",
    "--pool",
    "prefork",
    "--without-heartbeat",
    "--without-mingle",
    "--without-gossip",
]


@pytest.fixture
def celery_worker_process() -> Iterator[subprocess.Popen]:
    """A real Celery worker (the Procfile's command) on the configured Redis broker."""
    from django.conf import settings as django_settings

    if not django_settings.CELERY_BROKER_URL:
        pytest.skip("needs a broker: set REDIS_URL (CI does)")
    process = subprocess.Popen(
        CELERY_WORKER_COMMAND,
        cwd=ROOT,
        env=server_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    yield process
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def start_web_server(request: Any, tmp_path_factory: Any) -> Iterator[Any]:
    """Starts the Procfile's web server (`python -m platform.web`) on a free port; stops it
    after the test. What it logged beyond its request lines shows in a failed test's report."""
    started: list[subprocess.Popen] = []
    logs = tmp_path_factory.mktemp("web")
    request.node.server_logs = []

    def start(*, workers: int = 2, threads: int = 16) -> str:
        port = free_port()
        log_path = logs / f"web-{port}.log"
        request.node.server_logs.append(log_path)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                web_command(port=port, workers=workers, threads=threads),
                cwd=ROOT,
                env=server_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started.append(process)
        wait_http(f"http://127.0.0.1:{port}/healthz", process)
        return f"http://127.0.0.1:{port}"

    yield start
    for process in started:
        process.terminate()
    for process in started:
        process.wait(timeout=30)
