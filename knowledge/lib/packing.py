"""Fitting ranked passages into a prompt the model's context can take."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Where a passage may be cut: after a sentence's end (its closing quotes or brackets included)
# followed by a space, after a full-width end, or at a line break (a list item, a heading).
_SENTENCE_END = re.compile(r"""[.!?…]["')\]}’”»]*(?=\s)|[。！？]|\n""")


@dataclass(frozen=True)
class PackedPassage:
    rank: int  # its index among the passages offered
    text: str  # the passage, or its leading sentences when trimmed
    used_tokens: int  # what it adds to the prompt, its separators included
    trimmed: bool


@dataclass(frozen=True)
class Packing:
    passages: list[PackedPassage]
    base_tokens: int  # the prompt without any passage
    prompt_tokens: int  # the prompt with the packed passages: base + their used_tokens


def sentence_cuts(text: str) -> list[int]:
    """Lengths of the prefixes of `text` that end at a sentence or line boundary (trailing
    space dropped), shortest first; the whole text is not one of them."""
    whole = len(text.rstrip())
    cuts = {len(text[: match.end()].rstrip()) for match in _SENTENCE_END.finditer(text)}
    return sorted(cut for cut in cuts if 0 < cut < whole)


def pack_passages(
    *, passages: Sequence[str], count: Callable[[list[str]], int], limit: int | None
) -> Packing:
    """Adds passages by rank while the prompt, as `count` measures it with the passages so far,
    stays within `limit` tokens (None: no limit). The first passage that does not fit whole is
    cut to its longest run of leading sentences that does, and none after it is added.

    Each passage's `used_tokens` is what it added to the count, so they sum exactly to the
    prompt's tokens beyond the base whatever the tokenizer does at the seams. `count` is
    assumed to grow with its texts (a longer prefix never counts fewer tokens)."""
    texts: list[str] = []
    packed: list[PackedPassage] = []
    base = total = count([])
    for rank, passage in enumerate(passages):
        tokens = count([*texts, passage])
        text, trimmed = passage, False
        if limit is not None and tokens > limit:
            fitted = _longest_fitting_prefix(passage, count=lambda part: count([*texts, part]), limit=limit)
            if fitted is None:
                break
            (text, tokens), trimmed = fitted, True
        packed.append(PackedPassage(rank=rank, text=text, used_tokens=tokens - total, trimmed=trimmed))
        texts.append(text)
        total = tokens
        if trimmed:
            break
    return Packing(passages=packed, base_tokens=base, prompt_tokens=total)


def _longest_fitting_prefix(
    passage: str, *, count: Callable[[str], int], limit: int
) -> tuple[str, int] | None:
    """(prefix, count(prefix)) for the longest prefix ending at a sentence boundary whose count is
    within `limit`, by bisection over the boundaries; None when not even the first sentence fits."""
    cuts = sentence_cuts(passage)
    best: tuple[str, int] | None = None
    low, high = 0, len(cuts) - 1
    while low <= high:
        middle = (low + high) // 2
        prefix = passage[: cuts[middle]]
        tokens = count(prefix)
        if tokens <= limit:
            best, low = (prefix, tokens), middle + 1
        else:
            high = middle - 1
    return best
