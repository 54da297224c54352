"""Local Hugging Face backend: one scheduler thread runs continuous batching.

Every decode step feeds one token per running sequence through a single forward pass. New
requests are prefilled between steps (left-padded together) and their KV cache is merged into
the running batch; finished and cancelled rows are dropped. Rows are left-padded to a common
cache length, so each row carries its own attention mask and position ids.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from inference.engine.batch import Batch
from inference.engine.observe import EngineObserver, NoObserver
from inference.engine.sampling import ModelSampling, RowSampling, sample_next_tokens
from inference.engine.sequence import SequenceState
from inference.engine.sequence import decode_tokens as decode_tokens  # bench/ imports it from here
from inference.engine.spans import SequenceTrace
from inference.engine.stream import GenerationStream
from inference.engine.types import (
    EngineUnavailable,
    GenerationFailed,
    GenerationRequest,
    GenerationResult,
    ModelLoadError,
    ModelNotFound,
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


def prepare_shared_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """Let every request thread and the scheduler use `tokenizer` at once, with no lock.

    A lock around tokenization would make every request wait for the longest prompt being
    tokenized, and the scheduler's per-token decoding with them. None is needed: a fast (Rust)
    tokenizer encodes and decodes through shared borrows of its backend, with the GIL released,
    so calls run in parallel. What breaks it ("RuntimeError: Already borrowed",
    huggingface/tokenizers#537, transformers#47085) is a change of the backend's truncation,
    padding or special-token splitting while another thread encodes, and transformers makes such
    a change only when a call asks for settings that differ from the backend's current ones. The
    engine always asks for the same (no truncation, no padding, the tokenizer's own splitting),
    so one encode here, before any other thread can reach the tokenizer, leaves the backend in
    the state every later call wants and later calls only read it. Whatever needs other settings
    must use a copy of its own. Slow (Python or SentencePiece) tokenizers keep no such state.
    """
    tokenizer.encode("", add_special_tokens=True)


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
        observer: EngineObserver | None = None,
    ) -> None:
        self.model_name = served_name
        self._observer: EngineObserver = observer or NoObserver()
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
        self._embedded_ids = _embedded_ids(self._model)
        prepare_shared_tokenizer(self._tokenizer)
        # Reentrant: a stream dropped during garbage collection cancels itself from whichever
        # thread collects it, possibly one that already holds the lock.
        self._cv = threading.Condition(threading.RLock())
        self._waiting: deque[SequenceState] = deque()
        self._active: set[SequenceState] = set()  # admitted to the batch and not done
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="llm-scheduler", daemon=True)
        self._thread.start()

    # Request side.

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
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

    def _submit(self, request: GenerationRequest, *, stream_chunks: bool) -> SequenceState:
        prompt_ids = render_prompt(request=request, tokenizer=self._tokenizer)
        unknown = max(prompt_ids)
        if unknown >= self._embedded_ids:
            # Caught here, not by the forward pass: on CUDA an index past the embeddings is a
            # device-side assert, which would end every request of the process.
            raise GenerationFailed(
                f"the prompt holds token id {unknown}, but the model only has embeddings for ids "
                f"below {self._embedded_ids}: its tokenizer is larger than the model"
            )
        ensure_fits_context(
            prompt_tokens=len(prompt_ids),
            max_tokens=request.params.max_tokens,
            context_length=self._context_length,
        )
        seq = SequenceState(
            prompt_ids=prompt_ids,
            params=request.params,
            model_name=self.model_name,
            device=self.device,
            tokenizer=self._tokenizer,
            retire=self._retire,
            stream_chunks=stream_chunks,
        )
        seq.trace = SequenceTrace.start(model=self.model_name, prompt_tokens=len(prompt_ids))
        with self._cv:
            if self._stopping:
                raise EngineUnavailable("the engine is shut down")
            self._waiting.append(seq)
            self._observer.queue_depth(depth=len(self._waiting))
            self._cv.notify()
        return seq

    def shutdown(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join()

    def probe(self) -> bool:
        """Loaded and its scheduler running."""
        return not self._stopping and self._thread.is_alive()

    def _retire(self, seq: SequenceState) -> None:
        """Forget a finished, failed or cancelled sequence, so that it stops counting as a load."""
        with self._cv:
            self._active.discard(seq)
            if seq in self._waiting:
                self._waiting.remove(seq)
                self._observer.queue_depth(depth=len(self._waiting))
            self._cv.notify()

    # Scheduler thread.

    def _run(self) -> None:
        if self._torch_threads:
            # With OpenMP the thread count is a per-thread setting, so it is made where the
            # forward passes run.
            torch.set_num_threads(self._torch_threads)
        batch: Batch | None = None
        while True:
            with self._cv:
                while not self._stopping and not self._waiting and batch is None:
                    self._cv.wait()
                if self._stopping:
                    break
                admitted: list[SequenceState] = []
                while self._waiting and len(self._active) < self.max_batch_size:
                    admitted.append(self._waiting.popleft())
                    self._active.add(admitted[-1])
                if admitted:
                    self._observer.queue_depth(depth=len(self._waiting))
            now_ns = time.time_ns()
            for seq in admitted:
                if seq.trace is not None:
                    seq.trace.admitted(at_ns=now_ns)
            batch = self._step(batch, admitted)
        error = EngineUnavailable("the engine is shut down")
        with self._cv:
            pending = list(self._waiting) + list(self._active)
        for seq in pending:
            seq.fail(error)
        self._observer.queue_depth(depth=0)

    def _step(self, batch: Batch | None, admitted: list[SequenceState]) -> Batch | None:
        """Prefill `admitted`, merge them in, and run one decode step; errors fail only the
        requests they touched, so the thread keeps serving."""
        new_rows = None
        if admitted:
            try:
                with torch.inference_mode():
                    new_rows = self._prefill_apart_on_error(admitted)
            except Exception as exc:
                for seq in admitted:
                    if not seq.done:
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
                self._observer.batch_step(size=len(batch.seqs))
                self._decode(batch)
                return batch
        except Exception as exc:
            for seq in (batch.seqs if batch else []) + (new_rows.seqs if new_rows else []):
                if not seq.done:
                    seq.fail(exc)
            return None

    def _prefill_apart_on_error(self, seqs: list[SequenceState]) -> Batch | None:
        """Prefill `seqs` together or, if that raises, each alone, so that a prompt the model
        fails on (one too long for the memory left, say) fails only its own request; a batch
        that only fails together (out of memory for all of it) then goes through a row at a time."""
        try:
            return self._prefill(seqs)
        except Exception as exc:
            if len(seqs) == 1:
                seqs[0].fail(exc)
                return None
            batch_error = exc
        rows: Batch | None = None
        for seq in seqs:
            if seq.done:
                continue
            if seq.completion_tokens:
                # It took its first token before the batch failed: prefilling it again would
                # repeat that token.
                seq.fail(batch_error)
                continue
            try:
                alone = self._prefill([seq])
            except Exception as exc:
                seq.fail(exc)
                continue
            rows = rows.merged(alone) if rows else alone
        return rows

    def _prefill(self, seqs: list[SequenceState]) -> Batch:
        started_ns = time.time_ns()
        batch = self._prefill_rows(seqs)
        ended_ns = time.time_ns()
        for seq in seqs:
            if seq.trace is not None:
                seq.trace.prefilled(start_ns=started_ns, end_ns=ended_ns, batch_rows=len(seqs))
        return batch

    def _prefill_rows(self, seqs: list[SequenceState]) -> Batch:
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
        return Batch(
            seqs=seqs,
            cache=cache,
            mask=mask,
            positions=mask.sum(dim=1),
            next_tokens=torch.tensor(tokens, device=self.device),
        )

    def _decode(self, batch: Batch) -> None:
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

    def _sample(self, logits: torch.Tensor, seqs: list[SequenceState]) -> list[int]:
        track_seen = self._model_sampling.repetition_penalty != 1.0
        if track_seen:
            for seq in seqs:
                if seq.seen is None:
                    seq.seen = _token_mask(seq.prompt_ids, vocab_size=logits.shape[-1], device=logits.device)
        outcomes = sample_next_tokens(
            logits=logits.float(),
            rows=[RowSampling(params=s.params, generator=s.generator, seen=s.seen) for s in seqs],
            model_sampling=self._model_sampling,
        )
        tokens = []
        for seq, outcome in zip(seqs, outcomes, strict=True):
            if isinstance(outcome, GenerationFailed):
                # Never fed to the model: the next step drops the rows that are done first.
                tokens.append(0)
                if not seq.done:
                    seq.fail(outcome)
                continue
            tokens.append(outcome)
            if track_seen and seq.seen is not None:
                seq.seen[0, outcome] = True
            if not seq.cancelled:
                try:
                    seq.accept(outcome, eos_ids=self._eos_ids)
                except Exception as exc:
                    failure = GenerationFailed(f"decoding the generated text failed: {exc}")
                    failure.__cause__ = exc
                    if not seq.done:
                        seq.fail(failure)
                else:
                    self._observe(seq)
        return tokens

    def _observe(self, seq: SequenceState) -> None:
        """Timings of a sequence that just accepted a token, from its submission."""
        if seq.completion_tokens == 1 or seq.finish_reason in ("stop", "length"):
            seconds = time.perf_counter() - seq.submitted_at
            if seq.completion_tokens == 1:
                self._observer.first_token(model=self.model_name, seconds=seconds)
            if seq.finish_reason in ("stop", "length"):
                self._observer.generation_finished(
                    model=self.model_name, seconds=seconds, completion_tokens=seq.completion_tokens
                )
                if seq.trace is not None:
                    seq.trace.finished(
                        at_ns=time.time_ns(),
                        completion_tokens=seq.completion_tokens,
                        finish_reason=seq.finish_reason,
                    )


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


def _embedded_ids(model: PreTrainedModel) -> int:
    """How many token ids the model has input embeddings for."""
    embeddings = model.get_input_embeddings()
    if isinstance(embeddings, torch.nn.Embedding):
        return embeddings.num_embeddings
    return int(model.config.get_text_config().vocab_size)


def _context_length(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int | None:
    length = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if isinstance(length, int):
        return length
    # Tokenizers without a known limit report a huge sentinel value.
    model_max = tokenizer.model_max_length
    return model_max if isinstance(model_max, int) and model_max < 1_000_000 else None
