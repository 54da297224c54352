"""OpenTelemetry tracing, configured from the standard variables.

`OTEL_TRACES_EXPORTER`: `none` (the default: no SDK, no instrumentation, nothing recorded),
`console` (one JSON object per span on stdout) or `otlp` (OTLP over HTTP/protobuf to
`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, default
http://localhost:4318). The SDK reads the rest itself: `OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`.

With an exporter, every request served by Django gets a server span (`server_span_start`,
called by the outermost middleware: the W3C trace context of the caller is continued), and
Celery (the context travels in the task's headers, so a job's trace goes from the API request
through Redis to the worker), Redis, psycopg, requests and httpx are instrumented; the platform
adds its own spans (admission, the engine's queue wait, prefill and decode, ingestion stages, the
usage flush) through `opentelemetry.trace.get_tracer`, which costs next to nothing while no SDK is
installed. The server span and the platform's finished spans are recorded without the SDK's
tracer where the sampler allows it (`common.spans`); Redis client spans are the platform's own
(`common.redis_spans`).

What it costs is measured by `bench/bench_tracing_cpu.py` (CPU per request) and
`bench/bench_gateway.py --tracing both` (throughput); BENCHMARKS.md has the figures behind the
choices below.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from common import redis_spans, spans

if TYPE_CHECKING:
    from django.http import HttpRequest

logger = logging.getLogger(__name__)

_configured = False
_lock = threading.Lock()
# Whether requests get a server span: on with tracing, unless "django" is among the disabled
# instrumentations (the name opentelemetry-instrument gives the server side).
_server_spans = False
_tracer = trace.get_tracer(__name__)


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
        provider.add_span_processor(
            DroppingBatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        )
        trace.set_tracer_provider(provider)
        spans.recorder_install(provider)
        tracing_instrument()
        _configured = True
        return True


def tracing_instrument() -> None:
    """Server spans ("django"), Celery, Redis, psycopg, requests and httpx (each once), less
    those named in `OTEL_PYTHON_DISABLED_INSTRUMENTATIONS` (comma-separated, as
    opentelemetry-instrument reads it): the platform's own spans stay, and a busy web node can
    drop the per-call ones."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    global _server_spans
    disabled = {
        name.strip().lower()
        for name in os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")
    }
    _server_spans = "django" not in disabled
    if "celery" not in disabled:
        CeleryInstrumentor().instrument()
    if "redis" not in disabled:
        redis_spans.redis_spans_instrument()
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


def tracing_uninstrument() -> None:
    """Undoes `tracing_instrument` (for tests: the provider itself stays, as the SDK allows
    setting it once per process)."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    global _server_spans
    _server_spans = False
    redis_spans.redis_spans_uninstrument()
    for instrumentor in (
        CeleryInstrumentor(),
        PsycopgInstrumentor(),
        RequestsInstrumentor(),
        HTTPXClientInstrumentor(),
    ):
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()


def tracing_instrumented() -> set[str]:
    """The instrumentations in place, by the names OTEL_PYTHON_DISABLED_INSTRUMENTATIONS uses."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    names = {name for name, on in (("django", _server_spans), ("redis", redis_spans.instrumented())) if on}
    for name, instrumentor in (
        ("celery", CeleryInstrumentor()),
        ("psycopg", PsycopgInstrumentor()),
        ("requests", RequestsInstrumentor()),
        ("httpx", HTTPXClientInstrumentor()),
    ):
        if instrumentor.is_instrumented_by_opentelemetry:
            names.add(name)
    return names


# --- The server span ------------------------------------------------------------------------
#
# In place of opentelemetry-instrumentation-django, whose middleware cost more than all the
# spans of a request together (BENCHMARKS.md, issue 15): it resolved the URL a second time,
# built the absolute URI three times, collected a dozen old-convention attributes, read the
# header-capture variables and recorded OTel metrics on every request, sampled or not. This one
# reads the caller's trace context only when one of the propagator's headers is there, and
# sets the stable HTTP conventions' attributes that identify a request, once, at its end.

_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


class _MetaGetter(Getter[Mapping[str, str]]):
    """Reads a propagator's header from Django's `request.META` (`traceparent` is
    `HTTP_TRACEPARENT`)."""

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get("HTTP_" + key.upper().replace("-", "_"))
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return [key[5:].lower().replace("_", "-") for key in carrier if key.startswith("HTTP_")]


_meta_getter = _MetaGetter()
_carrier_keys: tuple[object, frozenset[str]] = (None, frozenset())


def _incoming_context(meta: Mapping[str, str]) -> otel_context.Context | None:
    """The caller's trace context, or None (a new trace) when it sent none of the headers the
    propagator (OTEL_PROPAGATORS; W3C trace context and baggage by default) reads."""
    global _carrier_keys
    propagator = propagate.get_global_textmap()
    if _carrier_keys[0] is not propagator:
        _carrier_keys = (
            propagator,
            frozenset("HTTP_" + f.upper().replace("-", "_") for f in propagator.fields),
        )
    if _carrier_keys[1].isdisjoint(meta.keys()):
        return None
    return propagator.extract(meta, getter=_meta_getter, context=otel_context.Context())


@dataclass(slots=True)
class ServerSpan:
    span: trace.Span
    method: str
    token: contextvars.Token[otel_context.Context]


def server_span_start(request: HttpRequest) -> ServerSpan | None:
    """Starts the request's server span and makes it current; None when tracing is off. The
    caller ends it with `server_span_end`, whatever happens."""
    if not _server_spans:
        return None
    method = request.method if request.method in _KNOWN_METHODS else "_OTHER"
    parent = _incoming_context(request.META)
    name = method if method != "_OTHER" else "HTTP"
    attributes = {"http.request.method": method, "url.path": request.path, "url.scheme": request.scheme}
    recorder = spans.recorder
    span = (
        _tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        if recorder is None
        else spans.DirectSpan.start(
            recorder, name, parent=parent, kind=SpanKind.SERVER, attributes=attributes, scope=__name__
        )
    )
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    return ServerSpan(span=span, method=method, token=token)


def server_span_end(server: ServerSpan, *, route: str | None, status: int | None) -> None:
    """Names the span after the route (`POST v1/chat/completions`), records the status and ends
    it; a 5xx is an error. `status` None: the request raised."""
    span = server.span
    try:
        if span.is_recording():
            attributes: dict[str, str | int] = {}
            if route:
                span.update_name(f"{server.method if server.method != '_OTHER' else 'HTTP'} {route}")
                attributes["http.route"] = route
            if status is not None:
                attributes["http.response.status_code"] = status
            span.set_attributes(attributes)
            if status is None or status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.end()
    finally:
        otel_context.detach(server.token)


# --- Export ------------------------------------------------------------------------------------


class DroppingBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's batch processor, but when its queue is full (the collector is down or slower
    than the spans come) a span is dropped for the price of a counter, and a warning says how
    many once a minute. The SDK's own processor builds a log record for every dropped span
    before a filter discards it as a duplicate: with the collector down, that doubled what a
    span costs (BENCHMARKS.md, issue 15). The queue is the SDK's (`_batch_processor._queue`, a
    bounded deque; opentelemetry-sdk is pinned): reading its length is all this adds."""

    _REPORT_EVERY_S = 60.0

    def __init__(self, exporter: SpanExporter, **options: Any) -> None:
        super().__init__(exporter, **options)
        self._queue = self._batch_processor._queue
        self._dropped = 0
        self._reported_at = time.monotonic()

    def on_end(self, span: ReadableSpan) -> None:
        if len(self._queue) < self._batch_processor._max_queue_size:
            super().on_end(span)
            return
        # Not under a lock: a count lost to a race only makes the warning a little low.
        self._dropped += 1
        now = time.monotonic()
        if now - self._reported_at >= self._REPORT_EVERY_S:
            dropped, self._dropped, self._reported_at = self._dropped, 0, now
            logger.warning("Tracing: %d spans dropped, the export queue being full", dropped)
