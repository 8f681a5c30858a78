"""Which sequences run in the next step, and which rows of each.

Continuous batching: sequences join (when the KV cache can hold their whole reservation
and a slot is free) and leave between steps. Every running sequence that is decoding gets
its one row each step; prompts are prefilled in chunks on top, up to a per-step row budget,
so a long prompt never stalls the decoders for more than one chunk.

Chunk borders sit at fixed multiples of `prefill_chunk` from the start of each prompt, never
where the load happens to cut: the arithmetic of a prompt is then the same under any load.
The same borders let a prompt take its first chunks from the prefix cache (prefix_cache.py);
a prompt whose next chunk another prompt computes in this step waits one step and takes it
from the cache then, so the n choices of one request prefill their prompt once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .kv_cache import KVCache
from .model_runner import Chunk
from .prefix_cache import PrefixCache
from .sequence import Sequence, Status


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 32
    prefill_chunk: int = 256
    max_prefill_rows: int = 512

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.prefill_chunk < 1 or self.max_prefill_rows < 1:
            raise ValueError("scheduler sizes must be positive")


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv_cache: KVCache, prefix_cache: PrefixCache | None = None) -> None:
        self.config = config
        self.kv_cache = kv_cache
        self.prefix_cache = prefix_cache
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        for s in (seq, seq.cfg_partner):
            if s is not None and s.kv is not None:
                self.kv_cache.free(s.kv)
                s.kv = None

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            room = len(seq.prompt_ids) + seq.params.max_tokens
            if not self.kv_cache.can_allocate(room, 2 if seq.cfg_partner is not None else 1):
                break  # first come, first served: later requests do not overtake it
            self.waiting.popleft()
            if seq.cfg_partner is not None:
                seq.kv, seq.cfg_partner.kv = self.kv_cache.allocate_pair(room)
            else:
                seq.kv = self.kv_cache.allocate(room)
            seq.status = Status.RUNNING
            self.running.append(seq)

    def schedule(self) -> list[Chunk]:
        self._admit()
        chunks: list[Chunk] = []
        prefill_rows = 0
        chunk = self.config.prefill_chunk
        pending: set[bytes] = set()  # keys of the prompt blocks computed in this step
        for seq in self.running:
            if seq.num_computed >= seq.num_tokens:
                continue
            if seq.num_computed >= len(seq.prompt_ids):  # decoding: the new rows, always
                start, end = seq.num_computed, seq.num_tokens
            else:
                if seq.block_hashes and not self.prefix_cache.reuse(seq, pending):
                    continue
                start = seq.num_computed
                end = min((start // chunk + 1) * chunk, len(seq.prompt_ids))
                if prefill_rows and prefill_rows + end - start > self.config.max_prefill_rows:
                    continue
                prefill_rows += end - start
                if seq.block_hashes and (key := self.prefix_cache.pending_key(seq, start, end - start)):
                    pending.add(key)
            chunks.append(Chunk(seq, start, end - start))
            if end == seq.num_tokens and seq.in_image and seq.cfg_partner is not None:
                # The unconditional row must be ready in the same step as the conditional
                # one: its context (re-filled at each image start) goes in whole.
                chunks.extend(self._prefill_chunks(seq.cfg_partner, seq.cfg_partner.num_tokens))
        return chunks

    def _prefill_chunks(self, seq: Sequence, upto: int) -> list[Chunk]:
        """Rows num_computed..upto of `seq`, cut at the fixed chunk borders."""
        chunk = self.config.prefill_chunk
        out, start = [], seq.num_computed
        while start < upto:
            end = min((start // chunk + 1) * chunk, upto)
            out.append(Chunk(seq, start, end - start))
            start = end
        return out
