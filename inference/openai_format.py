"""Bodies and stream chunks of the OpenAI API, shared by the gateway's /v1 routes and the
standalone inference server. No Django import."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any, Protocol


def new_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(
    *, id: str, model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_chunk(
    *,
    id: str,
    model: str,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    usage_body: dict[str, int] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage_body is not None:
        body["usage"] = usage_body
    return body


def completion(
    *, id: str, model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def completion_chunk(
    *,
    id: str,
    model: str,
    text: str | None,
    finish_reason: str | None = None,
    usage_body: dict[str, int] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": []
        if text is None
        else [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage_body is not None:
        body["usage"] = usage_body
    return body


def model_card(model: str, owned_by: str = "llm-platform") -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": owned_by}


def sse(data: dict[str, Any] | str, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n".encode()


class Finished(Protocol):
    """The end of a generation, as the engine's result or the gateway's outcome tell it."""

    @property
    def finish_reason(self) -> str: ...

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def completion_tokens(self) -> int: ...


def stream_body(
    *, chat: bool, id: str, model: str, include_usage: bool, events: Iterable[str | Finished]
) -> Iterator[bytes]:
    """The server-sent events of a streamed (chat) completion: text deltas, a final chunk with
    the finish reason, the usage chunk when asked for, then `[DONE]`."""
    if chat:
        yield sse(chat_chunk(id=id, model=model, delta={"role": "assistant", "content": ""}))
    for event in events:
        if isinstance(event, str):
            if chat:
                yield sse(chat_chunk(id=id, model=model, delta={"content": event}))
            else:
                yield sse(completion_chunk(id=id, model=model, text=event))
            continue
        if chat:
            yield sse(chat_chunk(id=id, model=model, delta={}, finish_reason=event.finish_reason))
        else:
            yield sse(completion_chunk(id=id, model=model, text="", finish_reason=event.finish_reason))
        if include_usage:
            totals = usage(event.prompt_tokens, event.completion_tokens)
            if chat:
                yield sse(chat_chunk(id=id, model=model, delta=None, usage_body=totals))
            else:
                yield sse(completion_chunk(id=id, model=model, text=None, usage_body=totals))
    yield sse("[DONE]")
