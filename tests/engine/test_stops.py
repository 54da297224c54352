from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from inference.engine import SamplingParams
from inference.engine.sequence import SequenceState
from inference.engine.stops import StopMatcher


def first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def could_still_stop(text: str, stops: tuple[str, ...]) -> int:
    """The longest tail of `text` that begins a stop string, by brute force."""
    return max(
        (n for s in stops for n in range(1, min(len(s) - 1, len(text)) + 1) if s.startswith(text[-n:])),
        default=0,
    )


def test_matches_brute_force_on_random_texts_cut_at_random() -> None:
    rng = random.Random(0)
    for _ in range(3000):
        stops = tuple("".join(rng.choices("ab", k=rng.randint(1, 6))) for _ in range(rng.randint(1, 3)))
        text = "".join(rng.choices("abc", k=rng.randint(0, 30)))
        matcher = StopMatcher(stops)
        fed = ""
        while True:
            piece = text[len(fed) : len(fed) + rng.randint(0, 4)]
            stop_at = matcher.feed(piece)
            fed += piece
            expected = first_stop(fed, stops)
            if expected is not None:
                assert stop_at == expected, (stops, fed)
                break
            assert stop_at is None, (stops, fed)
            assert matcher.pending() == could_still_stop(fed, stops), (stops, fed)
            if len(fed) == len(text):
                break


def test_the_earliest_starting_stop_wins_within_one_piece() -> None:
    matcher = StopMatcher(("cd", "abcdef", "zz"))
    assert matcher.feed("xxab") is None
    assert matcher.pending() == 2

    assert matcher.feed("cdefgh") == 2


def test_overlapping_starts_are_not_missed() -> None:
    matcher = StopMatcher(("aab",))

    assert [matcher.feed(c) for c in "aaab"] == [None, None, None, 1]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> object:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


SENTENCE = "the quick brown fox jumps over the lazy dog "


@pytest.mark.parametrize(
    ("stop", "streamed"),
    [
        # No tail of the text begins it: everything is streamed as it comes.
        ("\x00" * 200_000, len(SENTENCE) * 1000),
        # The whole text begins it: nothing can be streamed yet.
        (SENTENCE * 4000 + "\x00", 0),
    ],
)
def test_a_long_stop_string_costs_the_scheduler_no_more_per_token(
    tokenizer: object, stop: str, streamed: int
) -> None:
    """The scheduler thread checks every generated piece against the stop strings: a stop
    string longer than the text must not cost O(text length^2) per token."""
    token_ids = tokenizer.encode(SENTENCE) * 1000  # type: ignore[attr-defined]
    seq = SequenceState(
        prompt_ids=[0],
        params=SamplingParams(max_tokens=len(token_ids) + 1, stop=(stop,)),
        model_name="tiny",
        device="cpu",
        tokenizer=tokenizer,  # type: ignore[arg-type]
        retire=lambda seq: None,
        stream_chunks=True,
    )
    started = time.monotonic()
    for n, token_id in enumerate(token_ids):
        seq.accept(token_id, eos_ids=frozenset({0}))
        if n % 500 == 0:
            assert time.monotonic() - started < 20, f"{n} tokens took too long"

    assert not seq.done
    assert seq._text == SENTENCE * 1000
    assert len(seq.partial_result().text) == streamed
