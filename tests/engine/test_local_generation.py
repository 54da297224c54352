from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from inference.engine import (
    ContextLengthExceeded,
    GenerationRequest,
    GenerationResult,
    LLMHandler,
    SamplingParams,
    StreamChunk,
)
from tests.engine.conftest import CONTEXT_LENGTH, tiny_config, wait_until

T = TypeVar("T")

PROMPTS = [
    "the quick brown fox",
    "hello",
    "once upon a time there was a small",
    "café ünïcode",
]


def make_request(prompt: str, **params: object) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, params=SamplingParams(**params))  # type: ignore[arg-type]


def run_concurrently(calls: Sequence[Callable[[], T]]) -> list[T]:
    results: list[T | None] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(index: int) -> None:
        barrier.wait()
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(r is not None for r in results), "a request never completed"
    return [r for r in results if r is not None]


def reference_generate(
    model_dir: Path,
    prompts: list[str],
    *,
    temperature: float,
    top_p: float,
    max_tokens: int,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
) -> list[str]:
    """transformers' own generate(), one prompt at a time, prompt i seeded with i through the
    global RNG."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    config = GenerationConfig(
        do_sample=temperature > 0,
        temperature=temperature or None,
        top_p=top_p,
        top_k=top_k if temperature > 0 else 0,
        repetition_penalty=repetition_penalty,
        max_new_tokens=max_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    texts = []
    for seed, prompt in enumerate(prompts):
        ids = torch.tensor([tokenizer.encode(prompt)])
        torch.manual_seed(seed)
        output = model.generate(ids, generation_config=config)[0, ids.shape[1] :].tolist()
        if tokenizer.eos_token_id in output:
            output = output[: output.index(tokenizer.eos_token_id)]
        texts.append(str(tokenizer.decode(output, skip_special_tokens=True)))
    return texts


@pytest.mark.parametrize("architecture", ["qwen2", "llama"])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_batched_requests_match_transformers_generate(
    request: pytest.FixtureRequest, architecture: str, temperature: float
) -> None:
    model_dir = request.getfixturevalue({"qwen2": "tiny_model_dir", "llama": "tiny_llama_dir"}[architecture])
    llm = LLMHandler(tiny_config(model_dir))
    prompts = PROMPTS * 2

    results = run_concurrently(
        [
            lambda p=p, seed=seed: llm.generate(
                make_request(p, seed=seed, temperature=temperature, top_p=0.9, max_tokens=24)
            )
            for seed, p in enumerate(prompts)
        ]
    )

    expected = reference_generate(model_dir, prompts, temperature=temperature, top_p=0.9, max_tokens=24)
    assert [r.text for r in results] == expected
    llm.shutdown()


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_model_top_k_and_repetition_penalty_are_applied_like_transformers(
    tiny_model_with_defaults_dir: Path, temperature: float
) -> None:
    llm = LLMHandler(tiny_config(tiny_model_with_defaults_dir))
    prompts = PROMPTS * 2

    results = run_concurrently(
        [
            lambda p=p, seed=seed: llm.generate(
                make_request(p, seed=seed, temperature=temperature, top_p=0.95, max_tokens=24)
            )
            for seed, p in enumerate(prompts)
        ]
    )

    expected = reference_generate(
        tiny_model_with_defaults_dir,
        prompts,
        temperature=temperature,
        top_p=0.95,
        max_tokens=24,
        top_k=5,
        repetition_penalty=1.3,
    )
    unpenalized = reference_generate(
        tiny_model_with_defaults_dir, prompts, temperature=temperature, top_p=0.95, max_tokens=24
    )
    assert [r.text for r in results] == expected != unpenalized
    llm.shutdown()


def test_greedy_generation_is_deterministic(handler: LLMHandler) -> None:
    first = handler.generate(make_request("the quick brown", temperature=0, max_tokens=16))
    second = handler.generate(make_request("the quick brown", temperature=0, max_tokens=16))

    assert first == second


def test_seeded_request_samples_the_same_alone_and_in_a_batch(handler: LLMHandler) -> None:
    seeded = [
        make_request(p, temperature=1.0, seed=100 + i, max_tokens=32) for i, p in enumerate(PROMPTS * 2)
    ]

    alone = [handler.generate(r) for r in seeded]
    batched = run_concurrently([lambda r=r: handler.generate(r) for r in seeded])

    assert [r.text for r in batched] == [r.text for r in alone]
    assert len({r.text for r in alone}) > 1


def test_different_seeds_sample_differently(handler: LLMHandler) -> None:
    texts = {
        handler.generate(make_request("hello", temperature=1.0, seed=seed, max_tokens=16)).text
        for seed in range(4)
    }

    assert len(texts) > 1


def test_max_tokens_ends_generation_with_length(handler: LLMHandler) -> None:
    result = handler.generate(make_request("hello world", temperature=0, max_tokens=7))

    assert result.finish_reason == "length"
    assert result.completion_tokens == 7
    assert result.prompt_tokens == handler.count_tokens("hello world")


def test_eos_ends_generation_with_stop(
    handler: LLMHandler, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        logits = model(torch.tensor([tokenizer.encode("hello world")])).logits
    # Declare the token that greedy decoding picks first to be the end of sequence.
    monkeypatch.setattr(handler._backend, "_eos_ids", frozenset({int(logits[0, -1].argmax())}))

    result = handler.generate(make_request("hello world", temperature=0, max_tokens=10))

    assert (result.text, result.finish_reason, result.completion_tokens) == ("", "stop", 1)


def test_stop_string_truncates_output(handler: LLMHandler) -> None:
    full = handler.generate(make_request("once upon a time", temperature=0, max_tokens=40)).text
    stop = full[10:13]
    expected = full[: full.index(stop)]

    result = handler.generate(
        make_request("once upon a time", temperature=0, max_tokens=40, stop=(stop, "never seen"))
    )
    with handler.stream(
        make_request("once upon a time", temperature=0, max_tokens=40, stop=(stop,))
    ) as stream:
        events = list(stream)

    assert (result.text, result.finish_reason) == (expected, "stop")
    chunks = [e.text for e in events if isinstance(e, StreamChunk)]
    assert "".join(chunks) == expected
    assert events[-1] == result


def test_stream_chunks_add_up_to_the_result(handler: LLMHandler) -> None:
    with handler.stream(make_request("café", temperature=0.7, seed=5, max_tokens=30)) as stream:
        events = list(stream)

    *chunks, final = events
    assert all(isinstance(c, StreamChunk) and c.text for c in chunks)
    assert isinstance(final, GenerationResult)
    assert "".join(c.text for c in chunks if isinstance(c, StreamChunk)) == final.text
    assert final.completion_tokens == 30


def test_prompt_longer_than_context_is_refused(handler: LLMHandler) -> None:
    prompt = "the quick brown fox " * 200
    prompt_tokens = handler.count_tokens(prompt)

    with pytest.raises(ContextLengthExceeded) as caught:
        handler.generate(make_request(prompt, max_tokens=CONTEXT_LENGTH - prompt_tokens + 1))

    assert (caught.value.prompt_tokens, caught.value.context_length) == (prompt_tokens, CONTEXT_LENGTH)
    with pytest.raises(ContextLengthExceeded):
        handler.stream(make_request("hi", max_tokens=CONTEXT_LENGTH))


def test_chat_messages_use_the_chat_template(handler: LLMHandler) -> None:
    messages = ({"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"})
    rendered = (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    )
    chat = GenerationRequest(messages=messages, params=SamplingParams(temperature=0, max_tokens=5))

    result = handler.generate(chat)

    assert handler.count_prompt_tokens(chat) == result.prompt_tokens == handler.count_tokens(rendered)
    assert handler.count_tokens("<|im_start|>") == 1


def test_chat_without_template_renders_role_lines(tiny_model_dir: Path) -> None:
    from inference.engine.local import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = None
    chat = GenerationRequest(messages=({"role": "user", "content": "hello"},))

    assert render_prompt(request=chat, tokenizer=tokenizer) == tokenizer.encode("user: hello\nassistant:")


def test_closed_stream_frees_its_batch_slot(tiny_model_dir: Path) -> None:
    llm = LLMHandler(tiny_config(tiny_model_dir, max_batch_size=1))
    long_request = make_request("hello", max_tokens=2000)
    stream = llm.stream(long_request)
    next(stream)
    queued: list[GenerationResult] = []
    caller = threading.Thread(target=lambda: queued.append(llm.generate(make_request("hi", max_tokens=3))))
    caller.start()
    assert wait_until(lambda: llm.status().queued_requests == 1)

    stream.close()
    caller.join(timeout=30)

    assert [r.completion_tokens for r in queued] == [3]
    cut = stream.partial_result()
    assert cut.finish_reason == "cancelled"
    assert 1 <= cut.completion_tokens < 2000
    assert wait_until(lambda: llm.status().active_requests == 0)
    llm.shutdown()


def test_sixteen_threads_generating_at_once_all_complete(handler: LLMHandler) -> None:
    calls = [
        lambda i=i: handler.generate(make_request(PROMPTS[i % 4], seed=i, max_tokens=10 + i))
        for i in range(16)
    ]

    results = run_concurrently(calls)

    for i, result in enumerate(results):
        if result.finish_reason == "length":
            assert result.completion_tokens == 10 + i
        else:
            assert result.finish_reason == "stop" and result.completion_tokens <= 10 + i
    assert handler.status().active_requests == 0


def test_scheduler_error_fails_the_batch_and_keeps_serving(
    handler: LLMHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = handler._backend
    assert backend is not None
    real_forward = backend._model.forward  # type: ignore[attr-defined]
    calls = {"n": 0}

    def failing_once(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("device fell over")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(backend._model, "forward", failing_once)  # type: ignore[attr-defined]

    with pytest.raises(RuntimeError, match="device fell over"):
        handler.generate(make_request("hello", max_tokens=5))
    assert handler.generate(make_request("hello", max_tokens=5)).completion_tokens == 5


def test_a_slow_tokenization_holds_up_no_other_request(
    handler: LLMHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = handler.generate(make_request("hello", temperature=0, max_tokens=6))
    backend = handler._backend
    assert backend is not None
    tokenizer = backend._tokenizer  # type: ignore[attr-defined]
    slow_text = "a prompt that takes its time to tokenize"
    inside, release = threading.Event(), threading.Event()
    real_encode = tokenizer.encode

    def encode(text: str, **kwargs: object) -> list[int]:
        if text == slow_text:
            inside.set()
            release.wait(timeout=60)
        return list(real_encode(text, **kwargs))

    monkeypatch.setattr(tokenizer, "encode", encode)
    slow = threading.Thread(target=handler.count_tokens, args=(slow_text,))
    slow.start()
    try:
        assert inside.wait(timeout=10)
        others: list[GenerationResult] = []
        other = threading.Thread(
            target=lambda: others.append(handler.generate(make_request("hello", temperature=0, max_tokens=6)))
        )
        other.start()
        # Behind a lock shared by every tokenization, the prompt and the scheduler's decoding of
        # each token would both wait for the slow tokenization.
        other.join(timeout=30)
        assert others == [expected]
    finally:
        release.set()
        slow.join(timeout=30)


def test_a_tokenizer_saved_with_truncation_and_padding_is_shared_safely(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Every thread uses the one tokenizer without a lock, which is safe only while no call
    changes its truncation or padding (a change racing an encode raises "Already borrowed"):
    loading leaves it in the state that every call asks for, before any request can reach it."""
    model_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "tiny-truncating"))
    saved = AutoTokenizer.from_pretrained(model_dir)
    saved.backend_tokenizer.enable_truncation(4)
    saved.backend_tokenizer.enable_padding(length=16, pad_id=0, pad_token="<|endoftext|>")
    saved.save_pretrained(model_dir)
    texts = [" ".join(PROMPTS[: 1 + i % 4]) * (1 + i) for i in range(32)]
    expected = [len(saved.encode(t, add_special_tokens=False)) for t in texts]
    llm = LLMHandler(tiny_config(model_dir))
    llm.warm_up()
    assert wait_until(lambda: llm.status().state == "ready")
    backend = llm._backend
    assert backend is not None
    shared = backend._tokenizer.backend_tokenizer  # type: ignore[attr-defined]

    assert (shared.truncation, shared.padding) == (None, None)
    with llm.stream(make_request("hello", temperature=0, max_tokens=200)) as stream:
        counts = run_concurrently([lambda t=t: llm.count_tokens(t) for t in texts])
        assert isinstance(next(stream), StreamChunk)
    assert counts == expected
    llm.shutdown()


def test_a_long_stop_string_that_never_occurs_changes_nothing(handler: LLMHandler) -> None:
    request = make_request("once upon a time", temperature=0.9, seed=4, max_tokens=60)
    stop = "once upon a time " * 3000

    without = handler.generate(request)
    with handler.stream(
        make_request("once upon a time", temperature=0.9, seed=4, max_tokens=60, stop=(stop, "\x00" * 50_000))
    ) as stream:
        events = list(stream)

    *chunks, result = events
    assert isinstance(result, GenerationResult)
    assert (result.text, result.finish_reason, result.completion_tokens) == (
        without.text,
        without.finish_reason,
        without.completion_tokens,
    )
    assert "".join(c.text for c in chunks if isinstance(c, StreamChunk)) == without.text
