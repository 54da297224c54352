"""The engine's OpenTelemetry spans for one sequence: its queue wait, its prefill and its
decode, children of whatever span the request was submitted under.

The engine uses the OpenTelemetry API only, never the SDK: with no SDK installed (tracing off)
the submitting thread's span is not recording, `SequenceTrace.start` answers None and nothing
more is done; the same for a request that sampling left out. The scheduler thread times each phase itself and records the spans with those times, since
one forward pass serves many sequences' phases at once.

A span is recorded once it has ended, by `span_record`: through the API's tracer, unless the
application installs a cheaper recorder (`recorder_install`; the platform's records the span
directly into the SDK's processor, common/tracing.py).
"""

from __future__ import annotations

import time
from typing import Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from opentelemetry.util.types import AttributeValue

_tracer = trace.get_tracer("inference.engine")


class SpanRecorder(Protocol):
    def __call__(
        self,
        name: str,
        *,
        start_ns: int,
        end_ns: int,
        attributes: dict[str, AttributeValue],
        parent: otel_context.Context | None = None,
        error: BaseException | None = None,
    ) -> None: ...


def _api_record(
    name: str,
    *,
    start_ns: int,
    end_ns: int,
    attributes: dict[str, AttributeValue],
    parent: otel_context.Context | None = None,
    error: BaseException | None = None,
) -> None:
    span = _tracer.start_span(name, context=parent, start_time=start_ns, attributes=attributes)
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end(end_time=end_ns)


# Records a span that has ended, child of `parent`'s current span (default: this thread's).
span_record: SpanRecorder = _api_record


def recorder_install(recorder: SpanRecorder | None) -> None:
    """How the engine's finished spans are recorded from now on (None: the API's tracer)."""
    global span_record
    span_record = recorder or _api_record


def recording() -> bool:
    """Whether this thread's current span is recorded (else its children would not be)."""
    return trace.get_current_span().is_recording()


class SequenceTrace:
    def __init__(self, *, parent: otel_context.Context, model: str, prompt_tokens: int) -> None:
        self._parent = parent
        self._attributes: dict[str, AttributeValue] = {"llm.model": model, "llm.prompt_tokens": prompt_tokens}
        self.submitted_ns = time.time_ns()
        self.first_token_ns: int | None = None

    @classmethod
    def start(cls, *, model: str, prompt_tokens: int) -> SequenceTrace | None:
        """On the submitting thread: a trace under its current span, if that one is recorded."""
        parent = otel_context.get_current()
        # Not recorded (no SDK, or the request sampled out): its children would not be either.
        if not trace.get_current_span(parent).is_recording():
            return None
        return cls(parent=parent, model=model, prompt_tokens=prompt_tokens)

    def _record(
        self, name: str, *, start_ns: int, end_ns: int, attributes: dict[str, AttributeValue] | None = None
    ) -> None:
        span_record(
            name,
            parent=self._parent,
            start_ns=start_ns,
            end_ns=end_ns,
            attributes={**self._attributes, **(attributes or {})},
        )

    def admitted(self, *, at_ns: int) -> None:
        self._record("engine.queue", start_ns=self.submitted_ns, end_ns=at_ns)

    def prefilled(self, *, start_ns: int, end_ns: int, batch_rows: int) -> None:
        self.first_token_ns = end_ns
        self._record(
            "engine.prefill", start_ns=start_ns, end_ns=end_ns, attributes={"llm.batch_rows": batch_rows}
        )

    def finished(self, *, at_ns: int, completion_tokens: int, finish_reason: str) -> None:
        self._record(
            "engine.decode",
            start_ns=self.first_token_ns or at_ns,
            end_ns=at_ns,
            attributes={"llm.completion_tokens": completion_tokens, "llm.finish_reason": finish_reason},
        )
