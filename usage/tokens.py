"""Estimates the tokens a request will cost before it reaches inference, with tiktoken. The
estimate serves admission (tokens per minute, context length); what is billed comes later,
from the serving model's own count."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from inference.engine.tokens import tiktoken_encoding

# Chat formats add a few tokens around every message (role markers, separators).
_TOKENS_PER_MESSAGE = 4


@dataclass(frozen=True)
class TokenEstimate:
    prompt_tokens: int
    max_tokens: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.max_tokens


def count_text(text: str) -> int:
    return len(tiktoken_encoding(settings.TOKEN_ESTIMATE_ENCODING).encode(text, disallowed_special=()))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def estimate_body(body: dict[str, Any]) -> TokenEstimate | None:
    """The estimate for a generation-like JSON body (`prompt`, `messages` or `input`), or None
    when the body asks for no generation."""
    prompt_tokens = 0
    found = False
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompt_tokens += count_text(prompt)
        found = True
    elif isinstance(prompt, list):
        prompt_tokens += sum(count_text(p) for p in prompt if isinstance(p, str))
        found = True
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                prompt_tokens += _TOKENS_PER_MESSAGE + count_text(_content_text(message.get("content")))
        found = True
    text_input = body.get("input")
    if isinstance(text_input, str):
        prompt_tokens += count_text(text_input)
        found = True
    elif isinstance(text_input, list):
        prompt_tokens += sum(count_text(t) for t in text_input if isinstance(t, str))
        found = True
    if not found:
        return None
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
        max_tokens = settings.DEFAULT_MAX_TOKENS if "input" not in body else 0
    return TokenEstimate(prompt_tokens=prompt_tokens, max_tokens=max_tokens)


def estimate_request_body(raw: bytes) -> TokenEstimate | None:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None  # the view answers the invalid JSON with a 400
    return estimate_body(body) if isinstance(body, dict) else None
