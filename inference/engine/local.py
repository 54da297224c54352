"""Local Hugging Face backend: one scheduler thread runs continuous batching.

Every decode step feeds one token per running sequence through a single forward pass. New
requests are prefilled between steps (left-padded together) and their KV cache is merged into
the running batch; finished and cancelled rows are dropped. Rows are left-padded to a common
cache length, so each row carries its own attention mask and position ids.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from inference.engine.stream import GenerationStream
from inference.engine.types import (
    EngineUnavailable,
    GenerationRequest,
    GenerationResult,
    ModelLoadError,
    ModelNotFound,
    SamplingParams,
    StreamChunk,
    ensure_fits_context,
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, *, device: str) -> torch.dtype:
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise ModelLoadError(f"unsupported dtype {dtype!r}; use one of {sorted(_DTYPES)}")
        return _DTYPES[dtype]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # Half precision matmuls are slow on most CPUs.
    return torch.float32


def render_prompt(*, request: GenerationRequest, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    if request.messages is None:
        assert request.prompt is not None
        ids = tokenizer.encode(request.prompt, add_special_tokens=True)
    elif tokenizer.chat_template:
        text = tokenizer.apply_chat_template(
            list(request.messages), add_generation_prompt=True, tokenize=False
        )
        # The template already spells out the special tokens it wants.
        ids = tokenizer.encode(text, add_special_tokens=False)
    else:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in request.messages) + "assistant:"
        ids = tokenizer.encode(text, add_special_tokens=True)
    if not ids:
        # An empty prompt still needs one position to predict from.
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = [start] if start is not None else [0]
    return list(ids)


def decode_tokens(tokenizer: PreTrainedTokenizerBase, token_ids: Sequence[int]) -> str:
    # No clean-up: it rewrites spaces around punctuation, which would break incremental decoding.
    return str(
        tokenizer.decode(list(token_ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
    )


@dataclass(frozen=True)
class ModelSampling:
    """Sampling settings that requests cannot choose, taken from the model's
    generation_config.json as its authors intended (vLLM does the same)."""

    top_k: int = 0  # 0: no top-k filtering
    repetition_penalty: float = 1.0

    @classmethod
    def of(cls, model: PreTrainedModel) -> ModelSampling:
        config = model.generation_config
        if config is None:
            return cls()
        return cls(top_k=int(config.top_k or 0), repetition_penalty=float(config.repetition_penalty or 1.0))


@dataclass
class RowSampling:
    params: SamplingParams
    generator: torch.Generator
    seen: torch.Tensor | None  # bool [1, vocab]: tokens of the prompt and completion so far


def sample_next_tokens(
    *, logits: torch.Tensor, rows: Sequence[RowSampling], model_sampling: ModelSampling
) -> list[int]:
    """Pick one token per row of float32 `logits` [rows, vocab].

    Mirrors transformers' generate() (repetition penalty, temperature, top-k, top-p, softmax,
    multinomial) with each row drawing from its own generator, so that a seeded request gives the
    same tokens alone, in any batch, and under generate() with torch.manual_seed(seed). The
    row-wise steps run on the whole batch at once; they give the same bits as row by row.
    """
    scores = logits
    penalty = model_sampling.repetition_penalty
    if penalty != 1.0:
        seen = [row.seen for row in rows if row.seen is not None]
        if len(seen) != len(rows):
            raise ValueError("a repetition penalty needs every row's seen tokens")
        penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
        scores = torch.where(torch.cat(seen), penalized, scores)
    picked = scores.argmax(dim=-1)
    sampled = [i for i, row in enumerate(rows) if row.params.temperature > 0]
    if sampled:
        index = torch.tensor(sampled, device=scores.device)
        temperatures = torch.tensor([[rows[i].params.temperature] for i in sampled], device=scores.device)
        warped = scores.index_select(0, index) / temperatures
        if model_sampling.top_k:
            kth_best = torch.topk(warped, min(model_sampling.top_k, warped.shape[-1]))[0][..., -1, None]
            warped = warped.masked_fill(warped < kth_best, -float("inf"))
        for j, i in enumerate(sampled):
            if rows[i].params.top_p < 1.0:
                warped[j : j + 1] = _top_p_filter(warped[j : j + 1], top_p=rows[i].params.top_p)
        probs = F.softmax(warped, dim=-1)
        draws = [
            torch.multinomial(probs[j : j + 1], num_samples=1, generator=rows[i].generator)
            for j, i in enumerate(sampled)
        ]
        picked = picked.index_copy(0, index, torch.cat(draws).squeeze(1))
    return [int(t) for t in picked.tolist()]


def _top_p_filter(scores: torch.Tensor, *, top_p: float) -> torch.Tensor:
    sorted_scores, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[..., -1:] = False  # always keep the most likely token
    remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
    return scores.masked_fill(remove, -float("inf"))


class _Sequence:
    """One request's generation state; the scheduler thread is its only writer."""

    def __init__(
        self,
        *,
        prompt_ids: list[int],
        params: SamplingParams,
        model_name: str,
        device: str,
        tokenizer: PreTrainedTokenizerBase,
        tokenizer_lock: threading.Lock,
        retire: Callable[[_Sequence], None],
        stream_chunks: bool,
    ) -> None:
        self.prompt_ids = prompt_ids
        self.params = params
        self.generator = torch.Generator(device=device)
        if params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(params.seed)
        self.cancelled = False
        self.finish_reason: str | None = None
        self.seen: torch.Tensor | None = None  # filled by the scheduler when a penalty needs it
        self._model_name = model_name
        self._tokenizer = tokenizer
        self._tokenizer_lock = tokenizer_lock
        self._retire = retire
        # Blocking callers only want the result; skipping chunks spares them a wake-up per token.
        self._stream_chunks = stream_chunks
        self._events: queue.SimpleQueue[StreamChunk | GenerationResult | Exception] = queue.SimpleQueue()
        self._completion_tokens = 0
        self._token_ids: list[int] = []  # the completion's tokens without the final EOS
        self._text = ""
        self._emitted = 0
        # Incremental detokenization offsets: text is decoded from a short window of tokens and
        # only extended once it no longer ends in an incomplete UTF-8 sequence.
        self._prefix_offset = 0
        self._read_offset = 0

    # Consumer side (any thread).

    def next_event(self) -> StreamChunk | GenerationResult:
        event = self._events.get()
        if isinstance(event, Exception):
            raise event
        return event

    def cancel(self) -> None:
        self.cancelled = True
        self._retire(self)

    def partial_result(self) -> GenerationResult:
        return GenerationResult(
            text=self._text[: self._emitted],
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=self._completion_tokens,
            finish_reason=self.finish_reason or "cancelled",
            model=self._model_name,
        )

    # Scheduler side.

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.cancelled

    def accept(self, token_id: int, *, eos_ids: frozenset[int]) -> None:
        self._completion_tokens += 1
        if token_id in eos_ids:
            self._finish("stop")
            return
        self._token_ids.append(token_id)
        old_length = len(self._text)
        self._text += self._decode_delta()
        stops = self.params.stop
        if stops:
            search_from = max(0, old_length - max(len(s) for s in stops) + 1)
            hits = [i for i in (self._text.find(s, search_from) for s in stops) if i >= 0]
            if hits:
                self._text = self._text[: min(hits)]
                self._finish("stop", flush=False)
                return
        if self._completion_tokens >= self.params.max_tokens:
            self._finish("length")
            return
        self._emit(len(self._text) - _stop_prefix_length(self._text, stops))

    def fail(self, error: Exception) -> None:
        self.finish_reason = "error"
        self._retire(self)
        self._events.put(error)

    def _finish(self, reason: str, *, flush: bool = True) -> None:
        if flush:
            self._text += self._decode_rest()
        self.finish_reason = reason
        self._retire(self)
        self._emit(len(self._text))
        self._events.put(
            GenerationResult(
                text=self._text,
                prompt_tokens=len(self.prompt_ids),
                completion_tokens=self._completion_tokens,
                finish_reason=reason,
                model=self._model_name,
            )
        )

    def _emit(self, end: int) -> None:
        if end > self._emitted:
            if self._stream_chunks:
                self._events.put(StreamChunk(text=self._text[self._emitted : end]))
            self._emitted = end

    def _decode_delta(self) -> str:
        with self._tokenizer_lock:
            seen = decode_tokens(self._tokenizer, self._token_ids[self._prefix_offset : self._read_offset])
            current = decode_tokens(self._tokenizer, self._token_ids[self._prefix_offset :])
        if len(current) > len(seen) and not current.endswith("\ufffd"):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._token_ids)
            return current[len(seen) :]
        return ""

    def _decode_rest(self) -> str:
        with self._tokenizer_lock:
            seen = decode_tokens(self._tokenizer, self._token_ids[self._prefix_offset : self._read_offset])
            current = decode_tokens(self._tokenizer, self._token_ids[self._prefix_offset :])
        return current[len(seen) :]


def _stop_prefix_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of `text` that could still grow into a stop string."""
    longest = min(len(text), max((len(s) for s in stops), default=1) - 1)
    for length in range(longest, 0, -1):
        tail = text[-length:]
        if any(s.startswith(tail) for s in stops):
            return length
    return 0


def _kv_layers(cache: DynamicCache) -> list[tuple[DynamicLayer, torch.Tensor, torch.Tensor]]:
    """Each cache layer with its key and value tensors [rows, heads, kv_length, head_dim]."""
    layers = []
    for layer in cache.layers:
        # Only plain attention caches can be padded and merged row-wise.
        if not isinstance(layer, DynamicLayer) or layer.keys is None or layer.values is None:
            raise TypeError(f"cache layer {type(layer).__name__} cannot be batched")
        layers.append((layer, layer.keys, layer.values))
    return layers


@dataclass
class _Batch:
    """Running rows, left-padded to a common KV length."""

    seqs: list[_Sequence]
    cache: DynamicCache
    mask: torch.Tensor  # [rows, kv_length], 1 for real tokens
    positions: torch.Tensor  # [rows], position id of the next token to feed
    next_tokens: torch.Tensor  # [rows], sampled but not yet fed

    def merged(self, other: _Batch) -> _Batch:
        length = max(self.mask.shape[1], other.mask.shape[1])
        for (layer, keys, values), (_, other_keys, other_values) in zip(
            _kv_layers(self.cache), _kv_layers(other.cache), strict=True
        ):
            layer.keys = torch.cat([_pad_left(keys, length), _pad_left(other_keys, length)])
            layer.values = torch.cat([_pad_left(values, length), _pad_left(other_values, length)])
        return _Batch(
            seqs=self.seqs + other.seqs,
            cache=self.cache,
            mask=torch.cat([_pad_left(self.mask, length), _pad_left(other.mask, length)]),
            positions=torch.cat([self.positions, other.positions]),
            next_tokens=torch.cat([self.next_tokens, other.next_tokens]),
        )

    def select(self, rows: list[int]) -> _Batch:
        index = torch.tensor(rows, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        # Columns that are padding in every remaining row carry no information.
        start = int(mask.any(dim=0).int().argmax())
        for layer, keys, values in _kv_layers(self.cache):
            layer.keys = keys.index_select(0, index)[:, :, start:]
            layer.values = values.index_select(0, index)[:, :, start:]
        return _Batch(
            seqs=[self.seqs[r] for r in rows],
            cache=self.cache,
            mask=mask[:, start:],
            positions=self.positions.index_select(0, index),
            next_tokens=self.next_tokens.index_select(0, index),
        )


def _pad_left(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad dimension 1 (masks) or -2 (KV tensors) on the left up to `length`."""
    missing = length - (tensor.shape[1] if tensor.dim() == 2 else tensor.shape[-2])
    if missing == 0:
        return tensor
    padding = (missing, 0) if tensor.dim() == 2 else (0, 0, missing, 0)
    return F.pad(tensor, padding)


class LocalBackend:
    """Loads the model on construction (blocking) and starts the scheduler thread."""

    kind = "local"

    def __init__(
        self,
        *,
        model: str,
        served_name: str,
        device: str,
        dtype: str,
        max_batch_size: int,
        torch_threads: int,
    ) -> None:
        self.model_name = served_name
        self.device = resolve_device(device)
        self.max_batch_size = max_batch_size
        self._torch_threads = torch_threads
        torch_dtype = resolve_dtype(dtype, device=self.device)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
            self._model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
                model, local_files_only=True, dtype=torch_dtype
            )
        except OSError as exc:
            raise ModelNotFound(f"no local model at {model!r}: {exc}") from exc
        except Exception as exc:
            raise ModelLoadError(f"could not load {model!r}: {exc}") from exc
        # transformers wraps PreTrainedModel.to in a way that hides its binding from mypy.
        self._model.to(self.device)  # type: ignore[call-arg, arg-type]
        self._model.eval()
        self._eos_ids = _eos_token_ids(self._model, self._tokenizer)
        self._model_sampling = ModelSampling.of(self._model)
        self._context_length = _context_length(self._model, self._tokenizer)
        self._tokenizer_lock = threading.Lock()
        # Reentrant: a stream dropped during garbage collection cancels itself from whichever
        # thread collects it, possibly one that already holds the lock.
        self._cv = threading.Condition(threading.RLock())
        self._waiting: deque[_Sequence] = deque()
        self._active: set[_Sequence] = set()  # admitted to the batch and not done
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="llm-scheduler", daemon=True)
        self._thread.start()

    # Request side.

    def count_tokens(self, text: str) -> int:
        with self._tokenizer_lock:
            return len(self._tokenizer.encode(text, add_special_tokens=False))

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        with self._tokenizer_lock:
            return len(render_prompt(request=request, tokenizer=self._tokenizer))

    def context_length(self) -> int | None:
        return self._context_length

    def load(self) -> tuple[int, int]:
        """(active, queued) request counts."""
        with self._cv:
            return len(self._active), len(self._waiting)

    def generate(self, request: GenerationRequest) -> GenerationResult:
        event = self._submit(request, stream_chunks=False).next_event()
        assert isinstance(event, GenerationResult)
        return event

    def start(self, request: GenerationRequest) -> GenerationStream:
        return GenerationStream(self._submit(request, stream_chunks=True))

    def _submit(self, request: GenerationRequest, *, stream_chunks: bool) -> _Sequence:
        with self._tokenizer_lock:
            prompt_ids = render_prompt(request=request, tokenizer=self._tokenizer)
        ensure_fits_context(
            prompt_tokens=len(prompt_ids),
            max_tokens=request.params.max_tokens,
            context_length=self._context_length,
        )
        seq = _Sequence(
            prompt_ids=prompt_ids,
            params=request.params,
            model_name=self.model_name,
            device=self.device,
            tokenizer=self._tokenizer,
            tokenizer_lock=self._tokenizer_lock,
            retire=self._retire,
            stream_chunks=stream_chunks,
        )
        with self._cv:
            if self._stopping:
                raise EngineUnavailable("the engine is shut down")
            self._waiting.append(seq)
            self._cv.notify()
        return seq

    def shutdown(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join()

    def _retire(self, seq: _Sequence) -> None:
        """Forget a finished, failed or cancelled sequence, so that it stops counting as a load."""
        with self._cv:
            self._active.discard(seq)
            if seq in self._waiting:
                self._waiting.remove(seq)
            self._cv.notify()

    # Scheduler thread.

    def _run(self) -> None:
        if self._torch_threads:
            # With OpenMP the thread count is a per-thread setting, so it is made where the
            # forward passes run.
            torch.set_num_threads(self._torch_threads)
        batch: _Batch | None = None
        while True:
            with self._cv:
                while not self._stopping and not self._waiting and batch is None:
                    self._cv.wait()
                if self._stopping:
                    break
                admitted: list[_Sequence] = []
                while self._waiting and len(self._active) < self.max_batch_size:
                    admitted.append(self._waiting.popleft())
                    self._active.add(admitted[-1])
            batch = self._step(batch, admitted)
        error = EngineUnavailable("the engine is shut down")
        with self._cv:
            pending = list(self._waiting) + list(self._active)
        for seq in pending:
            seq.fail(error)

    def _step(self, batch: _Batch | None, admitted: list[_Sequence]) -> _Batch | None:
        """Prefill `admitted`, merge them in, and run one decode step; errors fail only the
        requests they touched, so the thread keeps serving."""
        new_rows = None
        if admitted:
            try:
                with torch.inference_mode():
                    new_rows = self._prefill(admitted)
            except Exception as exc:
                for seq in admitted:
                    seq.fail(exc)
        try:
            with torch.inference_mode():
                if new_rows is not None:
                    batch = batch.merged(new_rows) if batch else new_rows
                if batch is None:
                    return None
                live = [row for row, seq in enumerate(batch.seqs) if not seq.done]
                if not live:
                    return None
                if len(live) < len(batch.seqs):
                    batch = batch.select(live)
                self._decode(batch)
                return batch
        except Exception as exc:
            for seq in (batch.seqs if batch else []) + (new_rows.seqs if new_rows else []):
                if not seq.done:
                    seq.fail(exc)
            return None

    def _prefill(self, seqs: list[_Sequence]) -> _Batch:
        length = max(len(s.prompt_ids) for s in seqs)
        ids = torch.zeros((len(seqs), length), dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, length - len(seq.prompt_ids) :] = torch.tensor(seq.prompt_ids)
            mask[row, length - len(seq.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = DynamicCache()
        out = self._model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(dim=1) - 1).clamp(min=0),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        tokens = self._sample(out.logits[:, -1], seqs)
        return _Batch(
            seqs=seqs,
            cache=cache,
            mask=mask,
            positions=mask.sum(dim=1),
            next_tokens=torch.tensor(tokens, device=self.device),
        )

    def _decode(self, batch: _Batch) -> None:
        ones = torch.ones((len(batch.seqs), 1), dtype=batch.mask.dtype, device=self.device)
        batch.mask = torch.cat([batch.mask, ones], dim=1)
        out = self._model(
            input_ids=batch.next_tokens[:, None],
            attention_mask=batch.mask,
            position_ids=batch.positions[:, None],
            cache=batch.cache,
            use_cache=True,
        )
        batch.positions = batch.positions + 1
        tokens = self._sample(out.logits[:, -1], batch.seqs)
        batch.next_tokens = torch.tensor(tokens, device=self.device)

    def _sample(self, logits: torch.Tensor, seqs: list[_Sequence]) -> list[int]:
        track_seen = self._model_sampling.repetition_penalty != 1.0
        if track_seen:
            for seq in seqs:
                if seq.seen is None:
                    seq.seen = _token_mask(seq.prompt_ids, vocab_size=logits.shape[-1], device=logits.device)
        tokens = sample_next_tokens(
            logits=logits.float(),
            rows=[RowSampling(params=s.params, generator=s.generator, seen=s.seen) for s in seqs],
            model_sampling=self._model_sampling,
        )
        for seq, token in zip(seqs, tokens, strict=True):
            if track_seen and seq.seen is not None:
                seq.seen[0, token] = True
            if not seq.cancelled:
                seq.accept(token, eos_ids=self._eos_ids)
        return tokens


def _token_mask(token_ids: list[int], *, vocab_size: int, device: torch.device) -> torch.Tensor:
    mask = torch.zeros((1, vocab_size), dtype=torch.bool, device=device)
    # Ids past the output layer (a tokenizer larger than the model) cannot be generated anyway.
    mask[0, [t for t in token_ids if t < vocab_size]] = True
    return mask


def _eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    ids: set[int] = set()
    configured = model.generation_config.eos_token_id if model.generation_config else None
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


def _context_length(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int | None:
    length = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if isinstance(length, int):
        return length
    # Tokenizers without a known limit report a huge sentinel value.
    model_max = tokenizer.model_max_length
    return model_max if isinstance(model_max, int) and model_max < 1_000_000 else None
