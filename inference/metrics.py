"""The engine's Prometheus metrics, fed by its observer hook. No Django here: the standalone
inference service (`inference/server.py`) exports them too."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Seconds from the engine taking the request (queue wait included) to its first token, and to
# its last. The model label is the served model's name: one per process, so cardinality stays
# bounded by the deployment, not by what clients send.
TIME_TO_FIRST_TOKEN = Histogram(
    "llmp_time_to_first_token_seconds",
    "Seconds from submission to the engine until the first generated token.",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
GENERATION_SECONDS = Histogram(
    "llmp_generation_seconds",
    "Seconds from submission to the engine until the generation ended (stop or length).",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
# Each process has its own engine; the machine's backlog is the sum over the live processes.
ENGINE_QUEUE_DEPTH = Gauge(
    "llmp_engine_queue_depth",
    "Requests waiting for a place in the engine's running batch.",
    multiprocess_mode="livesum",
)
ENGINE_BATCH_SIZE = Histogram(
    "llmp_engine_batch_size",
    "Sequences in each decode step of the engine's batch.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)


class PrometheusEngineObserver:
    """The engine's observer (`inference.engine.observe.EngineObserver`) as Prometheus metrics."""

    def first_token(self, *, model: str, seconds: float) -> None:
        TIME_TO_FIRST_TOKEN.labels(model).observe(seconds)

    def generation_finished(self, *, model: str, seconds: float, completion_tokens: int) -> None:
        GENERATION_SECONDS.labels(model).observe(seconds)

    def queue_depth(self, *, depth: int) -> None:
        ENGINE_QUEUE_DEPTH.set(depth)

    def batch_step(self, *, size: int) -> None:
        ENGINE_BATCH_SIZE.observe(size)


# The router's view of each deployment (`inference.engine.router`). Labels are the registry's
# models and deployments: bounded by the configuration, never by what clients send.
UPSTREAM_REQUESTS = Counter(
    "llmp_deployment_requests",
    "Requests sent to a model's deployment, by outcome: ok, failed (tried elsewhere), refused (a 4xx).",
    ["model", "deployment", "outcome"],
)
UPSTREAM_OUTSTANDING = Gauge(
    "llmp_deployment_outstanding",
    "Requests in flight on a model's deployment.",
    ["model", "deployment"],
    multiprocess_mode="livesum",
)
UPSTREAM_AVAILABLE = Gauge(
    "llmp_deployment_available",
    "1 while the deployment takes requests, 0 while it cools down after failures.",
    ["model", "deployment"],
    multiprocess_mode="livemin",
)
FALLBACKS = Counter(
    "llmp_model_fallbacks",
    "Requests of a model that went to one of its fallbacks.",
    ["model", "fallback"],
)


class PrometheusRouterObserver:
    """The router's observer (`inference.engine.router.RouterObserver`) as Prometheus metrics."""

    def attempt(self, *, model: str, deployment: str, outcome: str) -> None:
        UPSTREAM_REQUESTS.labels(model, deployment, outcome).inc()

    def outstanding(self, *, model: str, deployment: str, change: int) -> None:
        UPSTREAM_OUTSTANDING.labels(model, deployment).inc(change)

    def availability(self, *, model: str, deployment: str, available: bool) -> None:
        UPSTREAM_AVAILABLE.labels(model, deployment).set(1 if available else 0)

    def fallback(self, *, model: str, fallback: str) -> None:
        FALLBACKS.labels(model, fallback).inc()
