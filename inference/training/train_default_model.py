"""Train the toy causal language model shipped in ``inference/default_model/``.

The model exists so that the inference engine, its tests and the demos have a real
Hugging Face checkpoint to load without any download. It learns only from text that
ships with the Python interpreter: the language-reference topics of ``pydoc_data``
and the docstrings of a fixed list of standard-library modules. Part of the topics is
also shaped as chat turns so that the chat template yields documentation-like answers.

Every source of randomness is seeded and every collection is iterated in a fixed order,
so the defaults reproduce the shipped checkpoint (on the same Python and torch versions):

    .venv/bin/python -m inference.training.train_default_model

The run is sized by ``--steps``, not by time, so that a busy machine changes how long it
takes but not what it produces: the shipped run took 17 minutes on two CPU cores shared
with other jobs, and goes several times faster on idle cores. ``--max-minutes`` is only a
guard that stops early and still saves, in which case the result no longer matches the
shipped model.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import os
import random
import re
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Rayon (the tokenizers thread pool) reads this before its first use; two threads keep
# the run on its share of the machine.
os.environ.setdefault("RAYON_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parent.parent / "default_model"

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
SYSTEM_TOKEN = "<|system|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN)

# Each turn is "<|role|>\n{content}</s>"; the prompt for generation ends with
# "<|assistant|>\n". Unknown roles are rendered as user turns rather than rejected so that
# any OpenAI-style message list can be formatted. transformers renders templates with
# trim_blocks, which drops a newline that follows a block tag, so each newline sits before
# the next tag instead.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}" + SYSTEM_TOKEN + "\n"
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT_TOKEN + "\n"
    "{% else %}" + USER_TOKEN + "\n"
    "{% endif %}"
    "{{ message['content'] }}{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT_TOKEN + "\n"
    "{% endif %}"
)

# Standard-library modules whose docstrings complement the language reference. The list
# is explicit (not discovered) so the corpus does not depend on what happens to be
# installed, and it leaves out modules with import side effects (turtle, this, antigravity).
DOCSTRING_MODULES = (
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "calendar", "cmath",
    "collections", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "enum", "fnmatch", "fractions", "functools", "glob", "hashlib", "heapq",
    "hmac", "html", "http", "inspect", "io", "ipaddress", "itertools", "json", "logging",
    "math", "operator", "os", "pathlib", "pickle", "pprint", "queue", "random", "re",
    "secrets", "shlex", "shutil", "socket", "sqlite3", "statistics", "string", "struct",
    "subprocess", "sys", "tempfile", "textwrap", "threading", "time", "timeit", "traceback",
    "types", "typing", "unittest", "uuid", "weakref", "zipfile", "zlib",
)  # fmt: skip

# Topic titles are formal ("Class definitions"); people ask in everyday words, in English
# or French. These aliases teach the model that both name the same section.
TOPIC_ALIASES: dict[str, tuple[str, ...]] = {
    "class": ("Python classes", "classes in Python", "les classes Python"),
    "function": ("Python functions", "how to define a function", "les fonctions Python"),
    "for": ("for loops", "the for loop in Python", "les boucles for"),
    "while": ("while loops", "les boucles while"),
    "if": ("if statements", "conditions in Python", "les conditions en Python"),
    "try": ("exception handling", "try and except", "la gestion des exceptions"),
    "exceptions": ("Python exceptions", "les exceptions Python"),
    "import": ("importing modules", "les imports en Python"),
    "lambda": ("lambda functions", "les fonctions lambda"),
    "with": ("context managers", "the with statement"),
    "typesmapping": ("Python dictionaries", "dict", "les dictionnaires Python"),
    "typesseq": ("Python lists and tuples", "lists", "les listes Python"),
    "string-methods": ("string methods", "Python strings", "les chaines de caracteres"),
    "yield": ("generators", "les generateurs Python"),
    "async": ("async and await", "coroutines in Python"),
    "specialnames": ("dunder methods", "magic methods", "les methodes speciales"),
}

ENGLISH_PROMPTS = (
    "Explain {subject}",
    "Explain {subject}.",
    "What is {subject}?",
    "Tell me about {subject}.",
    "Describe {subject} in Python.",
    "How does {subject} work in Python?",
)
FRENCH_PROMPTS = ("Explique {subject}", "Explique-moi {subject}.", "Qu'est-ce que {subject} ?")

_HEADING_UNDERLINE = re.compile(r"^([*=\-~^])\1{2,}$")
_MEMORY_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


@dataclass(frozen=True)
class Corpus:
    raw_documents: tuple[str, ...]
    chat_pairs: tuple[tuple[str, str], ...]

    @property
    def character_count(self) -> int:
        raw = sum(len(text) for text in self.raw_documents)
        return raw + sum(len(prompt) + len(answer) for prompt, answer in self.chat_pairs)


@dataclass(frozen=True)
class TrainingSettings:
    seed: int
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    max_position_embeddings: int
    sequence_length: int
    batch_size: int
    steps: int
    warmup_steps: int
    learning_rate: float
    min_learning_rate: float
    weight_decay: float
    chat_repeats: int
    max_minutes: float
    log_every: int


@dataclass(frozen=True)
class TrainingResult:
    steps_done: int
    tokens_trained: int
    final_loss: float
    eval_loss: float
    parameter_count: int
    wall_seconds: float
    stopped_by_time_budget: bool


# --------------------------------------------------------------------------- corpus


def _topic_sections(*, text: str) -> list[tuple[str, str]]:
    """Split a pydoc topic into (title, body) pairs using its reST-style underlines."""
    lines = text.splitlines()
    sections: list[tuple[str, str]] = []
    title = ""
    body: list[str] = []
    index = 0
    while index < len(lines):
        is_heading = (
            index + 1 < len(lines)
            and lines[index].strip() != ""
            and _HEADING_UNDERLINE.match(lines[index + 1].strip()) is not None
        )
        if is_heading:
            if title and "".join(body).strip():
                sections.append((title, "\n".join(body).strip()))
            title = lines[index].strip()
            body = []
            index += 2
            continue
        body.append(lines[index])
        index += 1
    if title and "".join(body).strip():
        sections.append((title, "\n".join(body).strip()))
    return sections


def _answer_excerpt(*, body: str, max_chars: int) -> str:
    """The first paragraphs of ``body`` that fit in ``max_chars`` (at least one paragraph)."""
    paragraphs = [p for p in body.split("\n\n") if p.strip()]
    kept: list[str] = []
    length = 0
    for paragraph in paragraphs:
        if kept and length + len(paragraph) > max_chars:
            break
        kept.append(paragraph)
        length += len(paragraph) + 2
    excerpt = "\n\n".join(kept)
    return excerpt[:max_chars].rstrip()


def _signature_text(*, obj: object) -> str:
    try:
        signature = str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    # Default values may print as "<object object at 0x7f...>", which changes every run.
    return _MEMORY_ADDRESS.sub("", signature)


def _belongs_to(*, obj: object, module_name: str) -> bool:
    owner = getattr(obj, "__module__", None)
    if not isinstance(owner, str):
        return False
    # C accelerators ("_bisect", "_json") document the public module's functions.
    return owner in (module_name, "_" + module_name) or owner.startswith(module_name + ".")


def _module_document(*, module_name: str) -> tuple[str, list[tuple[str, str]]]:
    """A pydoc-like text for one module, plus (name, docstring) pairs for chat turns."""
    module = importlib.import_module(module_name)
    parts = [f"Module {module_name}\n"]
    entries: list[tuple[str, str]] = []
    module_doc = inspect.getdoc(module)
    if module_doc:
        parts.append(module_doc)
        entries.append((f"the {module_name} module", module_doc))
    for name in sorted(vars(module)):
        if name.startswith("_"):
            continue
        obj = vars(module)[name]
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if not _belongs_to(obj=obj, module_name=module_name):
            continue
        # obj.__doc__ rather than inspect.getdoc: a class without its own docstring would
        # otherwise repeat its base class's ("Common base class for all exceptions").
        doc = inspect.cleandoc(obj.__doc__) if isinstance(obj.__doc__, str) else ""
        if len(doc) < 40:
            continue
        qualified = f"{module_name}.{name}"
        kind = "class " if inspect.isclass(obj) else ""
        parts.append(f"{kind}{qualified}{_signature_text(obj=obj)}\n\n{doc}")
        entries.append((qualified, doc))
        if not inspect.isclass(obj):
            continue
        for attribute in sorted(vars(obj)):
            if attribute.startswith("_"):
                continue
            member = vars(obj)[attribute]
            if not (inspect.isroutine(member) or isinstance(member, property)):
                continue
            member_doc = member.__doc__
            if not member_doc or len(member_doc) < 40:
                continue
            signature = "" if isinstance(member, property) else _signature_text(obj=member)
            parts.append(f"{qualified}.{attribute}{signature}\n\n{inspect.cleandoc(member_doc)}")
    return "\n\n".join(parts), entries


def build_corpus(*, seed: int, chat_repeats: int) -> Corpus:
    from pydoc_data.topics import topics

    rng = random.Random(seed)
    raw_documents: list[str] = []
    chat_pairs: list[tuple[str, str]] = []
    seen_topic_texts: set[str] = set()

    def add_chat(*, subjects: Sequence[str], answer: str, repeats: int) -> None:
        for subject in subjects:
            for _ in range(repeats):
                templates = FRENCH_PROMPTS if rng.random() < 0.25 else ENGLISH_PROMPTS
                prompt = rng.choice(templates).format(subject=subject)
                chat_pairs.append((prompt, answer))

    for key in sorted(topics):
        text = topics[key].strip()
        # Several keys ("if" and "else") point at the same section.
        if text in seen_topic_texts:
            continue
        seen_topic_texts.add(text)
        raw_documents.append(text)
        sections = _topic_sections(text=text)
        for position, (title, body) in enumerate(sections):
            answer = _answer_excerpt(body=body, max_chars=900)
            # "Explain the "for" statement" reads better than "Explain The ...".
            subject = "the" + title[3:] if title.startswith("The ") else title
            subjects: list[str] = [subject]
            if position == 0:
                subjects.extend(TOPIC_ALIASES.get(key, ()))
            add_chat(subjects=subjects, answer=answer, repeats=chat_repeats)

    for module_name in DOCSTRING_MODULES:
        with warnings.catch_warnings():
            # Reading typing.io and typing.re warns that they are deprecated; the text is
            # still wanted.
            warnings.simplefilter("ignore", DeprecationWarning)
            document, entries = _module_document(module_name=module_name)
        raw_documents.append(document)
        for subject, doc in entries:
            add_chat(subjects=[subject], answer=_answer_excerpt(body=doc, max_chars=700), repeats=1)

    return Corpus(raw_documents=tuple(raw_documents), chat_pairs=tuple(chat_pairs))


def format_chat(*, prompt: str, answer: str) -> str:
    """The same text as the chat template renders for a user turn and an assistant reply."""
    return f"{USER_TOKEN}\n{prompt}{EOS_TOKEN}{ASSISTANT_TOKEN}\n{answer}{EOS_TOKEN}"


# ------------------------------------------------------------------------ tokenizer


def train_tokenizer(*, corpus: Corpus, vocab_size: int, max_length: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = list(corpus.raw_documents) + [f"{p}\n{a}" for p, a in corpus.chat_pairs]
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    # Plain prompts start with <s> like every training document; the chat template writes
    # <s> itself and transformers encodes it without special tokens, so it is never doubled.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN],
        model_max_length=max_length,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def encode_documents(*, corpus: Corpus, tokenizer: PreTrainedTokenizerFast) -> list[list[int]]:
    bos_id = tokenizer.bos_token_id
    eos_id = tokenizer.eos_token_id
    assert bos_id is not None and eos_id is not None
    texts = list(corpus.raw_documents)
    texts += [format_chat(prompt=p, answer=a) for p, a in corpus.chat_pairs]
    # The backend tokenizer, because the transformers wrapper warns about every document
    # longer than the model's context, which is expected before packing.
    encoded = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    documents: list[list[int]] = []
    for text, encoding in zip(texts, encoded, strict=True):
        ids = encoding.ids
        # Chat texts already end with </s>; raw documents get their end marker here.
        suffix = [] if text.endswith(EOS_TOKEN) else [eos_id]
        documents.append([bos_id, *ids, *suffix])
    return documents


def _check_chat_template_matches_training_format(*, tokenizer: PreTrainedTokenizerFast) -> None:
    """Fail before training if chat prompts would not look like the chat training data."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "question"}, {"role": "assistant", "content": "answer"}],
        tokenize=False,
    )
    expected = BOS_TOKEN + format_chat(prompt="question", answer="answer")
    if rendered != expected:
        raise RuntimeError(f"chat template renders {rendered!r}, training uses {expected!r}")


# ----------------------------------------------------------------------------- data


def packed_batches(
    *, documents: Sequence[Sequence[int]], sequence_length: int, batch_size: int, seed: int
) -> Iterator[torch.Tensor]:
    """Endless batches of packed rows; each epoch reshuffles the documents with its own seed."""
    epoch = 0
    carry: list[int] = []
    rows: list[list[int]] = []
    while True:
        order = list(range(len(documents)))
        random.Random(seed * 1000 + epoch).shuffle(order)
        for index in order:
            carry.extend(documents[index])
            while len(carry) >= sequence_length:
                rows.append(carry[:sequence_length])
                carry = carry[sequence_length:]
                if len(rows) == batch_size:
                    yield torch.tensor(rows, dtype=torch.long)
                    rows = []
        epoch += 1


def fixed_eval_batch(*, documents: Sequence[Sequence[int]], sequence_length: int, rows: int) -> torch.Tensor:
    """Rows taken at even intervals of the unshuffled stream: a stable yardstick, not held out."""
    stream = [token for document in documents for token in document]
    stride = max(sequence_length, (len(stream) - sequence_length) // rows)
    starts = [i * stride for i in range(rows) if i * stride + sequence_length <= len(stream)]
    return torch.tensor([stream[s : s + sequence_length] for s in starts], dtype=torch.long)


# ---------------------------------------------------------------------------- model


def build_model(*, settings: TrainingSettings, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_kv_heads,
        max_position_embeddings=settings.max_position_embeddings,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
    )
    return LlamaForCausalLM(config)


def learning_rate_at(*, step: int, settings: TrainingSettings) -> float:
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return settings.min_learning_rate + (settings.learning_rate - settings.min_learning_rate) * cosine


@torch.no_grad()
def evaluate(*, model: PreTrainedModel, batch: torch.Tensor) -> float:
    model.eval()
    losses: list[float] = [model(input_ids=row[None], labels=row[None]).loss.item() for row in batch]
    model.train()
    return sum(losses) / len(losses)


def train(
    *,
    model: LlamaForCausalLM,
    documents: Sequence[Sequence[int]],
    eval_batch: torch.Tensor,
    settings: TrainingSettings,
) -> TrainingResult:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": settings.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=settings.learning_rate,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    batches = packed_batches(
        documents=documents,
        sequence_length=settings.sequence_length,
        batch_size=settings.batch_size,
        seed=settings.seed,
    )
    started = time.monotonic()
    deadline = started + settings.max_minutes * 60.0
    recent_losses: list[float] = []
    tokens = 0
    steps_done = 0
    stopped_by_time_budget = False
    model.train()
    for step in range(settings.steps):
        if time.monotonic() > deadline:
            stopped_by_time_budget = True
            print(f"time budget of {settings.max_minutes} min reached at step {step}", flush=True)
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step=step, settings=settings)
        batch = next(batches)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        tokens += batch.numel()
        steps_done = step + 1
        recent_losses = (recent_losses + [loss.item()])[-settings.log_every :]
        if steps_done % settings.log_every == 0 or steps_done == settings.steps:
            elapsed = time.monotonic() - started
            mean_loss = sum(recent_losses) / len(recent_losses)
            print(
                f"step {steps_done}/{settings.steps} loss {mean_loss:.4f}"
                f" lr {optimizer.param_groups[0]['lr']:.2e} tokens {tokens}"
                f" elapsed {elapsed / 60:.1f} min ({tokens / elapsed:.0f} tok/s)",
                flush=True,
            )
    final_loss = sum(recent_losses) / max(1, len(recent_losses))
    return TrainingResult(
        steps_done=steps_done,
        tokens_trained=tokens,
        final_loss=final_loss,
        eval_loss=evaluate(model=model, batch=eval_batch),
        parameter_count=sum(p.numel() for p in model.parameters()),
        wall_seconds=time.monotonic() - started,
        stopped_by_time_budget=stopped_by_time_budget,
    )


# --------------------------------------------------------------------------- saving


def save_model(*, model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=0.7,
        top_k=40,
        top_p=0.9,
        repetition_penalty=1.15,
        max_new_tokens=128,
    )
    model.save_pretrained(output_dir)
    # The chat template goes into tokenizer_config.json (not chat_template.jinja) so that
    # transformers 4.x loaders find it too.
    tokenizer.save_pretrained(output_dir, save_jinja_files=False)
    # Weights are stored in float16 to halve the checkpoint; config.json keeps float32 so
    # that from_pretrained(dtype="auto") upcasts them, since CPU float16 matmuls are slow.
    weights_path = output_dir / "model.safetensors"
    state = load_file(weights_path)
    save_file(
        {k: v.to(torch.float16).contiguous() for k, v in state.items()},
        weights_path,
        metadata={"format": "pt"},
    )
    config_path = output_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = "float32"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def sample_outputs(*, model_dir: Path, seed: int) -> dict[str, str]:
    """Reload the saved folder the way users will and generate a chat and a plain sample."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    model.eval()
    chat_prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Explain Python classes"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert isinstance(chat_prompt, str)
    prompts = (
        ("chat: Explain Python classes", chat_prompt, False),
        ("raw: A class definition", "A class definition", True),
    )
    samples: dict[str, str] = {}
    for label, prompt, add_special_tokens in prompts:
        ids = tokenizer(prompt, add_special_tokens=add_special_tokens, return_tensors="pt")
        prompt_length = ids["input_ids"].shape[1]
        variants: tuple[tuple[str, dict[str, Any]], ...] = (
            ("greedy", {"do_sample": False, "repetition_penalty": 1.2}),
            (f"sampled, seed {seed}", {}),
        )
        for variant, overrides in variants:
            torch.manual_seed(seed)
            with torch.no_grad():
                output = model.generate(**ids, max_new_tokens=120, **overrides)
            completion = tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)[0]
            samples[f"{label} ({variant})"] = completion
    return samples


# ------------------------------------------------------------------------------ cli


def parse_settings(*, argv: Sequence[str]) -> tuple[TrainingSettings, Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--hidden-size", type=int, default=192)
    parser.add_argument("--intermediate-size", type=int, default=512)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--num-kv-heads", type=int, default=4)
    parser.add_argument("--max-position-embeddings", type=int, default=1024)
    parser.add_argument("--sequence-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4800)
    parser.add_argument("--warmup-steps", type=int, default=60)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--min-learning-rate", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument(
        "--chat-repeats",
        type=int,
        default=2,
        help="copies (with different prompt wordings) of each topic chat pair",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=45.0,
        help="stop early (and still save) once training has run this long",
    )
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(list(argv))
    torch.set_num_threads(args.threads)
    settings = TrainingSettings(
        seed=args.seed,
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        num_kv_heads=args.num_kv_heads,
        max_position_embeddings=args.max_position_embeddings,
        sequence_length=args.sequence_length,
        batch_size=args.batch_size,
        steps=args.steps,
        warmup_steps=args.warmup_steps,
        learning_rate=args.learning_rate,
        min_learning_rate=args.min_learning_rate,
        weight_decay=args.weight_decay,
        chat_repeats=args.chat_repeats,
        max_minutes=args.max_minutes,
        log_every=args.log_every,
    )
    return settings, args.output_dir


def main(*, argv: Sequence[str]) -> int:
    settings, output_dir = parse_settings(argv=argv)
    random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    corpus = build_corpus(seed=settings.seed, chat_repeats=settings.chat_repeats)
    print(
        f"corpus: {len(corpus.raw_documents)} documents, {len(corpus.chat_pairs)} chat pairs,"
        f" {corpus.character_count} characters",
        flush=True,
    )
    tokenizer = train_tokenizer(
        corpus=corpus, vocab_size=settings.vocab_size, max_length=settings.max_position_embeddings
    )
    _check_chat_template_matches_training_format(tokenizer=tokenizer)
    documents = encode_documents(corpus=corpus, tokenizer=tokenizer)
    epoch_tokens = sum(len(d) for d in documents)
    print(f"tokenizer: {len(tokenizer)} tokens; corpus is {epoch_tokens} tokens per epoch", flush=True)

    model = build_model(settings=settings, tokenizer=tokenizer)
    parameter_count = sum(p.numel() for p in model.parameters())
    print(f"model: {parameter_count} parameters", flush=True)
    eval_batch = fixed_eval_batch(documents=documents, sequence_length=settings.sequence_length, rows=32)

    result = train(model=model, documents=documents, eval_batch=eval_batch, settings=settings)
    save_model(model=model, tokenizer=tokenizer, output_dir=output_dir)
    reloaded = AutoModelForCausalLM.from_pretrained(output_dir, local_files_only=True)
    saved_eval_loss = evaluate(model=reloaded, batch=eval_batch)
    print(
        f"done: {result.steps_done} steps, {result.tokens_trained} tokens"
        f" ({result.tokens_trained / epoch_tokens:.2f} epochs), final training loss"
        f" {result.final_loss:.4f}, eval loss {result.eval_loss:.4f}"
        f" (saved float16 weights: {saved_eval_loss:.4f}), {result.wall_seconds / 60:.1f} min"
        + (" [stopped by --max-minutes]" if result.stopped_by_time_budget else ""),
        flush=True,
    )
    for label, text in sample_outputs(model_dir=output_dir, seed=settings.seed).items():
        print(f"--- {label}\n{text}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(argv=sys.argv[1:]))
