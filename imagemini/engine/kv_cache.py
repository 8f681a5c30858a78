"""KV cache with memory reserved per sequence.

A sequence reserves, when it is admitted, room for its whole life (prompt + token budget),
so a running sequence never waits for memory and never has to be preempted; the room
goes back to the pool when it finishes or is aborted. Each sequence's keys and values are
contiguous in tokens ([layers, kv_heads, capacity, head_dim]), which lets attention run on
exactly its own tokens: the shape of that computation never depends on the neighbours.

Two layouts, one per attention plan (model_runner.py):
- per sequence (`pooled=False`): each reservation is an allocation of its own; a guided-image
  pair shares one, [layers, 2, ...], so its two decode rows are written and attended together.
- pooled (`pooled=True`, the batched plan, attention.py): one pool per K and V,
  [layers, kv_heads, budget + 1, head_dim], allocated once. A reservation is a contiguous token
  range of it (first fit, `FreeRanges`), and `SequenceKV.k/v` are views of that range, so code
  that reads or writes a sequence's tokens (the prefix cache) works on either layout. The pool's
  last token slot is never handed out and stays zero: the batched plan points every key
  position a row must not see at it. A guided pair takes two ranges: that plan treats the
  partner as just another sequence.
"""

from __future__ import annotations

import bisect
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
    # Pooled layout: the whole pool's keys and values, and where this range starts in it.
    pool: tuple[torch.Tensor, torch.Tensor] | None = None
    offset: int = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[2]


class FreeRanges:
    """The free token ranges of a pool, (start, length) in order of start, neighbours merged:
    first fit, so a run of equal requests packs from the front and a freed range is reused first."""

    def __init__(self, tokens: int) -> None:
        self.ranges: list[tuple[int, int]] = [(0, tokens)] if tokens else []

    def fits(self, sizes: list[int]) -> bool:
        """Whether every size gets a range of its own, taken one after another by first fit."""
        lengths = [length for _, length in self.ranges]
        for size in sizes:
            i = next((i for i, length in enumerate(lengths) if length >= size), None)
            if i is None:
                return False
            lengths[i] -= size
        return True

    def take(self, size: int) -> int:
        """The start of a range of `size` tokens, cut from the front of the first free range that holds it."""
        for i, (start, length) in enumerate(self.ranges):
            if length >= size:
                if length == size:
                    del self.ranges[i]
                else:
                    self.ranges[i] = (start + size, length - size)
                return start
        raise MemoryError(f"no free range of {size} tokens")

    def give_back(self, start: int, size: int) -> None:
        """Return a taken range, merged with the free ranges it touches."""
        i = bisect.bisect(self.ranges, (start, size))
        if i > 0 and self.ranges[i - 1][0] + self.ranges[i - 1][1] > start:
            raise ValueError(f"range {start}+{size} is already free")
        if i < len(self.ranges) and start + size > self.ranges[i][0]:
            raise ValueError(f"range {start}+{size} is already free")
        if i < len(self.ranges) and start + size == self.ranges[i][0]:
            size += self.ranges.pop(i)[1]
        if i > 0 and self.ranges[i - 1][0] + self.ranges[i - 1][1] == start:
            start, size = self.ranges[i - 1][0], self.ranges[i - 1][1] + size
            i -= 1
            del self.ranges[i]
        self.ranges.insert(i, (start, size))

    @property
    def largest(self) -> int:
        return max((length for _, length in self.ranges), default=0)


class KVCache:
    def __init__(
        self, cfg: TextConfig, dtype: torch.dtype, budget_tokens: int, device: str | torch.device = "cpu",
        pooled: bool = False,
    ) -> None:
        if budget_tokens < 1:
            raise ValueError("KV budget must be at least one token")
        self.cfg = cfg
        self.dtype = dtype
        self.device = torch.device(device)
        self.budget_tokens = budget_tokens
        self.used_tokens = 0
        self.pool: tuple[torch.Tensor, torch.Tensor] | None = None
        self.free_ranges: FreeRanges | None = None
        if pooled:
            shape = (cfg.num_hidden_layers, cfg.num_key_value_heads, budget_tokens + 1, cfg.head_dim)
            self.pool = torch.zeros(shape, dtype=dtype, device=self.device), torch.zeros(shape, dtype=dtype, device=self.device)
            self.free_ranges = FreeRanges(budget_tokens)

    @property
    def free_tokens(self) -> int:
        return self.budget_tokens - self.used_tokens

    def bytes_per_token(self) -> int:
        c = self.cfg
        return 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * torch.finfo(self.dtype).bits // 8

    def can_allocate(self, tokens: int, count: int = 1) -> bool:
        """Room for `count` sequences of `tokens` each (a guided pair: 2); pooled, each in a
        contiguous range of its own."""
        if self.free_ranges is not None:
            return self.free_ranges.fits([tokens] * count)
        return count * tokens <= self.free_tokens

    def allocate(self, tokens: int) -> SequenceKV:
        if self.pool is not None:
            return self._take_range(tokens)
        k, v = self._reserve(tokens, 1)
        return SequenceKV(k[:, 0], v[:, 0])

    def allocate_pair(self, tokens: int) -> tuple[SequenceKV, SequenceKV]:
        """Room for a sequence and its guidance partner: side by side in one tensor, or pooled,
        two ranges."""
        if self.pool is not None:
            if not self.can_allocate(tokens, 2):
                raise MemoryError(f"KV cache: no two free ranges of {tokens} tokens")
            return self._take_range(tokens), self._take_range(tokens)
        k, v = self._reserve(tokens, 2)
        return SequenceKV(k[:, 0], v[:, 0], (k, v)), SequenceKV(k[:, 1], v[:, 1], (k, v))

    def _take_range(self, tokens: int) -> SequenceKV:
        start = self.free_ranges.take(tokens)
        self.used_tokens += tokens
        k, v = self.pool
        return SequenceKV(k[:, :, start : start + tokens], v[:, :, start : start + tokens], pool=self.pool, offset=start)

    def _reserve(self, tokens: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [layers, count, kv_heads, tokens, head_dim] for `count` sequences."""
        if not self.can_allocate(tokens, count):
            raise MemoryError(f"KV cache: {count} x {tokens} tokens requested, {self.free_tokens} free")
        c = self.cfg
        shape = (c.num_hidden_layers, count, c.num_key_value_heads, tokens, c.head_dim)
        self.used_tokens += count * tokens
        return torch.empty(shape, dtype=self.dtype, device=self.device), torch.empty(shape, dtype=self.dtype, device=self.device)

    def free(self, kv: SequenceKV) -> None:
        if kv.pool is not None:
            self.free_ranges.give_back(kv.offset, kv.capacity)
        self.used_tokens -= kv.capacity
