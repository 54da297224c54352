"""Split document text into chunks that fit the embedding model's input exactly.

Sizes are counted in the embedding model's own word pieces, because that is what it truncates:
a chunk sized in words or characters can be silently cut by the encoder and its tail never
embedded. Every chunk is re-tokenized together with its title prefix and special tokens before it
is returned, so `Chunk.token_count <= max_tokens` holds for any fast tokenizer, not only for ones
whose tokenization happens to be additive.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# A title is context, not content: cap it so a pathological title cannot starve the chunk.
MAX_TITLE_CHARS = 120
# Chunks must hold at least this many content tokens once the title and special tokens are paid.
MIN_CONTENT_TOKENS = 16

# Strength of a cut before a token; higher is a better place to split.
_HEADING = 5
_PARAGRAPH = 4
_SENTENCE = 3
_LINE = 2
_WORD = 1
_SENTENCE_ENDS = frozenset(map(ord, ".!?…。！？"))
_CLOSERS = frozenset(map(ord, "\"')]}’”»"))
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")
# Segment size for parallel tokenization: large enough that per-call overhead is negligible.
_SEGMENT_CHARS = 32_768


@dataclass(frozen=True)
class Chunk:
    """A slice `text == source[start_char:end_char]` of the document text.

    `token_count` is the length of the encoder input for this chunk: title prefix, chunk text
    and special tokens, exactly as `chunk_embedding_text` produces it.
    """

    position: int
    text: str
    token_count: int
    start_char: int
    end_char: int


def chunk_embedding_text(*, chunk: Chunk, title: str | None) -> str:
    """The exact text to embed for `chunk`; `title` must be the one given to `chunk_text`."""
    prefix = _title_prefix(title)
    return f"{prefix}\n\n{chunk.text}" if prefix else chunk.text


def chunk_text(
    *,
    text: str,
    title: str | None,
    tokenizer: PreTrainedTokenizerBase,
    max_tokens: int = 256,
    overlap_tokens: int = 32,
) -> list[Chunk]:
    """Cut `text` into overlapping chunks of at most `max_tokens` encoder tokens each.

    Cuts go, in order of preference, before a Markdown heading, at a blank line, after a
    sentence, at a line break, between words, and only as a last resort inside a word; a cut
    never leaves a chunk less than half full unless the text ends. Consecutive chunks share
    about `overlap_tokens` tokens, started at the cleanest boundary available. The overlap is
    reduced when the title leaves too little room for it.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("chunk_text needs a fast (Rust) tokenizer for its offset mapping")
    if overlap_tokens < 0:
        raise ValueError("overlap_tokens must not be negative")
    prefix = _title_prefix(title)
    title_tokens = len(_token_ids(tokenizer, prefix)) if prefix else 0
    budget = max_tokens - tokenizer.num_special_tokens_to_add(pair=False) - title_tokens
    if budget < MIN_CONTENT_TOKENS:
        raise ValueError(
            f"max_tokens={max_tokens} leaves {budget} tokens for content after the title and "
            f"special tokens; at least {MIN_CONTENT_TOKENS} are needed"
        )
    overlap = min(overlap_tokens, budget // 2 - 1)

    starts, ends = _tokenize_with_offsets(text=text, tokenizer=tokenizer)
    token_total = len(starts)
    if token_total == 0:
        return []
    strength = _cut_strength(text=text, starts=starts, ends=ends)

    # Optimistic pass: plan every chunk from the document's tokenization, then verify all of them
    # in one batch call. Only if a chunk re-tokenizes longer than planned (a cut inside a word, or
    # a tokenizer whose merges cross whitespace) is the rest re-planned one verified chunk at a
    # time, which costs a tokenizer call per chunk.
    spans: list[tuple[int, int]] = []
    first = 0
    while True:
        stop = _choose_stop(strength=strength, first=first, budget=budget, total=token_total)
        spans.append((first, stop))
        if stop >= token_total:
            break
        first = _choose_overlap_start(strength=strength, first=first, stop=stop, overlap=overlap)
    planned = [
        _chunk_slice(text=text, starts=starts, ends=ends, first=first, stop=stop, position=position)
        for position, (first, stop) in enumerate(spans)
    ]
    counts = _encoder_lengths(
        tokenizer, [chunk_embedding_text(chunk=chunk, title=prefix) for chunk in planned]
    )
    chunks: list[Chunk] = []
    for chunk, count in zip(planned, counts, strict=True):
        if count > max_tokens:
            break
        chunks.append(dataclasses.replace(chunk, token_count=count))
    if len(chunks) == len(planned):
        return chunks

    first = spans[len(chunks)][0]
    while True:
        stop = _choose_stop(strength=strength, first=first, budget=budget, total=token_total)
        chunk, stop = _verified_chunk(
            text=text,
            prefix=prefix,
            tokenizer=tokenizer,
            starts=starts,
            ends=ends,
            first=first,
            stop=stop,
            max_tokens=max_tokens,
            position=len(chunks),
        )
        chunks.append(chunk)
        if stop >= token_total:
            return chunks
        first = _choose_overlap_start(strength=strength, first=first, stop=stop, overlap=overlap)


def _title_prefix(title: str | None) -> str:
    if title is None:
        return ""
    collapsed = " ".join(title.split())
    if len(collapsed) <= MAX_TITLE_CHARS:
        return collapsed
    cut = collapsed[:MAX_TITLE_CHARS]
    space = cut.rfind(" ")
    return cut[:space] if space > MAX_TITLE_CHARS // 2 else cut


def _tokenize_with_offsets(
    *, text: str, tokenizer: PreTrainedTokenizerBase
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Start and end character offsets of every token of `text`, specials excluded.

    The text is tokenized as segments cut at blank lines so the Rust tokenizer can spread a
    large document over several cores; any difference this makes at segment edges is caught by
    the verification in `chunk_text`.
    """
    segment_starts = [0]
    for match in _BLANK_LINE.finditer(text):
        if match.end() - segment_starts[-1] >= _SEGMENT_CHARS:
            segment_starts.append(match.end())
    segment_ends = [*segment_starts[1:], len(text)]
    segments = [text[begin:end] for begin, end in zip(segment_starts, segment_ends, strict=True)]
    encoded = tokenizer(
        segments,
        add_special_tokens=False,
        return_offsets_mapping=True,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,
    )
    shifted = [
        np.asarray(offsets, dtype=np.int64).reshape(-1, 2) + begin
        for begin, offsets in zip(segment_starts, encoded["offset_mapping"], strict=True)
    ]
    offsets = np.concatenate(shifted) if shifted else np.zeros((0, 2), dtype=np.int64)
    return offsets[:, 0], offsets[:, 1]


def _encoder_lengths(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[int]:
    """Encoder input length of each text, special tokens included."""
    if not texts:
        return []
    encoded = tokenizer(texts, return_attention_mask=False, return_token_type_ids=False, verbose=False)
    return [len(ids) for ids in encoded["input_ids"]]


def _chunk_slice(
    *,
    text: str,
    starts: npt.NDArray[np.int64],
    ends: npt.NDArray[np.int64],
    first: int,
    stop: int,
    position: int,
) -> Chunk:
    start_char = int(starts[first])
    end_char = int(ends[stop - 1])
    return Chunk(
        position=position,
        text=text[start_char:end_char],
        token_count=0,
        start_char=start_char,
        end_char=end_char,
    )


def _token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    ids: list[int] = tokenizer(
        text,
        add_special_tokens=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,
    )["input_ids"]
    return ids


def _cut_strength(
    *, text: str, starts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64]
) -> npt.NDArray[np.int8]:
    """`strength[i]` rates a cut between token i-1 and token i (index 0 is unused).

    Vectorized over the whole document: a per-token Python loop would dominate the cost of
    chunking a large file.
    """
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    gap_start = ends[:-1]
    gap_end = starts[1:]
    has_gap = gap_end > gap_start

    def any_within_gap(positions: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        found: npt.NDArray[np.bool_] = np.searchsorted(positions, gap_end) > np.searchsorted(
            positions, gap_start
        )
        return found

    blank_lines = np.fromiter((match.start() for match in _BLANK_LINE.finditer(text)), dtype=np.int64)
    newlines = np.flatnonzero(codepoints == ord("\n")).astype(np.int64)
    paragraph = has_gap & any_within_gap(blank_lines)
    line = has_gap & any_within_gap(newlines)

    last_char = codepoints[np.maximum(gap_start - 1, 0)]
    char_before_last = codepoints[np.maximum(gap_start - 2, 0)]
    ends_sentence = np.isin(last_char, list(_SENTENCE_ENDS)) | (
        np.isin(last_char, list(_CLOSERS)) & np.isin(char_before_last, list(_SENTENCE_ENDS))
    )
    sentence = has_gap & ends_sentence
    first_char = codepoints[np.minimum(gap_end, len(codepoints) - 1)]
    heading = paragraph & (first_char == ord("#"))

    strength = np.zeros(len(starts), dtype=np.int8)
    strength[1:] = np.select(
        [heading, paragraph, sentence, line, has_gap],
        [_HEADING, _PARAGRAPH, _SENTENCE, _LINE, _WORD],
        default=0,
    )
    return strength


def _choose_stop(*, strength: npt.NDArray[np.int8], first: int, budget: int, total: int) -> int:
    """The end (exclusive) of the chunk starting at token `first`."""
    if first + budget >= total:
        return total
    earliest = first + max(1, budget // 2)
    latest = first + budget
    window = strength[earliest : latest + 1]
    best = window.max()
    # The last of the best cuts keeps chunks as full as the boundary allows.
    return earliest + int(np.flatnonzero(window == best)[-1])


def _choose_overlap_start(*, strength: npt.NDArray[np.int8], first: int, stop: int, overlap: int) -> int:
    """Where the next chunk starts: `overlap/2` to `overlap` tokens before `stop`."""
    if overlap == 0:
        return stop
    earliest = max(stop - overlap, first + 1)
    latest = max(stop - overlap // 2, earliest)
    window = strength[earliest : latest + 1]
    best = window.max()
    if best == 0:
        return earliest
    # The first of the best boundaries gives the longest overlap at that boundary quality.
    return earliest + int(np.flatnonzero(window == best)[0])


def _verified_chunk(
    *,
    text: str,
    prefix: str,
    tokenizer: PreTrainedTokenizerBase,
    starts: npt.NDArray[np.int64],
    ends: npt.NDArray[np.int64],
    first: int,
    stop: int,
    max_tokens: int,
    position: int,
) -> tuple[Chunk, int]:
    """Re-tokenize the candidate chunk as it will be embedded and shrink it until it fits.

    Slicing the document's tokenization is exact for WordPiece at word boundaries, but a cut
    inside a word, or a tokenizer whose merges cross whitespace, can re-tokenize longer.
    """
    while True:
        candidate = _chunk_slice(
            text=text, starts=starts, ends=ends, first=first, stop=stop, position=position
        )
        embedded = chunk_embedding_text(chunk=candidate, title=prefix)
        (token_count,) = _encoder_lengths(tokenizer, [embedded])
        if token_count <= max_tokens or stop - first <= 1:
            break
        stop = max(first + 1, stop - (token_count - max_tokens))
    if token_count > max_tokens:
        raise ValueError(
            f"the token at character {candidate.start_char} alone exceeds max_tokens={max_tokens}"
        )
    return dataclasses.replace(candidate, token_count=token_count), stop
