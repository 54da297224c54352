"""OpenTelemetry tracing, configured from the standard variables.

`OTEL_TRACES_EXPORTER`: `none` (the default: no SDK, no instrumentation, nothing recorded),
`console` (one JSON object per span on stdout) or `otlp` (OTLP over HTTP/protobuf to
`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, default
http://localhost:4318). The SDK reads the rest itself: `OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`.

With an exporter, Django, Celery (the context travels in the task's headers, so a job's trace
goes from the API request through Redis to the worker), Redis, psycopg, requests and httpx are
instrumented; the platform adds its own spans (admission, the engine's queue wait, prefill and
decode, ingestion stages, the usage flush) through `opentelemetry.trace.get_tracer`, which costs
next to nothing while no SDK is installed.
"""

from __future__ import annotations

import os
import threading

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter

_configured = False
_lock = threading.Lock()


def _exporter_from_env() -> SpanExporter | None:
    name = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if name in ("", "none"):
        return None
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # One line per span, so that the output reads as JSON lines like the logs.
        return ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + os.linesep)
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"OTEL_TRACES_EXPORTER={name!r}: use otlp, console or none")


def tracing_configure(*, exporter: SpanExporter | None = None, batch: bool = True) -> bool:
    """Installs the SDK with `exporter` (default: the one OTEL_TRACES_EXPORTER names) and the
    instrumentations, once per process; False when tracing is off. Forked processes (Celery's
    pool) keep it: the SDK restarts its export thread after a fork."""
    global _configured
    with _lock:
        if _configured:
            return True
        exporter = exporter or _exporter_from_env()
        if exporter is None:
            return False
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        tracing_instrument()
        _configured = True
        return True


def tracing_instrument() -> None:
    """Django, Celery, Redis, psycopg, requests and httpx (each once), less those named in
    `OTEL_PYTHON_DISABLED_INSTRUMENTATIONS` (comma-separated, as opentelemetry-instrument reads
    it): the platform's own spans stay, and a busy web node can drop the per-call ones."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    disabled = {
        name.strip().lower()
        for name in os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")
    }
    # Django's must come before the middleware is loaded (it adds its own, outermost).
    if "django" not in disabled:
        DjangoInstrumentor().instrument()
    if "celery" not in disabled:
        CeleryInstrumentor().instrument()
    if "redis" not in disabled:
        RedisInstrumentor().instrument()
    if "psycopg" not in disabled:
        PsycopgInstrumentor().instrument(enable_commenter=False)
    if "requests" not in disabled:
        RequestsInstrumentor().instrument()
    if "httpx" not in disabled:
        HTTPXClientInstrumentor().instrument()


def current_ids() -> tuple[str, str] | None:
    """The current trace and span ids (hex), or None outside a recorded span."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
