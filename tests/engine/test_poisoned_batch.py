"""A request that cannot be served fails alone: the other requests of its batch finish exactly
as they would have without it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from inference.engine import (
    GenerationFailed,
    GenerationRequest,
    GenerationResult,
    GenerationStream,
    LLMHandler,
)
from tests.engine.conftest import poison_token_embeddings, tiny_config
from tests.engine.test_local_generation import make_request

NORMAL = make_request("the quick brown fox", temperature=0.8, seed=11, max_tokens=16)


@contextmanager
def admitted_together(llm: LLMHandler) -> Iterator[None]:
    """Requests submitted inside are prefilled in the same step and then decoded in the same
    batch: the scheduler admits waiting requests only under the lock held here."""
    backend = llm._backend
    assert backend is not None, "the model is not loaded yet"
    with backend._cv:  # type: ignore[attr-defined]
        yield


def final(stream: GenerationStream) -> GenerationResult:
    *_, last = list(stream)
    assert isinstance(last, GenerationResult)
    return last


def test_a_tiny_temperature_decodes_greedily_next_to_a_sampled_request(handler: LLMHandler) -> None:
    alone = handler.generate(NORMAL)
    greedy = handler.generate(make_request("hello", temperature=0, max_tokens=16))

    with admitted_together(handler):
        tiny = handler.stream(make_request("hello", temperature=1e-300, max_tokens=16))
        normal = handler.stream(NORMAL)

    assert final(tiny) == greedy
    assert final(normal) == alone


@dataclass(frozen=True)
class Poisoned:
    llm: LLMHandler
    # Fails at its prefill: its prompt holds a poisoned token.
    in_prompt: GenerationRequest
    # Fails at a decode step: the third token it generates is a poisoned one.
    generated: GenerationRequest


@pytest.fixture(scope="module")
def poisoned(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Poisoned]:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    in_prompt_token = tokenizer.encode("hello")[-1]
    prompt_ids = tokenizer.encode("once upon a time")
    with torch.no_grad():
        continuation = model.generate(
            torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=3, pad_token_id=tokenizer.eos_token_id
        )[0, len(prompt_ids) :].tolist()
    generated_token = continuation[2]
    harmless = tokenizer.encode(NORMAL.prompt) + prompt_ids + continuation[:2]
    assert in_prompt_token not in harmless and generated_token not in harmless
    model_dir = poison_token_embeddings(
        tiny_model_dir,
        tmp_path_factory.mktemp("models") / "tiny-qwen-poisoned",
        token_ids=[in_prompt_token, generated_token],
    )
    llm = LLMHandler(tiny_config(model_dir))
    yield Poisoned(
        llm=llm,
        in_prompt=make_request("hello", temperature=0.8, seed=3, max_tokens=16),
        generated=make_request("once upon a time", temperature=0, max_tokens=16),
    )
    llm.shutdown()


@pytest.mark.parametrize(("case", "tokens_before_failing"), [("in_prompt", 0), ("generated", 3)])
def test_a_poisoned_request_fails_alone_and_its_batch_finishes_as_without_it(
    poisoned: Poisoned, case: str, tokens_before_failing: int
) -> None:
    llm = poisoned.llm
    alone = llm.generate(NORMAL)
    assert alone.completion_tokens > tokens_before_failing + 1, "NORMAL must outlive the poisoned request"

    with admitted_together(llm):
        bad = llm.stream(getattr(poisoned, case))
        good = llm.stream(NORMAL)

    with pytest.raises(GenerationFailed, match="not finite"):
        list(bad)
    assert bad.partial_result().completion_tokens == tokens_before_failing
    assert final(good) == alone
    assert llm.generate(NORMAL) == alone
    assert llm.status().active_requests == 0


def test_a_prefill_that_fails_on_one_prompt_fails_only_its_request(
    handler: LLMHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone = handler.generate(NORMAL)
    backend = handler._backend
    assert backend is not None
    model = backend._model  # type: ignore[attr-defined]
    culprit = backend._tokenizer.encode("café ünïcode")[-1]  # type: ignore[attr-defined]
    assert culprit not in backend._tokenizer.encode(NORMAL.prompt)  # type: ignore[attr-defined]
    real_forward = model.forward

    def forward(*args: object, input_ids: torch.Tensor, **kwargs: object) -> object:
        # Like running out of memory on one long prompt: only prefills (many positions) fail.
        if input_ids.shape[1] > 1 and bool((input_ids == culprit).any()):
            raise RuntimeError("out of memory on that prompt")
        return real_forward(*args, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(model, "forward", forward)

    with admitted_together(handler):
        bad = handler.stream(make_request("café ünïcode", max_tokens=8))
        good = handler.stream(NORMAL)

    with pytest.raises(RuntimeError, match="out of memory on that prompt"):
        list(bad)
    assert final(good) == alone


def test_a_prompt_past_the_models_embeddings_fails_before_reaching_a_batch(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    model_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "tiny-larger-tokenizer"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.add_tokens(["<beyond>"])
    tokenizer.save_pretrained(model_dir)
    llm = LLMHandler(tiny_config(model_dir))
    alone = llm.generate(NORMAL)

    with admitted_together(llm):
        with pytest.raises(GenerationFailed, match="only has embeddings for ids below 320"):
            llm.stream(make_request("hello <beyond>", max_tokens=8))
        good = llm.stream(NORMAL)

    assert final(good) == alone
    llm.shutdown()
