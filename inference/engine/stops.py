"""Stop strings found in text that arrives a piece at a time."""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Finds where the first stop string occurs in a text fed piece by piece.

    The scheduler thread feeds it every generated piece, so its cost per piece must not grow with
    the text or the stop strings: it runs one Knuth-Morris-Pratt automaton per stop string, whose
    state is the length of the longest tail of the text so far that begins that stop string. A
    new character costs amortized O(1) per stop string whatever their lengths, and the same state
    tells how much of the text to hold back from a stream because it could still grow into a stop
    string. Building it costs O(total length of the stop strings), on the caller's thread.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        self._stops = tuple(stops)
        self._fallbacks = [_fallbacks(s) for s in self._stops]
        self._matched = [0] * len(self._stops)
        self._length = 0  # of the text fed so far

    def feed(self, piece: str) -> int | None:
        """Take the next piece of the text; answer where the earliest-starting stop string that
        ends within it starts (an index into the whole text fed so far), or None."""
        earliest: int | None = None
        for n, (stop, fallbacks) in enumerate(zip(self._stops, self._fallbacks, strict=True)):
            matched = self._matched[n]
            for offset, char in enumerate(piece):
                while matched and stop[matched] != char:
                    matched = fallbacks[matched - 1]
                if stop[matched] == char:
                    matched += 1
                if matched == len(stop):
                    start = self._length + offset + 1 - len(stop)
                    earliest = start if earliest is None else min(earliest, start)
                    matched = fallbacks[matched - 1]
            self._matched[n] = matched
        self._length += len(piece)
        return earliest

    def pending(self) -> int:
        """Length of the longest tail of the text fed so far that could still grow into a stop
        string."""
        return max(self._matched, default=0)


def _fallbacks(stop: str) -> list[int]:
    """KMP's failure function: for each prefix of `stop`, the length of its longest proper
    prefix that is also its suffix."""
    fallbacks = [0] * len(stop)
    matched = 0
    for i in range(1, len(stop)):
        while matched and stop[i] != stop[matched]:
            matched = fallbacks[matched - 1]
        if stop[i] == stop[matched]:
            matched += 1
        fallbacks[i] = matched
    return fallbacks
