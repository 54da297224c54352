"""Estimates the tokens a request will cost before it reaches inference, with tiktoken. The
estimate serves admission (tokens per minute, context length); what is billed comes later,
from the serving model's own count."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings

from inference.engine.tokens import tiktoken_encoding

# OpenAI's published accounting for chat models, as the openai backend counts (so that its
# exact count never exceeds admission's estimate): 3 tokens around every message besides its
# role and content, and 3 that prime the reply.
_TOKENS_PER_MESSAGE = 3
_TOKENS_TO_PRIME_REPLY = 3


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
        return " ".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
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
        prompt_tokens += _TOKENS_TO_PRIME_REPLY
        for message in messages:
            if isinstance(message, dict):
                role = message.get("role")
                prompt_tokens += _TOKENS_PER_MESSAGE + count_text(_content_text(message.get("content")))
                prompt_tokens += count_text(role) if isinstance(role, str) else 0
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
    if max_tokens is None:
        max_tokens = settings.DEFAULT_MAX_TOKENS if "input" not in body else 0
    elif not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 0 <= max_tokens < 2**31:
        return None  # not a request the view will take: its 400 answers it, not a limit
    return TokenEstimate(prompt_tokens=prompt_tokens, max_tokens=max_tokens)
