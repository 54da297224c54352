from __future__ import annotations

import random
import string
import time

import pytest
from transformers import PreTrainedTokenizerBase

from knowledge.lib.chunking import MAX_TITLE_CHARS, Chunk, chunk_embedding_text, chunk_text

TITLE = "Python standard library reference"


def encoder_length(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    return len(tokenizer(text)["input_ids"])


def overlap_tokens(tokenizer: PreTrainedTokenizerBase, earlier: Chunk, later: Chunk) -> int:
    shared = earlier.text[later.start_char - earlier.start_char :]
    return len(tokenizer(shared, add_special_tokens=False)["input_ids"])


@pytest.fixture(scope="module")
def docs_chunks(stdlib_docs_text: str, minilm_tokenizer: PreTrainedTokenizerBase) -> list[Chunk]:
    return chunk_text(text=stdlib_docs_text, title=TITLE, tokenizer=minilm_tokenizer)


def test_no_chunk_exceeds_max_tokens_once_embedded_with_title_and_specials(
    docs_chunks: list[Chunk], minilm_tokenizer: PreTrainedTokenizerBase
) -> None:
    assert len(docs_chunks) > 1000
    for chunk in docs_chunks:
        embedded = chunk_embedding_text(chunk=chunk, title=TITLE)
        length = encoder_length(minilm_tokenizer, embedded)
        assert length == chunk.token_count
        assert length <= 256


def test_chunks_are_mostly_full(docs_chunks: list[Chunk]) -> None:
    counts = sorted(chunk.token_count for chunk in docs_chunks)

    assert counts[len(counts) // 2] >= 180


def test_chunks_are_exact_slices_in_order(docs_chunks: list[Chunk], stdlib_docs_text: str) -> None:
    for position, chunk in enumerate(docs_chunks):
        assert chunk.position == position
        assert stdlib_docs_text[chunk.start_char : chunk.end_char] == chunk.text
    starts = [chunk.start_char for chunk in docs_chunks]
    assert starts == sorted(starts)


def test_chunks_cover_every_word_of_the_text(docs_chunks: list[Chunk], stdlib_docs_text: str) -> None:
    covered_until = 0
    for chunk in docs_chunks:
        gap = stdlib_docs_text[covered_until : chunk.start_char]
        assert gap.strip() == ""
        covered_until = max(covered_until, chunk.end_char)
    assert stdlib_docs_text[covered_until:].strip() == ""


def test_consecutive_chunks_overlap_by_at_most_the_overlap(
    docs_chunks: list[Chunk], minilm_tokenizer: PreTrainedTokenizerBase
) -> None:
    overlaps = [
        overlap_tokens(minilm_tokenizer, earlier, later)
        for earlier, later in zip(docs_chunks, docs_chunks[1:], strict=False)
    ]

    assert all(1 <= overlap <= 32 for overlap in overlaps)
    assert sorted(overlaps)[len(overlaps) // 2] >= 16


def test_no_overlap_when_asked_for_none(minilm_tokenizer: PreTrainedTokenizerBase) -> None:
    text = " ".join(f"Sentence number {i} is here." for i in range(400))

    chunks = chunk_text(text=text, title=None, tokenizer=minilm_tokenizer, overlap_tokens=0)

    assert len(chunks) > 3
    for earlier, later in zip(chunks, chunks[1:], strict=False):
        assert later.start_char >= earlier.end_char


@pytest.mark.parametrize("overlap", [0, 32])
def test_chunks_end_at_paragraph_boundaries_when_available(
    minilm_tokenizer: PreTrainedTokenizerBase, overlap: int
) -> None:
    paragraphs = [f"Paragraph {i}. " + " ".join(f"word{i}x{j}" for j in range(25)) + "." for i in range(40)]
    text = "\n\n".join(paragraphs)

    chunks = chunk_text(
        text=text, title=None, tokenizer=minilm_tokenizer, max_tokens=256, overlap_tokens=overlap
    )

    assert len(chunks) > 3
    for chunk in chunks:
        assert chunk.end_char == len(text) or text[chunk.end_char : chunk.end_char + 2] == "\n\n"
        if overlap == 0:
            assert chunk.text.startswith("Paragraph ")


def test_cuts_fall_after_sentences_within_a_long_paragraph(
    minilm_tokenizer: PreTrainedTokenizerBase,
) -> None:
    text = " ".join(
        f"The {i}th sentence talks about topic {i} at some length, then stops." for i in range(300)
    )

    chunks = chunk_text(text=text, title=None, tokenizer=minilm_tokenizer, max_tokens=128)

    assert len(chunks) > 5
    assert all(chunk.text.endswith("stops.") for chunk in chunks)
    assert all(chunk.text.startswith("The ") for chunk in chunks)


def test_a_word_longer_than_a_chunk_is_cut_inside_and_still_fits(
    minilm_tokenizer: PreTrainedTokenizerBase,
) -> None:
    # BERT turns words over 100 characters into a single [UNK], so the longest word that can
    # overflow a chunk is just under that: random letters give about one piece per 2 characters.
    rng = random.Random(7)
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(99))
    text = f"Here is a key: {word} and the end."
    assert encoder_length(minilm_tokenizer, word) > 30

    chunks = chunk_text(text=text, title="Keys", tokenizer=minilm_tokenizer, max_tokens=24)

    assert len(chunks) >= 3
    for chunk in chunks:
        embedded = chunk_embedding_text(chunk=chunk, title="Keys")
        assert encoder_length(minilm_tokenizer, embedded) == chunk.token_count <= 24
    assert chunks[-1].text.endswith("and the end.")


def test_short_text_is_a_single_chunk(minilm_tokenizer: PreTrainedTokenizerBase) -> None:
    chunks = chunk_text(text="  Hello world.  ", title="Greeting", tokenizer=minilm_tokenizer)

    assert chunks == [Chunk(position=0, text="Hello world.", token_count=6, start_char=2, end_char=14)]


def test_empty_text_has_no_chunks(minilm_tokenizer: PreTrainedTokenizerBase) -> None:
    assert chunk_text(text=" \n\n ", title="T", tokenizer=minilm_tokenizer) == []


def test_embedding_text_is_title_then_chunk(minilm_tokenizer: PreTrainedTokenizerBase) -> None:
    (chunk,) = chunk_text(text="Body text.", title="  My   title ", tokenizer=minilm_tokenizer)

    assert chunk_embedding_text(chunk=chunk, title="  My   title ") == "My title\n\nBody text."
    assert chunk_embedding_text(chunk=chunk, title=None) == "Body text."


def test_a_long_title_is_capped_and_its_tokens_are_paid_for(
    minilm_tokenizer: PreTrainedTokenizerBase,
) -> None:
    title = "Annual report " * 100
    text = " ".join(f"Fact {i} is true." for i in range(500))

    chunks = chunk_text(text=text, title=title, tokenizer=minilm_tokenizer, max_tokens=128)

    embedded = chunk_embedding_text(chunk=chunks[0], title=title)
    assert len(embedded.split("\n\n")[0]) <= MAX_TITLE_CHARS
    for chunk in chunks:
        length = encoder_length(minilm_tokenizer, chunk_embedding_text(chunk=chunk, title=title))
        assert length <= 128


def test_max_tokens_too_small_for_the_title_is_rejected(
    minilm_tokenizer: PreTrainedTokenizerBase,
) -> None:
    with pytest.raises(ValueError, match="leaves"):
        chunk_text(
            text="x " * 100,
            title="a b c d e f g h i j k l m n o p",
            tokenizer=minilm_tokenizer,
            max_tokens=24,
        )


def test_negative_overlap_is_rejected(minilm_tokenizer: PreTrainedTokenizerBase) -> None:
    with pytest.raises(ValueError, match="overlap"):
        chunk_text(text="x", title=None, tokenizer=minilm_tokenizer, overlap_tokens=-1)


def test_limit_holds_for_a_tokenizer_whose_merges_cross_whitespace(
    whitespace_merging_tokenizer: PreTrainedTokenizerBase,
) -> None:
    text = "\n\n".join(
        "the cat sat on the mat. the dog sat on the log. the end of the story." for _ in range(200)
    )

    chunks = chunk_text(
        text=text,
        title="the story",
        tokenizer=whitespace_merging_tokenizer,
        max_tokens=40,
        overlap_tokens=8,
    )

    assert len(chunks) > 10
    for chunk in chunks:
        embedded = chunk_embedding_text(chunk=chunk, title="the story")
        assert encoder_length(whitespace_merging_tokenizer, embedded) == chunk.token_count <= 40
        assert text[chunk.start_char : chunk.end_char] == chunk.text
    assert chunks[-1].end_char == len(text)


def test_a_megabyte_of_documentation_chunks_within_seconds(
    stdlib_docs_text: str, minilm_tokenizer: PreTrainedTokenizerBase
) -> None:
    assert len(stdlib_docs_text) > 900_000

    started = time.process_time()
    chunk_text(text=stdlib_docs_text, title=TITLE, tokenizer=minilm_tokenizer)
    cpu_seconds = time.process_time() - started

    # CPU time, not wall time, so that other jobs on a shared machine cannot fail the test: it
    # is about 1.2 s here, and anything quadratic would take minutes.
    assert cpu_seconds < 5.0
