from __future__ import annotations

import threading

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from inference.engine.embeddings import Embedder, default_embedding_model_path

SENTENCES = [
    "How do I reset my password?",
    "  The quick brown fox jumps over the lazy dog.  ",
    "Les données sont stockées en Europe.",
    "hello " * 300,
    "",
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def test_embeddings_match_sentence_transformers(embedder: Embedder) -> None:
    reference = SentenceTransformer(default_embedding_model_path(), device="cpu").encode(SENTENCES)

    vectors = embedder.embed(SENTENCES, batch_size=2)

    assert vectors.dtype == np.float32
    assert vectors.shape == (len(SENTENCES), embedder.dim) == (5, 384)
    cosine = (vectors * reference).sum(axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.999
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_batching_does_not_change_vectors(embedder: Embedder) -> None:
    together = embedder.embed(SENTENCES)
    one_by_one = np.stack([embedder.embed([s])[0] for s in SENTENCES])

    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_long_text_is_truncated_to_max_tokens(embedder: Embedder) -> None:
    long_text = "hello " * 300

    assert embedder.max_tokens == 256
    assert embedder.count_tokens(long_text) == 302
    assert embedder.count_tokens("hello") == 3
    np.testing.assert_allclose(embedder.embed([long_text]), embedder.embed(["hello " * 254]), atol=1e-6)


def test_empty_input_gives_an_empty_matrix(embedder: Embedder) -> None:
    assert embedder.embed([]).shape == (0, 384)


def test_concurrent_embedding_gives_the_same_vectors(embedder: Embedder) -> None:
    short = SENTENCES[:3]
    expected = embedder.embed(short)
    results: list[np.ndarray] = []

    def work() -> None:
        for _ in range(3):
            results.append(embedder.embed(short))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 9
    for vectors in results:
        np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_tokenizer_is_the_models_word_piece_tokenizer(embedder: Embedder) -> None:
    assert embedder.tokenizer.tokenize("Hello world") == ["hello", "world"]
