"""The platform's spans, recorded without the SDK's tracer.

The platform's own child spans (admission, the upstream call, the engine's queue wait, prefill
and decode) are known whole when they are recorded: name, start, end, attributes. Through the
SDK's tracer each one costs a sampling decision, attributes copied into BoundedAttributes one
lock at a time, a Span started and ended under its lock, and a ReadableSpan copy of it for the
processor (BENCHMARKS.md, issue 15). Under a sampler that follows the parent (ParentBased with
its default delegates: the SDK's default, and parentbased_traceidratio), the child of a sampled
span is sampled, so the ReadableSpan the processor would have been given is built directly.
With another sampler, or to record an exception, the SDK's tracer does it.

The request's server span (`DirectSpan`), which stays open while work runs under it, is
recorded the same way. `common.tracing` installs the recorder when it configures the SDK.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes, _clean_attribute_value
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AnyValue, AttributeValue


@dataclass(frozen=True, slots=True)
class DirectRecorder:
    processor: SpanProcessor
    resource: Resource
    sampler: Sampler
    span_id: Callable[[], int]
    trace_id: Callable[[], int]
    random_trace_ids: bool


recorder: DirectRecorder | None = None
_scopes: dict[str, InstrumentationScope] = {}
_tracers: dict[str, trace.Tracer] = {}


def follows_parent(sampler: Any) -> bool:
    return (
        isinstance(sampler, ParentBased)
        and sampler._local_parent_sampled is ALWAYS_ON
        and sampler._remote_parent_sampled is ALWAYS_ON
    )


def recorder_install(provider: TracerProvider) -> None:
    """Records spans directly into `provider`'s processor when its sampler allows it. The
    processor and the sampler's delegates are private to the SDK (pinned in requirements): the
    gain that pays for it is tracing's cost per request, 12.1 % -> 4.1 % of the request thread's
    instructions (BENCHMARKS.md, issue 15)."""
    global recorder
    recorder = (
        DirectRecorder(
            processor=provider._active_span_processor,
            resource=provider.resource,
            sampler=provider.sampler,
            span_id=provider.id_generator.generate_span_id,
            trace_id=provider.id_generator.generate_trace_id,
            random_trace_ids=provider.id_generator.is_trace_id_random(),
        )
        if follows_parent(provider.sampler)
        else None
    )


def span_finished(
    name: str,
    *,
    start_ns: int,
    end_ns: int | None = None,
    attributes: dict[str, AttributeValue],
    parent: otel_context.Context | None = None,
    scope: str,
    kind: SpanKind = SpanKind.INTERNAL,
    error: BaseException | None = None,
) -> None:
    """Records a span that has ended (at `end_ns`, default now), as a child of the current span
    of `parent` (default: this thread's context) when that one is recorded; `error` is recorded
    as its exception and status. `attributes` becomes the span's: not to be changed after."""
    parent_span = trace.get_current_span(parent)
    if not parent_span.is_recording():
        return
    direct = recorder
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


class DirectSpan(trace.Span):
    """A span that stays open while work runs under it (the request's server span), recorded by
    the platform instead of the SDK's `_Span` under the same conditions as `span_finished`: its
    sampling decision is the sampler's, and at its end the processor gets the ReadableSpan the
    SDK would have made. Attributes set by others are cleaned as the SDK cleans them."""

    _MAX_EVENTS = 128  # the SDK's default limit

    def __init__(
        self,
        direct: DirectRecorder,
        name: str,
        *,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, AnyValue],
        scope: str,
    ) -> None:
        self.recorder = direct
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
        direct: DirectRecorder,
        name: str,
        *,
        parent: otel_context.Context | None,
        kind: SpanKind,
        attributes: Mapping[str, AnyValue],
        scope: str,
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
        self.recorder.processor.on_end(
            ReadableSpan(
                self._name,
                self._context,
                self._parent,
                self.recorder.resource,
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
