"""Prefix cache: the keys and values of whole prefill chunks, reused by later prompts that start
the same way (a chat's next turn, the n choices of one request, a shared system prompt).

    cache = PrefixCache(block_tokens=256, capacity_tokens=16384)
    seq.block_hashes = cache.block_hashes(prompt_ids, prompt_embeds)   # when the request arrives
    cache.reuse(seq, pending)      # scheduler, before a prefill chunk: copy what is cached
    cache.store(seq, chunk_start)  # engine, after a step computed a whole chunk of a prompt

Why reuse is exact (docs/design.md, "Prefill borders" and "Prefix cache"): a block is one prefill
chunk, `prefill_chunk` tokens starting at a multiple of it, and only chunks computed as such are
stored. A prompt that takes blocks 0..k-1 from here then prefills chunk k, k+1, ... exactly as it
would have without the cache, over the very same keys and values; rows computed otherwise (a
prompt's last, shorter chunk, an answer decoded one row at a time) are never stored.

A block's key chains the previous block's key with the block's token ids and, where the prompt
carries precomputed embeddings (images), the bytes of the block's embedding rows. The bytes, not
the images' content hashes: they are what the decoder actually reads, so equal keys mean equal
inputs by construction, the engine needs nothing from the API to compute them, and a picture
sent again (api/encoder.py caches its encoding by content) gives the same bytes.

The prompt's last token is never taken from the cache: its row must run to give the logits.
Guided images' unconditional partners (re-filled at each image start) neither use nor fill it.
Blocks are copied into each sequence's own contiguous reservation (engine/kv_cache.py); the
cache holds at most `capacity_tokens` (whole blocks), least recently used out first.
"""

from __future__ import annotations

import array
import hashlib
from collections import OrderedDict

import torch

from .sequence import Sequence


class PrefixCache:
    def __init__(self, block_tokens: int, capacity_tokens: int) -> None:
        if block_tokens < 1 or capacity_tokens < block_tokens:
            raise ValueError("a prefix cache holds at least one whole block")
        self.block_tokens = block_tokens
        self.capacity_blocks = capacity_tokens // block_tokens
        self._blocks: OrderedDict[bytes, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()  # k, v [layers, kv_heads, block, head_dim]
        self.queries = 0  # prompts that looked a block up
        self.hits = 0  # prompts that took at least one block
        self.hit_tokens = 0
        self.query_tokens = 0  # prompt tokens of the prompts that looked a block up (vLLM's prefix_cache_queries)

    def block_hashes(self, prompt_ids: list[int], prompt_embeds: torch.Tensor | None) -> list[bytes]:
        """The chained key of every whole block of the prompt."""
        keys, previous = [], b""
        for start in range(0, len(prompt_ids) - self.block_tokens + 1, self.block_tokens):
            end = start + self.block_tokens
            h = hashlib.blake2b(previous, digest_size=16)
            h.update(array.array("q", prompt_ids[start:end]).tobytes())
            if prompt_embeds is not None:
                rows = prompt_embeds[start:end].contiguous()
                h.update(f"{rows.dtype}{tuple(rows.shape)}".encode())
                h.update(rows.view(torch.uint8).numpy())
            previous = h.digest()
            keys.append(previous)
        return keys

    def reuse(self, seq: Sequence, pending: set[bytes]) -> bool:
        """Copy the cached blocks that follow `seq`'s prefilled rows into its reservation. False: the
        next block is being computed this step by another sequence; `seq` should wait a step for it."""
        block = self.block_tokens
        reusable = (len(seq.prompt_ids) - 1) // block  # never the block holding the last prompt token
        while (index := seq.num_computed // block) < reusable and index >= seq.next_probe:
            key = seq.block_hashes[index]
            cached = self._blocks.get(key)
            if cached is None and key in pending:
                return False
            seq.next_probe = index + 1
            if index == 0:
                self.queries += 1
                self.query_tokens += len(seq.prompt_ids)
            if cached is None:
                return True
            self._blocks.move_to_end(key)
            start = seq.num_computed
            seq.kv.k[:, :, start : start + block].copy_(cached[0])
            seq.kv.v[:, :, start : start + block].copy_(cached[1])
            if seq.num_cached_tokens == 0:
                self.hits += 1
            seq.num_computed += block
            seq.num_cached_tokens += block
            self.hit_tokens += block
        return True

    def pending_key(self, seq: Sequence, start: int, length: int) -> bytes | None:
        """The key of the block a prefill chunk computes, when it is a whole block worth storing."""
        index = start // self.block_tokens
        if length == self.block_tokens and index < len(seq.block_hashes):
            return seq.block_hashes[index]
        return None

    def store(self, seq: Sequence, start: int, length: int) -> None:
        """Keep a chunk `seq` has just prefilled, if it is a whole block of its prompt."""
        key = self.pending_key(seq, start, length)
        if key is None:
            return
        if key in self._blocks:
            self._blocks.move_to_end(key)
            return
        end = start + length
        self._blocks[key] = (seq.kv.k[:, :, start:end].clone(), seq.kv.v[:, :, start:end].clone())
        while len(self._blocks) > self.capacity_blocks:
            self._blocks.popitem(last=False)

    def stats(self) -> dict[str, int]:
        return {
            "blocks": len(self._blocks),
            "tokens": len(self._blocks) * self.block_tokens,
            "capacity_tokens": self.capacity_blocks * self.block_tokens,
            "block_tokens": self.block_tokens,
            "queries": self.queries,
            "hits": self.hits,
            "hit_tokens": self.hit_tokens,
            "query_tokens": self.query_tokens,
        }
