"""The engine's OpenTelemetry spans for one sequence: its queue wait, its prefill and its
decode, children of whatever span the request was submitted under.

The engine uses the OpenTelemetry API only, never the SDK: with no SDK installed (tracing off)
the submitting thread's span is not recording, `SequenceTrace.start` answers None and nothing
more is done; the same for a request that sampling left out. The scheduler thread times each phase itself and records the spans with those times, since
one forward pass serves many sequences' phases at once.
"""

from __future__ import annotations

import time

from opentelemetry import context as otel_context
from opentelemetry import trace

_tracer = trace.get_tracer("inference.engine")


class SequenceTrace:
    def __init__(self, *, parent: otel_context.Context, model: str, prompt_tokens: int) -> None:
        self._parent = parent
        self._attributes: dict[str, int | str] = {"llm.model": model, "llm.prompt_tokens": prompt_tokens}
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
        self, name: str, *, start_ns: int, end_ns: int, attributes: dict[str, int | str] | None = None
    ) -> None:
        span = _tracer.start_span(
            name,
            context=self._parent,
            start_time=start_ns,
            attributes={**self._attributes, **(attributes or {})},
        )
        span.end(end_time=end_ns)

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
