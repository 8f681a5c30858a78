"""KV cache with memory reserved per sequence.

A sequence reserves, when it is admitted, room for its whole life (prompt + token budget),
so a running sequence never waits for memory and never has to be preempted; the room
goes back to the pool when it finishes or is aborted. Each sequence's keys and values are
contiguous ([layers, kv_heads, capacity, head_dim]), which lets attention run per sequence
on exactly its own tokens: the shape of that computation never depends on the neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from imagemini.models.config import TextConfig


@dataclass
class SequenceKV:
    k: torch.Tensor  # [layers, kv_heads, capacity, head_dim]
    v: torch.Tensor
    # A guided-image pair (a sequence and its unconditional partner) shares one allocation,
    # keys and values [layers, 2, kv_heads, capacity, head_dim] (k and v above are views of it),
    # so that the pair's decode rows are written and attended in one batched call each.
    pair: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def capacity(self) -> int:
        return self.k.shape[2]


class KVCache:
    def __init__(self, cfg: TextConfig, dtype: torch.dtype, budget_tokens: int) -> None:
        if budget_tokens < 1:
            raise ValueError("KV budget must be at least one token")
        self.cfg = cfg
        self.dtype = dtype
        self.budget_tokens = budget_tokens
        self.used_tokens = 0

    @property
    def free_tokens(self) -> int:
        return self.budget_tokens - self.used_tokens

    def bytes_per_token(self) -> int:
        c = self.cfg
        return 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * torch.finfo(self.dtype).bits // 8

    def can_allocate(self, tokens: int) -> bool:
        return tokens <= self.free_tokens

    def allocate(self, tokens: int) -> SequenceKV:
        k, v = self._reserve(tokens, 1)
        return SequenceKV(k[:, 0], v[:, 0])

    def allocate_pair(self, tokens: int) -> tuple[SequenceKV, SequenceKV]:
        """Room for a sequence and its guidance partner, side by side in one tensor."""
        k, v = self._reserve(tokens, 2)
        return SequenceKV(k[:, 0], v[:, 0], (k, v)), SequenceKV(k[:, 1], v[:, 1], (k, v))

    def _reserve(self, tokens: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [layers, count, kv_heads, tokens, head_dim] for `count` sequences."""
        if not self.can_allocate(count * tokens):
            raise MemoryError(f"KV cache: {count} x {tokens} tokens requested, {self.free_tokens} free")
        c = self.cfg
        shape = (c.num_hidden_layers, count, c.num_key_value_heads, tokens, c.head_dim)
        self.used_tokens += count * tokens
        return torch.empty(shape, dtype=self.dtype), torch.empty(shape, dtype=self.dtype)

    def free(self, kv: SequenceKV) -> None:
        self.used_tokens -= kv.capacity
