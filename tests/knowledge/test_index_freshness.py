"""Machines share the database, not a disk: two web servers and a Celery worker, each with its own
index folder. A document the worker indexes is found on both web servers, and one deleted through
one server is gone from the other's index, within a few seconds."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from knowledge.indexes import index_version_current, org_key
from knowledge.lib.index import IndexStore
from knowledge.models import Chunk, Document
from tests.conftest import CELERY_WORKER_COMMAND, ROOT, Tenant, free_port, server_env, wait_http, web_command

pytestmark = pytest.mark.django_db(transaction=True)

# How soon a change made on one machine must show on another.
FRESH_WITHIN_SECONDS = 5.0


@dataclass(frozen=True)
class Machine:
    url: str
    index_dir: Path


@pytest.fixture
def machines(settings: Any, tmp_path: Path) -> Iterator[Callable[[str, bool], Machine]]:
    """`machines(name, web)` starts a web server (or, with web=False, a Celery worker) whose
    KNOWLEDGE_INDEX_DIR is a folder of its own."""
    if not settings.CELERY_BROKER_URL:
        pytest.skip("needs a broker: set REDIS_URL (CI does)")
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str, web: bool) -> Machine:
        index_dir = tmp_path / f"indexes-{name}"
        env = server_env(KNOWLEDGE_INDEX_DIR=str(index_dir))
        if not web:
            started.append(
                subprocess.Popen(
                    CELERY_WORKER_COMMAND,
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            return Machine(url="", index_dir=index_dir)
        port = free_port()
        process = subprocess.Popen(
            web_command(port=port, workers=1, threads=2),
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(process)
        wait_http(f"http://127.0.0.1:{port}/healthz", process)
        return Machine(url=f"http://127.0.0.1:{port}", index_dir=index_dir)

    yield start
    for process in started:
        process.terminate()
    for process in started:
        process.wait(timeout=30)


def _call(url: str, secret: str, body: dict[str, Any] | None = None, method: str | None = None) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode() if body is not None else None,
        method=method or ("POST" if body is not None else "GET"),
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        content = response.read()
        return json.loads(content) if content else None


def _upload(machine: Machine, tenant: Tenant, title: str, text: str) -> int:
    document_id = int(
        _call(f"{machine.url}/api/v1/documents/", tenant.secret, {"title": title, "text": text})["id"]
    )
    deadline = time.monotonic() + 120
    while True:
        status = _call(f"{machine.url}/api/v1/documents/{document_id}/", tenant.secret)["status"]
        if status == "indexed":
            return document_id
        assert status != "failed" and time.monotonic() < deadline, status
        time.sleep(0.3)


def _titles(machine: Machine, tenant: Tenant, query: str) -> set[str]:
    # Vector mode where the API has modes (the keyword index lives in the database, so it could
    # not tell a stale vector index from a fresh one); an API without modes ignores the field.
    body = {"query": query, "top_k": 10, "mode": "vector"}
    return {hit["title"] for hit in _call(f"{machine.url}/api/v1/search/", tenant.secret, body)["data"]}


def _soon(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + FRESH_WITHIN_SECONDS
    while not check():
        assert time.monotonic() < deadline, f"not within {FRESH_WITHIN_SECONDS} s"
        time.sleep(0.2)


def _index_is_current(machine: Machine, tenant: Tenant) -> None:
    """The machine's own index file holds exactly the organization's indexed chunks, at the
    database's version."""
    organization = tenant.organization
    info = IndexStore(machine.index_dir).info(org_key=org_key(organization))
    indexed = Chunk.objects.filter(organization=organization, document__status=Document.Status.INDEXED)
    assert (info.version, info.count) == (index_version_current(organization=organization), indexed.count())


def test_documents_indexed_or_deleted_on_one_machine_are_found_or_gone_on_the_others(
    alice: Tenant, charlie: Tenant, machines: Callable[[str, bool], Machine]
) -> None:
    worker = machines("worker", False)
    first, second = machines("web-1", True), machines("web-2", True)

    generators = _upload(first, alice, "Generators", "A generator function contains yield expressions.")
    assert _titles(first, alice, "yield") == {"Generators"}
    assert _titles(second, alice, "yield") == {"Generators"}  # its first search builds its index
    _index_is_current(second, alice)

    # Uploaded through the other server, indexed by the worker: both servers hold an index
    # already, so only catching up can make it searchable.
    _upload(second, alice, "Classes", "Classes bundle data and functionality together.")
    _soon(lambda: _titles(first, alice, "class") == {"Generators", "Classes"})
    _soon(lambda: _titles(second, alice, "class") == {"Generators", "Classes"})
    _index_is_current(first, alice)
    _index_is_current(second, alice)

    _call(f"{first.url}/api/v1/documents/{generators}/", alice.secret, method="DELETE")
    _index_is_current(first, alice)  # at once where it was deleted
    _soon(lambda: "Generators" not in _titles(second, alice, "yield"))
    _index_is_current(second, alice)

    # Each process wrote its own file (the worker, as it indexed): no disk is shared.
    for machine in (worker, first, second):
        assert (machine.index_dir / f"{org_key(alice.organization)}.faiss").exists()

    # Tenants stay apart on every machine.
    _upload(first, charlie, "Passwords", "The vault keeps passwords and secret keys.")
    assert _titles(second, charlie, "class") == {"Passwords"}
    assert "Passwords" not in _titles(second, alice, "secret keys")
    assert "Passwords" not in _titles(first, alice, "secret keys")
    _index_is_current(second, charlie)
    _index_is_current(second, alice)
