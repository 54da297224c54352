"""psycopg's connection pool (DATABASE_POOL_MAX_SIZE): configured from the environment strictly,
used by a process's threads, and a web server never holds more connections than its pool."""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import connection

from bench.common import BIN, ROOT
from tests.conftest import Tenant, get_status, server_env

needs_postgres = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="the pool is PostgreSQL's (CI sets it)",
)

# Six threads query at once through a pool of three; prints the settings and the pool's figures.
_THROUGH_THE_POOL = """
import json, threading, django
django.setup()
from django.conf import settings
from django.db import connection, connections

def query():
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(0.2)")
    connections.close_all()  # back to the pool, as at the end of a request

threads = [threading.Thread(target=query) for _ in range(6)]
for thread in threads: thread.start()
for thread in threads: thread.join()
stats = connection.pool.get_stats()
print(json.dumps({"options": settings.DATABASES["default"].get("OPTIONS", {}),
                  "conn_max_age": settings.DATABASES["default"]["CONN_MAX_AGE"],
                  "pool_max": stats["pool_max"], "opened": stats["connections_num"],
                  "requests": stats["requests_num"]}))
"""


def _python(code: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "python"), "-c", code],
        cwd=ROOT,
        env=server_env(**extra),
        capture_output=True,
        text=True,
        timeout=120,
    )


@needs_postgres
@pytest.mark.django_db
def test_a_process_queries_through_a_pool_of_the_configured_size() -> None:
    result = _python(_THROUGH_THE_POOL, DATABASE_POOL_MAX_SIZE="3", DATABASE_POOL_MIN_SIZE="1")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["options"]["pool"] == {"min_size": 1, "max_size": 3, "timeout": 10.0}
    assert found["conn_max_age"] == 0
    assert found["pool_max"] == 3
    assert found["opened"] <= 3 and found["requests"] >= 6


@needs_postgres
def test_a_pool_with_persistent_connections_stops_the_start() -> None:
    result = _python("import django; django.setup()", DATABASE_POOL_MAX_SIZE="4", DATABASE_CONN_MAX_AGE="60")
    assert result.returncode != 0 and "DATABASE_CONN_MAX_AGE must be 0" in result.stderr
    result = _python("import django; django.setup()", DATABASE_POOL_MAX_SIZE="2", DATABASE_POOL_MIN_SIZE="3")
    assert result.returncode != 0 and "DATABASE_POOL_MIN_SIZE must be between" in result.stderr


def test_sqlite_uses_no_pool(tmp_path: Any) -> None:
    show = "import django, json; django.setup(); from django.conf import settings; print(json.dumps(settings.DATABASES['default'].get('OPTIONS', {})))"  # noqa: E501
    on_sqlite = _python(show, DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", DATABASE_POOL_MAX_SIZE="4")
    assert on_sqlite.returncode == 0, on_sqlite.stderr
    assert "pool" not in json.loads(on_sqlite.stdout.strip().splitlines()[-1])


@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_a_web_server_holds_no_more_connections_than_its_pool(
    alice: Tenant, start_web_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_POOL_MAX_SIZE", "3")
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        (started,) = cursor.fetchone()
    base = start_web_server(workers=1, threads=16)
    url = f"{base}/api/v1/usage/?start=2026-01-01&end=2026-01-31"  # a database query each
    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(lambda _i: get_status(url, alice.secret), range(64)))
    assert statuses == [200] * 64
    with connection.cursor() as cursor:
        cursor.execute(
            # The server's connections: those opened since it started (an earlier test's server
            # may still be closing its own).
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_start >= %s",
            [started],
        )
        (others,) = cursor.fetchone()
    assert 1 <= others <= 3
