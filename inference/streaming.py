"""Server-sent events for the generation routes (generate/, rag/ and the OpenAI routes)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.http import StreamingHttpResponse

from common.errors import APIError, error_body
from inference import openai_format
from inference.services import GenerationOutcome, GenerationSession


def sse_response(events: Iterator[bytes], *, session: GenerationSession) -> StreamingHttpResponse:
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    # The server closes the response however it ends, even when the client left before the body
    # started and the generator never ran: the reservation is settled then.
    response._resource_closers.append(session.close)  # type: ignore[attr-defined]  # Django API without stubs
    return response


def stream_error_event(exc: Exception) -> bytes:
    if isinstance(exc, APIError):
        body = error_body(
            message=exc.message, type=exc.type or "server_error", param=exc.param, code=exc.code
        )
    else:
        body = error_body(message="The generation failed.", type="server_error", code="internal_error")
    return openai_format.sse(body, event="error")


def generate_events(session: GenerationSession, *, extra: dict[str, Any] | None = None) -> Iterator[bytes]:
    """generate/'s events: `token` deltas, then one `done` with the whole body (and `extra`)."""
    try:
        for event in session.events():
            if isinstance(event, GenerationOutcome):
                yield openai_format.sse({**event.generate_body(), **(extra or {})}, event="done")
            else:
                yield openai_format.sse({"text": event}, event="token")
    except Exception as exc:
        yield stream_error_event(exc)
