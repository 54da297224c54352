from __future__ import annotations

import math

import pytest
import torch

from inference.engine import GenerationFailed, SamplingParams
from inference.engine.sampling import ModelSampling, RowSampling, sample_next_tokens

VOCAB = 64
MODEL_SAMPLINGS = [ModelSampling(), ModelSampling(top_k=5, repetition_penalty=1.3)]


def scores(rows: int, *, seed: int = 0) -> torch.Tensor:
    return torch.randn((rows, VOCAB), generator=torch.Generator().manual_seed(seed)) * 8


def row(*, seed: int = 0, seen: torch.Tensor | None = None, **params: object) -> RowSampling:
    if seen is None:
        seen = torch.zeros((1, VOCAB), dtype=torch.bool)
        seen[0, :3] = True
    return RowSampling(
        params=SamplingParams(**params),  # type: ignore[arg-type]
        generator=torch.Generator().manual_seed(seed),
        seen=seen,
    )


def greedy_tokens(logits: torch.Tensor, model_sampling: ModelSampling) -> list[int | GenerationFailed]:
    return sample_next_tokens(
        logits=logits,
        rows=[row(temperature=0) for _ in range(logits.shape[0])],
        model_sampling=model_sampling,
    )


@pytest.mark.parametrize("model_sampling", MODEL_SAMPLINGS)
@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1e-40, 1e-6, 9.99e-6])
def test_a_temperature_below_the_epsilon_decodes_greedily(
    model_sampling: ModelSampling, temperature: float
) -> None:
    logits = scores(4)

    tokens = sample_next_tokens(
        logits=logits,
        rows=[row(temperature=temperature, top_p=top_p) for top_p in (1.0, 0.9, 0.5, 1e-9)],
        model_sampling=model_sampling,
    )

    assert tokens == greedy_tokens(logits, model_sampling)


@pytest.mark.parametrize("model_sampling", MODEL_SAMPLINGS)
@pytest.mark.parametrize("top_p", [5e-324, 1e-300, 1e-9])
def test_a_tiny_top_p_keeps_only_the_most_likely_token(model_sampling: ModelSampling, top_p: float) -> None:
    logits = scores(3)

    tokens = sample_next_tokens(
        logits=logits,
        rows=[row(seed=i, temperature=1.5, top_p=top_p) for i in range(3)],
        model_sampling=model_sampling,
    )

    assert tokens == greedy_tokens(logits, model_sampling)


@pytest.mark.parametrize("model_sampling", MODEL_SAMPLINGS)
@pytest.mark.parametrize("temperature", [1e-5, 0.01, 2.0])
@pytest.mark.parametrize("top_p", [math.nextafter(1.0, 0.0), 1.0 - 1e-9, 0.5, 1.0])
def test_sampling_at_the_edges_always_gives_a_token(
    model_sampling: ModelSampling, temperature: float, top_p: float
) -> None:
    logits = scores(8, seed=3)
    logits[:, 10:20] = -float("inf")  # a model that rules some tokens out

    tokens = sample_next_tokens(
        logits=logits,
        rows=[row(seed=i, temperature=temperature, top_p=top_p) for i in range(8)],
        model_sampling=model_sampling,
    )

    assert all(isinstance(t, int) and 0 <= t < VOCAB and not 10 <= t < 20 for t in tokens)


@pytest.mark.parametrize("model_sampling", MODEL_SAMPLINGS)
@pytest.mark.parametrize("poison", [float("nan"), float("inf"), "all -inf"])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_a_row_of_non_finite_scores_fails_alone(
    model_sampling: ModelSampling, poison: float | str, temperature: float
) -> None:
    logits = scores(3, seed=1)
    rows = [row(seed=i, temperature=t) for i, t in enumerate((0.9, temperature, 0.0))]
    healthy = sample_next_tokens(logits=logits, rows=rows, model_sampling=model_sampling)
    poisoned = logits.clone()
    if poison == "all -inf":
        poisoned[1] = -float("inf")
    else:
        poisoned[1, 7] = poison
    rows = [row(seed=i, temperature=t) for i, t in enumerate((0.9, temperature, 0.0))]

    tokens = sample_next_tokens(logits=poisoned, rows=rows, model_sampling=model_sampling)

    assert isinstance(tokens[1], GenerationFailed)
    assert "not finite" in str(tokens[1])
    assert [tokens[0], tokens[2]] == [healthy[0], healthy[2]]


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), -1e-300])
def test_a_temperature_that_is_not_a_finite_non_negative_number_is_refused(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=temperature)


@pytest.mark.parametrize("top_p", [float("nan"), 0.0, -0.0, 1.0000001])
def test_a_top_p_outside_zero_to_one_is_refused(top_p: float) -> None:
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=top_p)
