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
installed.

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
import traceback
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.attributes import BoundedAttributes, _clean_attribute_value
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AnyValue, AttributeValue

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
        _direct_install(provider)
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
        redis_spans_instrument()
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
    redis_spans_uninstrument()
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

    names = {name for name, on in (("django", _server_spans), ("redis", _redis_wrapped)) if on}
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
    direct = _direct
    span = (
        _tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        if direct is None
        else _DirectSpan.start(direct, name, parent=parent, kind=SpanKind.SERVER, attributes=attributes)
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


# --- Finished spans ------------------------------------------------------------------------
#
# The platform's own child spans (admission, the upstream call, the engine's queue wait, prefill
# and decode) are known whole when they are recorded: name, start, end, attributes. Through the
# SDK's tracer each one costs a sampling decision, attributes copied into BoundedAttributes one
# lock at a time, a Span started and ended under its lock, and a ReadableSpan copy of it for the
# processor (BENCHMARKS.md, issue 15). Under a sampler that follows the parent (ParentBased with
# its default delegates: the SDK's default, and parentbased_traceidratio), the child of a sampled
# span is sampled, so the ReadableSpan the processor would have been given is built directly.
# With another sampler, or to record an exception, the SDK's tracer does it.


@dataclass(frozen=True, slots=True)
class _Direct:
    processor: SpanProcessor
    resource: Resource
    sampler: Sampler
    span_id: Callable[[], int]
    trace_id: Callable[[], int]
    random_trace_ids: bool


_direct: _Direct | None = None
_scopes: dict[str, InstrumentationScope] = {}
_tracers: dict[str, trace.Tracer] = {}


def _follows_parent(sampler: Any) -> bool:
    return (
        isinstance(sampler, ParentBased)
        and sampler._local_parent_sampled is ALWAYS_ON
        and sampler._remote_parent_sampled is ALWAYS_ON
    )


def _direct_install(provider: TracerProvider) -> None:
    """Records finished spans directly into `provider`'s processor when its sampler allows it
    (the provider's processor is private to the SDK, which is pinned)."""
    global _direct
    _direct = (
        _Direct(
            processor=provider._active_span_processor,
            resource=provider.resource,
            sampler=provider.sampler,
            span_id=provider.id_generator.generate_span_id,
            trace_id=provider.id_generator.generate_trace_id,
            random_trace_ids=provider.id_generator.is_trace_id_random(),
        )
        if _follows_parent(provider.sampler)
        else None
    )


def span_finished(
    name: str,
    *,
    start_ns: int,
    end_ns: int | None = None,
    attributes: dict[str, AttributeValue],
    parent: otel_context.Context | None = None,
    scope: str = __name__,
    kind: SpanKind = SpanKind.INTERNAL,
    error: BaseException | None = None,
) -> None:
    """Records a span that has ended (at `end_ns`, default now), as a child of the current span
    of `parent` (default: this thread's context) when that one is recorded; `error` is recorded
    as its exception and status. `attributes` becomes the span's: not to be changed after."""
    parent_span = trace.get_current_span(parent)
    if not parent_span.is_recording():
        return
    direct = _direct
    if direct is None or error is not None:
        tracer = _tracers.get(scope)
        if tracer is None:
            tracer = _tracers[scope] = trace.get_tracer(scope)
        span = tracer.start_span(name, context=parent, kind=kind, start_time=start_ns, attributes=attributes)
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end(end_time=end_ns)
        return
    parent_context = parent_span.get_span_context()
    if not parent_context.trace_flags.sampled:
        return
    direct.processor.on_end(
        ReadableSpan(
            name,
            SpanContext(
                parent_context.trace_id,
                direct.span_id(),
                is_remote=False,
                trace_flags=parent_context.trace_flags,
                trace_state=parent_context.trace_state,
            ),
            parent_context,
            direct.resource,
            attributes,
            kind=kind,
            start_time=start_ns,
            end_time=time.time_ns() if end_ns is None else end_ns,
            instrumentation_scope=_scope(scope),
        )
    )


def _scope(name: str) -> InstrumentationScope:
    scope = _scopes.get(name)
    if scope is None:
        # As the SDK names a tracer's scope: no version is "".
        scope = _scopes[name] = InstrumentationScope(name, "")
    return scope


class _DirectSpan(trace.Span):
    """A span that stays open while work runs under it (the request's server span), recorded by
    the platform instead of the SDK's `_Span` under the same conditions as `span_finished`: its
    sampling decision is the sampler's, and at its end the processor gets the ReadableSpan the
    SDK would have made. Attributes set by others are cleaned as the SDK cleans them."""

    _MAX_EVENTS = 128  # the SDK's default limit

    def __init__(
        self,
        direct: _Direct,
        name: str,
        *,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, AnyValue],
        scope: str,
    ) -> None:
        self._direct = direct
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._attributes = attributes
        self._scope = scope
        self._events: list[Event] = []
        self._links: list[trace.Link] = []
        self._status = Status(StatusCode.UNSET)
        self._start_ns = time.time_ns()
        self._end_ns: int | None = None

    @classmethod
    def start(
        cls,
        direct: _Direct,
        name: str,
        *,
        parent: otel_context.Context | None,
        kind: SpanKind,
        attributes: Mapping[str, AnyValue],
        scope: str = __name__,
    ) -> trace.Span:
        parent_context: SpanContext | None = trace.get_current_span(parent).get_span_context()
        if parent_context is None or not parent_context.is_valid:
            parent_context, trace_id, random_trace_id = None, direct.trace_id(), direct.random_trace_ids
        else:
            trace_id, random_trace_id = parent_context.trace_id, parent_context.trace_flags.random_trace_id
        sampled = direct.sampler.should_sample(parent, trace_id, name, kind, attributes, ())
        flags = TraceFlags.SAMPLED if sampled.decision.is_sampled() else TraceFlags.DEFAULT
        if random_trace_id:
            flags |= TraceFlags.RANDOM_TRACE_ID
        context = SpanContext(
            trace_id,
            direct.span_id(),
            is_remote=False,
            trace_flags=TraceFlags(flags),
            trace_state=sampled.trace_state,
        )
        if not sampled.decision.is_recording():
            return trace.NonRecordingSpan(context)
        return cls(
            direct,
            name,
            context=context,
            parent=parent_context,
            kind=kind,
            attributes=dict(sampled.attributes or {}),
            scope=scope,
        )

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end_ns is None

    def set_attribute(self, key: str, value: AnyValue) -> None:
        if self._end_ns is not None or not key or not isinstance(key, str):
            return
        self._attributes[key] = _clean_attribute_value(value, None)

    def set_attributes(self, attributes: Mapping[str, AnyValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(
        self, name: str, attributes: Mapping[str, AnyValue] | None = None, timestamp: int | None = None
    ) -> None:
        if self._end_ns is None and len(self._events) < self._MAX_EVENTS:
            self._events.append(
                Event(name, BoundedAttributes(attributes=attributes, immutable=True), timestamp)
            )

    def add_link(self, context: SpanContext, attributes: Mapping[str, AnyValue] | None = None) -> None:
        if self._end_ns is None and context.is_valid:
            self._links.append(trace.Link(context, BoundedAttributes(attributes=attributes, immutable=True)))

    def update_name(self, name: str) -> None:
        if self._end_ns is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # As the SDK: OK is final, UNSET is ignored.
        if self._end_ns is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self._status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: Mapping[str, AnyValue] | None = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        # The SDK's event, attribute for attribute.
        module, qualname = type(exception).__module__, type(exception).__qualname__
        recorded: dict[str, AnyValue] = {
            "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        recorded.update(attributes or {})
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_ns is not None:
            return
        self._end_ns = end_time if end_time is not None else time.time_ns()
        self._direct.processor.on_end(
            ReadableSpan(
                self._name,
                self._context,
                self._parent,
                self._direct.resource,
                self._attributes,
                tuple(self._events),
                tuple(self._links),
                self._kind,
                status=self._status,
                start_time=self._start_ns,
                end_time=self._end_ns,
                instrumentation_scope=_scope(self._scope),
            )
        )


# --- Redis client spans ----------------------------------------------------------------------
#
# In place of opentelemetry-instrumentation-redis, whose wrapper cost about 390,000 instructions
# per command, four times a bare span (BENCHMARKS.md, issue 15): it formatted the command,
# set eight attributes one lock at a time from the connection's settings, and made each span
# current. Here a command's span is made only under a recorded span (a request's or a task's:
# a background thread's polling does not start traces of its own), with the connection's
# attributes worked out once per client, and it is never current (nothing runs under it).

_redis_tracer = trace.get_tracer("common.tracing.redis")
_redis_wrapped = False
_MAX_STATEMENT = 1000
_peer_attributes: weakref.WeakKeyDictionary[Any, dict[str, str | int]] = weakref.WeakKeyDictionary()


def _redis_peer(client: Any) -> dict[str, str | int]:
    attributes = _peer_attributes.get(client)
    if attributes is None:
        attributes = {"db.system": "redis"}
        pool = getattr(client, "connection_pool", None)
        options = getattr(pool, "connection_kwargs", None) or {}
        if "path" in options:
            attributes["net.peer.name"] = str(options["path"])
            attributes["net.transport"] = "other"
        elif options:
            attributes["net.peer.name"] = str(options.get("host", "localhost"))
            attributes["net.peer.port"] = int(options.get("port", 6379))
            attributes["net.transport"] = "ip_tcp"
        if options:
            attributes["db.redis.database_index"] = int(options.get("db") or 0)
        _peer_attributes[client] = attributes
    return attributes


# Set while a platform span that stands for its Redis calls is open (admission: one script):
# those calls make no spans of their own, the platform's span carries the store's attributes.
_redis_spans_folded: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "redis_spans_folded", default=False
)


def redis_spans_fold() -> contextvars.Token[bool]:
    """The Redis calls from here to `redis_spans_unfold(token)` make no spans."""
    return _redis_spans_folded.set(True)


def redis_spans_unfold(token: contextvars.Token[bool]) -> None:
    _redis_spans_folded.reset(token)


def _redis_traced() -> bool:
    return not _redis_spans_folded.get() and trace.get_current_span().is_recording()


def _redis_span(client: Any, name: str, attributes: dict[str, Any]) -> trace.Span:
    return _redis_tracer.start_span(
        name, kind=SpanKind.CLIENT, attributes={**_redis_peer(client), **attributes}
    )


def _redis_call(span: trace.Span, call: Any, args: Any, kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except Exception as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        span.end()


def _traced_command(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """`Redis.execute_command` and `RedisCluster.execute_command`: a span named after the
    command, its arguments left out (`EVALSHA ? ? ?`)."""
    if not args or not _redis_traced():
        return wrapped(*args, **kwargs)
    command = str(args[0])
    statement = command + " ?" * (len(args) - 1)
    span = _redis_span(
        instance,
        command,
        {"db.statement": statement[:_MAX_STATEMENT], "db.redis.args_length": len(args)},
    )
    return _redis_call(span, wrapped, args, kwargs)


def _traced_pipeline(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """`Pipeline.execute` and `ClusterPipeline.execute`: one span for the whole pipeline."""
    if not _redis_traced():
        return wrapped(*args, **kwargs)
    stack = getattr(instance, "command_stack", None) or []
    # redis.client's stack holds (args, options) pairs, redis.cluster's PipelineCommand objects.
    names = [str((command.args if hasattr(command, "args") else command[0])[0]) for command in stack]
    statement = "\n".join(names)[:_MAX_STATEMENT]
    span = _redis_span(
        instance,
        " ".join(dict.fromkeys(names))[:_MAX_STATEMENT] or "PIPELINE",
        {"db.statement": statement, "db.redis.pipeline_length": len(stack)},
    )
    return _redis_call(span, wrapped, args, kwargs)


def redis_spans_instrument() -> None:
    global _redis_wrapped
    if _redis_wrapped:
        return
    from wrapt import wrap_function_wrapper

    wrap_function_wrapper("redis.client", "Redis.execute_command", _traced_command)
    wrap_function_wrapper("redis.client", "Pipeline.execute", _traced_pipeline)
    wrap_function_wrapper("redis.cluster", "RedisCluster.execute_command", _traced_command)
    wrap_function_wrapper("redis.cluster", "ClusterPipeline.execute", _traced_pipeline)
    _redis_wrapped = True


def redis_spans_uninstrument() -> None:
    global _redis_wrapped
    if not _redis_wrapped:
        return
    import redis.client
    import redis.cluster
    from opentelemetry.instrumentation.utils import unwrap

    unwrap(redis.client.Redis, "execute_command")
    unwrap(redis.client.Pipeline, "execute")
    unwrap(redis.cluster.RedisCluster, "execute_command")
    unwrap(redis.cluster.ClusterPipeline, "execute")
    _redis_wrapped = False


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
