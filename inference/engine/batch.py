"""The running rows of the local backend's batch and their KV cache, left-padded to a common length."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from inference.engine.sequence import SequenceState


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
class Batch:
    """Running rows, left-padded to a common KV length."""

    seqs: list[SequenceState]
    cache: DynamicCache
    mask: torch.Tensor  # [rows, kv_length], 1 for real tokens
    positions: torch.Tensor  # [rows], position id of the next token to feed
    next_tokens: torch.Tensor  # [rows], sampled but not yet fed

    def merged(self, other: Batch) -> Batch:
        length = max(self.mask.shape[1], other.mask.shape[1])
        for (layer, keys, values), (_, other_keys, other_values) in zip(
            _kv_layers(self.cache), _kv_layers(other.cache), strict=True
        ):
            layer.keys = torch.cat([_pad_left(keys, length), _pad_left(other_keys, length)])
            layer.values = torch.cat([_pad_left(values, length), _pad_left(other_values, length)])
        return Batch(
            seqs=self.seqs + other.seqs,
            cache=self.cache,
            mask=torch.cat([_pad_left(self.mask, length), _pad_left(other.mask, length)]),
            positions=torch.cat([self.positions, other.positions]),
            next_tokens=torch.cat([self.next_tokens, other.next_tokens]),
        )

    def select(self, rows: list[int]) -> Batch:
        index = torch.tensor(rows, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        # Columns that are padding in every remaining row carry no information.
        start = int(mask.any(dim=0).int().argmax())
        for layer, keys, values in _kv_layers(self.cache):
            layer.keys = keys.index_select(0, index)[:, :, start:]
            layer.values = values.index_select(0, index)[:, :, start:]
        return Batch(
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
