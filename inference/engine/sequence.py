"""One request's generation as the scheduler thread runs it: its tokens, their text (decoded
incrementally), its stop strings, and the events that its caller reads."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Sequence

import torch
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from inference.engine.spans import SequenceTrace
from inference.engine.stops import StopMatcher
from inference.engine.types import GenerationResult, SamplingParams, StreamChunk


def decode_tokens(tokenizer: PreTrainedTokenizerBase, token_ids: Sequence[int]) -> str:
    # No clean-up: it rewrites spaces around punctuation, which would break incremental decoding.
    return str(
        tokenizer.decode(list(token_ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
    )


class SequenceState:
    """One request's generation state; the scheduler thread is its only writer."""

    def __init__(
        self,
        *,
        prompt_ids: list[int],
        params: SamplingParams,
        model_name: str,
        device: str,
        tokenizer: PreTrainedTokenizerBase,
        retire: Callable[[SequenceState], None],
        stream_chunks: bool,
    ) -> None:
        self.prompt_ids = prompt_ids
        self.params = params
        self.submitted_at = time.perf_counter()
        # Where its engine spans go (inference/engine/spans.py): None when nobody records them.
        self.trace: SequenceTrace | None = None
        self.generator = torch.Generator(device=device)
        if params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(params.seed)
        self.cancelled = False
        self.finish_reason: str | None = None
        self.seen: torch.Tensor | None = None  # filled by the scheduler when a penalty needs it
        self._model_name = model_name
        self._tokenizer = tokenizer
        # Built here, on the submitting thread: its set-up is linear in the stop strings' length.
        self._stops = StopMatcher(params.stop) if params.stop else None
        self._retire = retire
        # Blocking callers only want the result; skipping chunks spares them a wake-up per token.
        self._stream_chunks = stream_chunks
        self._events: queue.SimpleQueue[StreamChunk | GenerationResult | Exception] = queue.SimpleQueue()
        self._completion_tokens = 0
        self._token_ids: list[int] = []  # the completion's tokens without the final EOS
        self._text = ""
        self._emitted = 0
        # Incremental detokenization offsets: text is decoded from a short window of tokens and
        # only extended once it no longer ends in an incomplete UTF-8 sequence.
        self._prefix_offset = 0
        self._read_offset = 0

    # Consumer side (any thread).

    def next_event(self) -> StreamChunk | GenerationResult:
        event = self._events.get()
        if isinstance(event, Exception):
            raise event
        return event

    def cancel(self) -> None:
        self.cancelled = True
        self._retire(self)

    def partial_result(self) -> GenerationResult:
        return GenerationResult(
            text=self._text[: self._emitted],
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=self._completion_tokens,
            finish_reason=self.finish_reason or "cancelled",
            model=self._model_name,
        )

    # Scheduler side.

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.cancelled

    @property
    def completion_tokens(self) -> int:
        return self._completion_tokens

    def accept(self, token_id: int, *, eos_ids: frozenset[int]) -> None:
        self._completion_tokens += 1
        if token_id in eos_ids:
            self._finish("stop")
            return
        self._token_ids.append(token_id)
        piece = self._decode_delta()
        self._text += piece
        if self._stops is not None:
            stop_at = self._stops.feed(piece)
            if stop_at is not None:
                self._text = self._text[:stop_at]
                self._finish("stop", flush=False)
                return
        if self._completion_tokens >= self.params.max_tokens:
            self._finish("length")
            return
        self._emit(len(self._text) - (self._stops.pending() if self._stops else 0))

    def fail(self, error: Exception) -> None:
        self.finish_reason = "error"
        self._retire(self)
        self._events.put(error)

    def _finish(self, reason: str, *, flush: bool = True) -> None:
        if flush:
            self._text += self._decode_rest()
        self.finish_reason = reason
        self._retire(self)
        self._emit(len(self._text))
        self._events.put(
            GenerationResult(
                text=self._text,
                prompt_tokens=len(self.prompt_ids),
                completion_tokens=self._completion_tokens,
                finish_reason=reason,
                model=self._model_name,
            )
        )

    def _emit(self, end: int) -> None:
        if end > self._emitted:
            if self._stream_chunks:
                self._events.put(StreamChunk(text=self._text[self._emitted : end]))
            self._emitted = end

    def _decode_delta(self) -> str:
        seen = decode_tokens(self._tokenizer, self._token_ids[self._prefix_offset : self._read_offset])
        current = decode_tokens(self._tokenizer, self._token_ids[self._prefix_offset :])
        if len(current) > len(seen) and not current.endswith("\ufffd"):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._token_ids)
            return current[len(seen) :]
        return ""

    def _decode_rest(self) -> str:
        seen = decode_tokens(self._tokenizer, self._token_ids[self._prefix_offset : self._read_offset])
        current = decode_tokens(self._tokenizer, self._token_ids[self._prefix_offset :])
        return current[len(seen) :]
