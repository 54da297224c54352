"""Prometheus metrics. With several web worker processes, set PROMETHEUS_MULTIPROC_DIR so that
/metrics aggregates every worker."""

from __future__ import annotations

from prometheus_client import Counter, Histogram
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
