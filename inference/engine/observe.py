"""What the engine tells whoever watches it (metrics, traces), without knowing who that is.

The engine imports nothing of the platform: the serving layer passes an `EngineObserver` to
`LLMHandler` and turns the calls into Prometheus metrics (`inference/metrics.py`). The calls
come from the scheduler thread and from request threads, sometimes under the engine's lock, so
an observer must be quick and must not call back into the engine.
"""

from __future__ import annotations

from typing import Protocol


class EngineObserver(Protocol):
    def first_token(self, *, model: str, seconds: float) -> None:
        """A generation produced its first token, `seconds` after it was submitted."""

    def generation_finished(self, *, model: str, seconds: float, completion_tokens: int) -> None:
        """A generation ended normally (stop or length), `seconds` after it was submitted."""

    def queue_depth(self, *, depth: int) -> None:
        """Requests now waiting for a place in the running batch."""

    def batch_step(self, *, size: int) -> None:
        """One decode step ran over `size` sequences."""


class NoObserver:
    """The default: nobody is watching."""

    def first_token(self, *, model: str, seconds: float) -> None:
        pass

    def generation_finished(self, *, model: str, seconds: float, completion_tokens: int) -> None:
        pass

    def queue_depth(self, *, depth: int) -> None:
        pass

    def batch_step(self, *, size: int) -> None:
        pass
