from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from inference.engine import EngineConfig, LLMHandler

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, café ünïcode and emoji 🙂",
    "once upon a time there was a small language model",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONTEXT_LENGTH = 2048


def build_tiny_model(
    path: Path, *, architecture: str = "qwen2", generation_defaults: dict[str, object] | None = None
) -> Path:
    """A 2-layer model with random weights and a byte-level BPE tokenizer trained on CORPUS.

    "qwen2" has no BOS token, like Qwen; "llama" prepends <s> to every encoding, like the
    shipped default model. `generation_defaults` go to its generation_config.json.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        CORPUS * 20,
        trainers.BpeTrainer(
            vocab_size=320,
            special_tokens=["<|endoftext|>", "<s>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    if architecture == "llama":
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
        )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        bos_token="<s>" if architecture == "llama" else None,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    wrapped.chat_template = CHAT_TEMPLATE
    wrapped.save_pretrained(path)
    config_class, model_class = {
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "llama": (LlamaConfig, LlamaForCausalLM),
    }[architecture]
    torch.manual_seed(0)
    config = config_class(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT_LENGTH,
        # Wide weights make the next-token distribution peaked, as a trained model's is.
        initializer_range=0.3,
        bos_token_id=1,
        eos_token_id=0,
    )
    model = model_class(config)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=0, **(generation_defaults or {}))
    model.save_pretrained(path)
    return path


def poison_token_embeddings(source: Path, dest: Path, *, token_ids: list[int]) -> Path:
    """A copy of the model at `source` whose input embeddings of `token_ids` are NaN: any request
    that feeds one of those tokens gets NaN scores from then on, as from a half-precision model
    that overflowed on its input, while the other rows of its batch are untouched (the output
    layer is not tied to the embeddings)."""
    model = AutoModelForCausalLM.from_pretrained(source)
    assert not model.config.tie_word_embeddings
    with torch.no_grad():
        model.get_input_embeddings().weight[token_ids] = float("nan")
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(source).save_pretrained(dest)
    return dest


def wait_until(predicate: Callable[[], bool], *, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen")


def tiny_config(model_dir: Path, **overrides: object) -> EngineConfig:
    # One intra-op thread: the test machine's two cores are shared with other processes, and
    # a tiny model gains nothing from more.
    fields: dict[str, object] = {"model": str(model_dir), "device": "cpu", "torch_threads": 1}
    return EngineConfig(**{**fields, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", architecture="llama")


@pytest.fixture(scope="session")
def tiny_model_with_defaults_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like the shipped default model, it asks for top-k and a repetition penalty."""
    return build_tiny_model(
        tmp_path_factory.mktemp("models") / "tiny-llama-defaults",
        architecture="llama",
        generation_defaults={"do_sample": True, "top_k": 5, "repetition_penalty": 1.3},
    )


@pytest.fixture(scope="session")
def handler(tiny_model_dir: Path) -> Iterator[LLMHandler]:
    """A loaded local handler shared by the tests that do not change its configuration."""
    llm = LLMHandler(tiny_config(tiny_model_dir))
    llm.warm_up()
    yield llm
    llm.shutdown()
