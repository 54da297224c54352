"""Choosing each request's next token from the model's scores for a whole batch at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from inference.engine.types import GenerationFailed, SamplingParams

# Below this, dividing the scores by the temperature overflows float32 (1e-300 is 0.0 once a float32
# tensor, and logits / 1e-40 are inf), and the distribution is one token anyway: such requests
# decode greedily. vLLM draws the line at the same value (_SAMPLING_EPS).
GREEDY_BELOW_TEMPERATURE = 1e-5


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


def is_greedy(params: SamplingParams) -> bool:
    return params.temperature < GREEDY_BELOW_TEMPERATURE


def sample_next_tokens(
    *, logits: torch.Tensor, rows: Sequence[RowSampling], model_sampling: ModelSampling
) -> list[int | GenerationFailed]:
    """Pick one token per row of float32 `logits` [rows, vocab], or say why a row has none.

    Mirrors transformers' generate() (repetition penalty, temperature, top-k, top-p, softmax,
    multinomial) with each row drawing from its own generator, so that a seeded request gives the
    same tokens alone, in any batch, and under generate() with torch.manual_seed(seed). The
    row-wise steps run on the whole batch at once; they give the same bits as row by row.

    A row whose scores are not numbers (NaN or +inf, or nothing above -inf: a model that
    overflowed on that request's input) gets a GenerationFailed instead of a token; it neither
    fails the other rows nor changes their tokens.
    """
    scores = logits
    penalty = model_sampling.repetition_penalty
    if penalty != 1.0:
        seen = [row.seen for row in rows if row.seen is not None]
        if len(seen) != len(rows):
            raise ValueError("a repetition penalty needs every row's seen tokens")
        penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
        scores = torch.where(torch.cat(seen), penalized, scores)
    # One pass for both: the row's maximum is NaN if any score is, and infinite if one is +inf
    # or all are -inf; its index is argmax's (the first maximal one).
    best, picked = scores.max(dim=-1)
    usable = best.isfinite()
    failures: dict[int, GenerationFailed] = {}
    sampled = [i for i, row in enumerate(rows) if not is_greedy(row.params)]
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
        drawable = probs.sum(dim=-1) > 0  # False for NaN: finite scores can still overflow here
        usable = usable.index_copy(0, index, usable.index_select(0, index) & drawable)
        # A row that cannot be drawn from draws from anything instead, and is failed below: on
        # CUDA, a draw from NaN probabilities is a device-side assert, which would end every
        # request of the process, and checking first would cost a device sync per step.
        probs = torch.where(drawable[:, None], probs, 1.0)
        draws = []
        for j, i in enumerate(sampled):
            try:
                draws.append(torch.multinomial(probs[j : j + 1], num_samples=1, generator=rows[i].generator))
            except RuntimeError as exc:
                failures[i] = GenerationFailed(f"sampling failed: {exc}")
                draws.append(picked[i : i + 1, None])
        picked = picked.index_copy(0, index, torch.cat(draws).squeeze(1))
    tokens, oks = torch.stack([picked, usable.long()]).tolist()
    outcomes: list[int | GenerationFailed] = [
        token if ok else _unusable_scores() for token, ok in zip(tokens, oks, strict=True)
    ]
    for i, failure in failures.items():
        outcomes[i] = failure
    return outcomes


def _unusable_scores() -> GenerationFailed:
    return GenerationFailed(
        "the model's scores for this request are not finite numbers (NaN or infinity), so no "
        "token could be chosen"
    )


def _top_p_filter(scores: torch.Tensor, *, top_p: float) -> torch.Tensor:
    """Keep the most likely tokens whose probabilities add up to `top_p`.

    Safe at the edges of (0, 1]: the most likely token is always kept, so a tiny top_p (down to
    5e-324, which is 0 in float32) keeps that one token, and a top_p that rounds to 1 keeps
    every token; no row is ever left without a finite score.
    """
    sorted_scores, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[..., -1:] = False  # always keep the most likely token
    remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
    return scores.masked_fill(remove, -float("inf"))
