"""Settings that stop a misconfigured deployment at start, and a production setup that passes
Django's deployment checks."""

from __future__ import annotations

import os
import secrets
import subprocess

import pytest
from django.core.exceptions import ImproperlyConfigured

from bench.common import BIN, ROOT
from platform.settings.environment import StrictEnv


@pytest.mark.parametrize(
    ("raw", "value"), [("true", True), ("1", True), ("on", True), ("false", False), ("0", False), ("", False)]
)
def test_booleans_parse(raw: str, value: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_FLAG", raw)
    assert StrictEnv().bool("SOME_FLAG", default=not value) is value


@pytest.mark.parametrize("raw", ["ture", "enabled", "2"])
def test_a_boolean_that_does_not_parse_stops_the_start(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DJANGO_SECURE_COOKIES", raw)
    with pytest.raises(ImproperlyConfigured, match="is not a boolean"):
        StrictEnv().bool("DJANGO_SECURE_COOKIES", default=True)


def _production(command: list[str], **extra: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    env.update(
        DJANGO_SETTINGS_MODULE="platform.settings.production",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(60),
        DJANGO_ALLOWED_HOSTS="llm.example.com",
        DATABASE_URL=os.environ.get("DATABASE_URL") or "sqlite:///unused.sqlite3",
        REDIS_URL="redis://127.0.0.1:6379/0",
    )
    env.update(extra)
    return subprocess.run(
        [str(BIN / "python"), "manage.py", *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_passes_the_deployment_checks() -> None:
    result = _production(["check", "--deploy", "--fail-level", "WARNING"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_redis_unless_single_process() -> None:
    refused = _production(["check"], REDIS_URL="")
    assert refused.returncode != 0 and "REDIS_URL must be set" in refused.stderr
    assert _production(["check"], REDIS_URL="", PLATFORM_SINGLE_PROCESS="true").returncode == 0


def test_production_refuses_a_misspelled_boolean() -> None:
    result = _production(["check"], DJANGO_SECURE_COOKIES="ture")
    assert result.returncode != 0 and "is not a boolean" in result.stderr


@pytest.mark.parametrize("raw", ["localhost", "10.0.0.1:port", "redis://10.0.0.1:7000", "host:70000"])
def test_cluster_nodes_that_do_not_parse_stop_the_start(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_CLUSTER_NODES", f"10.0.0.2:7000,{raw}")
    with pytest.raises(ImproperlyConfigured, match="is not host:port"):
        StrictEnv().addresses("REDIS_CLUSTER_NODES")


def test_cluster_nodes_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_CLUSTER_NODES", " 10.0.0.1:7000, redis-2.internal:7001 ,")
    assert StrictEnv().addresses("REDIS_CLUSTER_NODES") == ["10.0.0.1:7000", "redis-2.internal:7001"]


def test_production_on_a_redis_cluster_needs_a_celery_broker() -> None:
    cluster = {"REDIS_URL": "", "REDIS_CLUSTER_NODES": "10.0.0.1:7000,10.0.0.2:7000"}
    refused = _production(["check"], **cluster)
    assert refused.returncode != 0 and "REDIS_CLUSTER_NODES needs CELERY_BROKER_URL" in refused.stderr
    accepted = _production(["check"], **cluster, CELERY_BROKER_URL="amqp://guest@rabbitmq//")
    assert accepted.returncode == 0, accepted.stderr
