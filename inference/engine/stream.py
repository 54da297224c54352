"""The iterator that LLMHandler.stream() returns."""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Protocol

from inference.engine.types import GenerationResult, StreamChunk


class StreamSource(Protocol):
    def next_event(self) -> StreamChunk | GenerationResult:
        """Block until the next chunk or the final result; raise the generation's error."""

    def cancel(self) -> None:
        """Stop generating and release what the generation holds; called at most once."""

    def partial_result(self) -> GenerationResult:
        """What was generated so far, with finish_reason "cancelled" once cancelled."""


class GenerationStream(Iterator[StreamChunk | GenerationResult]):
    """Yields StreamChunks, then one GenerationResult.

    Closing it early (close(), leaving a `with` block, or dropping the last reference) cancels the
    generation and frees its batch slot; partial_result() then tells how many tokens were made,
    so that the caller can still account for them.
    """

    def __init__(self, source: StreamSource) -> None:
        self._source = source
        self._result: GenerationResult | None = None
        self._closed = False

    def __next__(self) -> StreamChunk | GenerationResult:
        if self._closed or self._result is not None:
            raise StopIteration
        try:
            event = self._source.next_event()
        except BaseException:
            self._closed = True
            raise
        if isinstance(event, GenerationResult):
            self._result = event
        return event

    def close(self) -> None:
        if not self._closed and self._result is None:
            self._source.cancel()
        self._closed = True

    def partial_result(self) -> GenerationResult:
        return self._result if self._result is not None else self._source.partial_result()

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
