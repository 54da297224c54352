"""Prometheus metrics of the web layer, and the multiprocess collection of every process's.

Web workers (`python -m platform.web`) and Celery's pool processes each count in their own
files under `PROMETHEUS_MULTIPROC_DIR` (prometheus_client's multiprocess mode), which
`platform/web.py` and the Celery worker empty at start; a scrape adds them up."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

REQUESTS = Counter("llmp_http_requests_total", "HTTP requests served.", ["method", "route", "status"])
REQUEST_LATENCY = Histogram(
    "llmp_http_request_duration_seconds",
    "Time to produce the response headers.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TOKENS = Counter(
    "llmp_tokens_total", "Tokens charged, by kind (prompt, completion) and model.", ["kind", "model"]
)
ADMISSIONS = Counter(
    "llmp_admissions_total",
    "Admission decisions on metered routes (admitted, rate_limited, insufficient_quota, unavailable).",
    ["outcome"],
)

# Collectors of state shared by every process (database, Redis), read when /metrics is scraped,
# in whichever process answers; apps add theirs when they are ready.
SHARED_STATE_COLLECTORS: list[Collector] = []

_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]*_(\d+)\.db$")


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def multiprocess_dir_reset(*, path: str) -> None:
    """Empty (or create) the folder before any process of a new server writes to it: files
    left by a previous run would be added to this one's counts."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dead_processes_forget(*, path: str) -> list[int]:
    """`mark_process_dead` for every process whose live gauges (the engine's queue depth) are
    still on disk but which has exited: their last value would otherwise count forever.

    Done at each scrape rather than when a worker exits because granian offers no hook in the
    parent when a worker ends, and a worker killed outright runs no code of its own."""
    dead = set()
    for entry in os.listdir(path):
        match = _LIVE_GAUGE_FILE.match(entry)
        if match and not _process_alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, path)
    return sorted(dead)


class _AllProcesses(Collector):
    """prometheus_client's MultiProcessCollector, forgetting the dead processes' live gauges
    before each collection."""

    def __init__(self, *, path: str) -> None:
        self._path = path
        self._files = multiprocess.MultiProcessCollector(None, path=path)

    def collect(self) -> Iterator[Metric]:
        dead_processes_forget(path=self._path)
        return self._files.collect()


def multiprocess_registry(*, path: str) -> CollectorRegistry:
    """A registry that reads the metrics of every process writing under `path`."""
    registry = CollectorRegistry()
    registry.register(_AllProcesses(path=path))
    return registry
