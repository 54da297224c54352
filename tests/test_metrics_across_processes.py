"""The metrics an operator scrapes add up every process of a machine: both web workers of one
server (prometheus_client's multiprocess mode, set up by `python -m platform.web`), a Celery
worker's pool processes (its own endpoint), and no process that has exited."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from common.metrics import multiprocess_registry
from knowledge.models import Document
from tests.conftest import CELERY_WORKER_COMMAND, ROOT, Tenant, free_port, server_env, wait_http

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not settings.REDIS_URL, reason="several processes share state only through Redis (CI sets REDIS_URL)"
    ),
]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=30) as response:
        return _parse(response.read().decode())


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _post(url: str, secret: str, body: dict[str, Any]) -> bytes:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        return bytes(response.read())


def _admitted_by_process(folder: Path) -> dict[int, float]:
    """Each process's own count of admitted requests, read from its file alone."""
    counts = {}
    for path in folder.glob("counter_*.db"):
        alone = folder.parent / f"alone-{path.stem}"
        alone.mkdir()
        shutil.copy(path, alone / path.name)
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in MultiProcessCollector(None, path=str(alone)).collect()
            for s in family.samples
        }
        counts[int(path.stem.split("_")[1])] = _value(samples, "llmp_admissions_total", outcome="admitted")
        shutil.rmtree(alone)
    return counts


def _eventually(check: Callable[[], bool], *, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the metric did not reach its expected value"
        time.sleep(0.1)


def test_one_scrape_adds_up_both_web_workers_by_the_right_amounts(
    alice: Tenant,
    openai_backend: str,
    start_web_server: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice.organization.requests_per_minute = None
    alice.organization.tokens_per_minute = None
    alice.organization.save()
    folder = tmp_path / "metrics"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    base = start_web_server(workers=2, threads=4)
    before = _scrape(f"{base}/metrics")
    generations = streams = 0

    def generate(stream: bool) -> None:
        body = _post(
            f"{base}/api/v1/generate/", alice.secret, {"prompt": "hi", "max_tokens": 3, "stream": stream}
        )
        assert (b"tok2" in body) and (not stream or b"event: " in body or b"data: " in body)

    # Rounds of concurrent requests on fresh connections until both processes have served some
    # (the kernel hands connections to either); each round's count is known.
    for _ in range(10):
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(generate, [False] * 6 + [True] * 2))
        generations, streams = generations + 6, streams + 2
        by_process = _admitted_by_process(folder)
        if len([count for count in by_process.values() if count]) == 2:
            break
    by_process = _admitted_by_process(folder)
    assert len(by_process) == 2 and all(by_process.values()), by_process
    total = generations + streams

    def delta(name: str, **labels: str) -> float:
        return _value(_scrape(f"{base}/metrics"), name, **labels) - _value(before, name, **labels)

    # Tokens are charged once each response is sent: wait for the last ones.
    _eventually(lambda: delta("llmp_tokens_total", kind="completion", model="fake-model") >= 3 * total)
    after = _scrape(f"{base}/metrics")
    moved = {
        name: _value(after, name, **labels) - _value(before, name, **labels)
        for name, labels in [
            ("llmp_admissions_total", {"outcome": "admitted"}),
            ("llmp_tokens_total", {"kind": "completion", "model": "fake-model"}),
            ("llmp_generation_seconds_count", {"model": "fake-model"}),
            ("llmp_time_to_first_token_seconds_count", {"model": "fake-model"}),
            ("llmp_http_request_duration_seconds_count", {"route": "api/v1/generate/"}),
        ]
    }
    assert moved == {
        "llmp_admissions_total": total,
        "llmp_tokens_total": 3 * total,
        "llmp_generation_seconds_count": total,
        # Over the openai backend a first token is seen on streams only.
        "llmp_time_to_first_token_seconds_count": streams,
        "llmp_http_request_duration_seconds_count": total,
    }
    assert sum(by_process.values()) == _value(after, "llmp_admissions_total", outcome="admitted")
    assert _value(after, "llmp_engine_queue_depth") == 0


def test_a_dead_process_live_gauge_no_longer_counts(tmp_path: Path) -> None:
    """A process that set the engine's queue depth and exited (killed, no clean-up of its own)."""
    code = (
        "from inference.metrics import ENGINE_QUEUE_DEPTH, ENGINE_BATCH_SIZE\n"
        "ENGINE_QUEUE_DEPTH.set(5); ENGINE_BATCH_SIZE.observe(4)\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)
    files = {path.name for path in tmp_path.iterdir()}
    assert any(re.match(r"gauge_livesum_\d+\.db", name) for name in files), files
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in multiprocess_registry(path=str(tmp_path)).collect()
        for s in family.samples
    }
    assert _value(samples, "llmp_engine_queue_depth") == 0
    # What it counted stays counted.
    assert _value(samples, "llmp_engine_batch_size_count") == 1
    assert not any(path.name.startswith("gauge_livesum_") for path in tmp_path.iterdir())


def test_celery_worker_serves_its_pool_processes_metrics(alice: Tenant, tmp_path: Path) -> None:
    port = free_port()
    folder = tmp_path / "worker-metrics"
    folder.mkdir()
    (folder / "counter_1.db").write_bytes(b"left by an earlier run")
    worker = subprocess.Popen(
        CELERY_WORKER_COMMAND,
        cwd=ROOT,
        env=server_env(CELERY_METRICS_PORT=str(port), PROMETHEUS_MULTIPROC_DIR=str(folder)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics", worker)
        assert not (folder / "counter_1.db").exists()  # emptied at start
        response = alice.client().post(
            "/api/v1/documents/",
            {"title": "Classes", "text": "Classes bundle data and functionality together."},
            format="json",
        )
        assert response.status_code == 202, response.content
        document_id = response.json()["id"]

        def indexed() -> bool:
            status = Document.objects.get(pk=document_id).status
            assert status != Document.Status.FAILED
            return status == Document.Status.INDEXED

        _eventually(indexed, seconds=120)
        samples = _scrape(f"http://127.0.0.1:{port}/metrics")
        for stage in ("parse", "chunk", "embed", "index"):
            assert _value(samples, "llmp_ingestion_seconds_count", stage=stage) == 1, stage
        assert _value(samples, "llmp_tokens_total", kind="prompt", model="all-MiniLM-L6-v2") > 0
    finally:
        worker.terminate()
        worker.wait(timeout=30)
