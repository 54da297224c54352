"""The load test runs: locust's realistic mix (bench/locustfile.py) for 20 s against a started
server, many tenants' keys, every kind of request served, no failure but a tenant's 429."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from bench.loadtest_setup import documents_upload
from tests.conftest import BIN, ROOT, make_tenant

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not settings.REDIS_URL, reason="several processes share state only through Redis (CI sets REDIS_URL)"
    ),
]

REQUEST_NAMES = {"generate", "generate (stream)", "chat", "embeddings", "search", "rag", "usage"}


def test_locust_mix_from_many_tenants_runs_without_failures(
    openai_backend: str, start_web_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Documents are ingested by the web server itself (no broker), so no worker is needed.
    monkeypatch.setenv("CELERY_BROKER_URL", "")
    base = start_web_server(workers=2, threads=8)
    tenants = []
    for number in range(5):
        tenant = make_tenant(f"load-{number}")
        tenants.append({"organization": tenant.organization.slug, "secret": tenant.secret})
    documents_upload(url=base, tenants=tenants, timeout=120)
    tenants_file = tmp_path / "tenants.json"
    tenants_file.write_text(json.dumps(tenants))
    result = subprocess.run(
        [
            str(BIN / "locust"),
            "-f",
            "bench/locustfile.py",
            "--headless",
            "--only-summary",
            "--host",
            base,
            "--users",
            "10",
            "--spawn-rate",
            "10",
            "--run-time",
            "20s",
            "--csv",
            str(tmp_path / "run"),
        ],
        cwd=ROOT,
        env={"PATH": str(BIN), "HOME": str(tmp_path), "LOADTEST_TENANTS": str(tenants_file)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(result.stdout, result.stderr[-4000:])  # locust's summary, shown when the test fails
    with open(tmp_path / "run_stats.csv") as file:
        stats = {row["Name"]: row for row in csv.DictReader(file)}
    with open(tmp_path / "run_failures.csv") as file:
        failures = list(csv.DictReader(file))
    assert set(stats) == REQUEST_NAMES | {"Aggregated"}, result.stderr[-3000:]
    assert all(int(stats[name]["Request Count"]) > 0 for name in REQUEST_NAMES), stats
    assert int(stats["Aggregated"]["Request Count"]) >= 100
    unexpected = [row for row in failures if not row["Error"].startswith("429 ")]
    assert unexpected == [], unexpected
    # Locust's exit status is 1 when anything failed, 429s included.
    assert result.returncode == (1 if failures else 0), result.stderr[-3000:]
