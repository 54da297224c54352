"""An OpenAI-compatible upstream that answers at once, for benchmarks and tests of the openai
backend. It is a bare ASGI app (run it with uvicorn): no framework, so that what is measured
behind it is the gateway, not this server.

Behaviour is chosen by the request:
* the completion is `max_tokens` words ("tok0 tok1 ..."), at most 64; usage counts one token
  per word and one per prompt word;
* `"stream": true` streams one word per chunk, with a usage chunk when
  `stream_options.include_usage` is set;
* a prompt or last message that contains `FAIL_500` answers 500; `SLOW_STREAM` sleeps 50 ms
  between chunks (`VERY_SLOW_STREAM`: 100 ms); `CUT_STREAM` drops the connection after 5 chunks (an upstream dying mid-way).

Behaviour of the whole server, for the router's tests: `FAKE_UPSTREAM_FAIL=500` answers every
completion 500; `FAKE_UPSTREAM_FAIL=cut` drops every completion's connection before its first
byte of content (a stream's headers are sent first). GET /v1/stats counts the completions asked.

A server of limited capacity, as a GPU server is, for the routing benchmark:
`FAKE_UPSTREAM_DELAY_MS` (each completion takes this long) with `FAKE_UPSTREAM_CONCURRENCY`
(completions served at once; the others wait their turn).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

Scope = dict[str, Any]

_FAIL = os.environ.get("FAKE_UPSTREAM_FAIL", "")
_DELAY_S = float(os.environ.get("FAKE_UPSTREAM_DELAY_MS", "0")) / 1000
_CONCURRENCY = int(os.environ.get("FAKE_UPSTREAM_CONCURRENCY", "0"))
_slots: asyncio.Semaphore | None = None
_asked = 0

_MODELS = json.dumps(
    {"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "bench"}]}
).encode()


async def _read_body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def _send_json(send: Any, status: int, payload: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _prompt_text(request: dict[str, Any]) -> str:
    if "messages" in request:
        return " ".join(str(m.get("content", "")) for m in request["messages"])
    return str(request.get("prompt", ""))


async def _occupy() -> None:
    """Takes one of the server's slots for `_DELAY_S` (waiting for one when all are taken)."""
    global _slots
    if not _CONCURRENCY:
        await asyncio.sleep(_DELAY_S)
        return
    if _slots is None:
        _slots = asyncio.Semaphore(_CONCURRENCY)
    async with _slots:
        await asyncio.sleep(_DELAY_S)


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    global _asked
    path = scope["path"]
    if scope["method"] == "GET" and path.endswith("/models"):
        await _send_json(send, 200, _MODELS)
        return
    if scope["method"] == "GET" and path.endswith("/stats"):
        await _send_json(send, 200, json.dumps({"completions": _asked}).encode())
        return
    if scope["method"] != "POST" or not path.endswith(("/chat/completions", "/completions")):
        await _send_json(send, 404, b'{"error": {"message": "not found", "type": "invalid_request_error"}}')
        return
    request = json.loads(await _read_body(receive))
    _asked += 1
    if _DELAY_S:
        await _occupy()
    prompt = _prompt_text(request)
    if _FAIL == "cut":
        if request.get("stream"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
        raise ConnectionAbortedError("the upstream died before answering (FAKE_UPSTREAM_FAIL=cut)")
    if "FAIL_500" in prompt or _FAIL == "500":
        await _send_json(send, 500, b'{"error": {"message": "upstream exploded", "type": "server_error"}}')
        return
    chat = path.endswith("/chat/completions")
    count = max(1, min(int(request.get("max_tokens") or request.get("max_completion_tokens") or 16), 64))
    words = [f"tok{i} " for i in range(count)]
    prompt_tokens = len(prompt.split()) or 1
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": count,
        "total_tokens": prompt_tokens + count,
    }
    ident, created, model = "cmpl-fake", int(time.time()), request.get("model", "fake-model")
    if not request.get("stream"):
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length", "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": "".join(words)}
        else:
            choice["text"] = "".join(words)
        body = {
            "id": ident,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": usage,
        }
        await _send_json(send, 200, json.dumps(body).encode())
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
    )
    slow = 0.1 if "VERY_SLOW_STREAM" in prompt else 0.05 if "SLOW_STREAM" in prompt else 0
    kind = "chat.completion.chunk" if chat else "text_completion"
    for index, word in enumerate(words):
        last = index == len(words) - 1
        choice = {"index": 0, "finish_reason": "length" if last else None}
        if chat:
            choice["delta"] = {"content": word}
        else:
            choice["text"] = word
        chunk = {"id": ident, "object": kind, "created": created, "model": model, "choices": [choice]}
        await send(
            {
                "type": "http.response.body",
                "body": b"data: " + json.dumps(chunk).encode() + b"\n\n",
                "more_body": True,
            }
        )
        if slow:
            await asyncio.sleep(slow)
        if "CUT_STREAM" in prompt and index == 4:
            raise ConnectionAbortedError("the upstream died mid-stream (CUT_STREAM)")
    if (request.get("stream_options") or {}).get("include_usage"):
        chunk = {
            "id": ident,
            "object": kind,
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage,
        }
        await send(
            {
                "type": "http.response.body",
                "body": b"data: " + json.dumps(chunk).encode() + b"\n\n",
                "more_body": True,
            }
        )
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
