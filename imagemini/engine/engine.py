"""The inference engine: requests in, token deltas out, one batched step at a time.

    engine = Engine.from_checkpoint("models/bundled")
    seq_id = engine.add_request(prompt_ids, SamplingParams(max_tokens=32))
    while engine.has_work():
        for out in engine.step(): ...

`add_request` and `abort` are safe to call from any thread (they go through an inbox the
step drains); `step` runs on one thread only. `AsyncEngine` (async_engine.py) runs the
steps on a background thread and hands each request its outputs through asyncio.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import queue
from dataclasses import dataclass
from pathlib import Path

import torch

from imagemini.models.janus import Janus, load_janus, weights_digest
from imagemini.models.tokenizer import Tokenizer

from . import sampler
from .detokenizer import IncrementalDetokenizer
from .kv_cache import KVCache
from .model_runner import ModelRunner
from .params import SamplingParams
from .scheduler import Scheduler, SchedulerConfig
from .sequence import Sequence, SequenceOutput, Status

ENGINE_VERSION = "0.1.0"
log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class EngineConfig:
    dtype: str = "bfloat16"
    kv_budget_tokens: int = 65536
    row_tile: int = 16
    scheduler: SchedulerConfig = SchedulerConfig()

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}")
        if self.row_tile < 1:
            raise ValueError("row_tile must be positive")


class Engine:
    def __init__(self, model: Janus, tokenizer: Tokenizer, config: EngineConfig, weights_id: str = "") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.runner = ModelRunner(model, config.row_tile)
        # Keys/values are kept in float32 whatever the weights' dtype: attention then runs on
        # the fast float32 kernels (CPU bf16 batched matmul has no fast path) and loses nothing.
        self.kv_cache = KVCache(model.cfg.text, torch.float32, config.kv_budget_tokens)
        self.scheduler = Scheduler(config.scheduler, self.kv_cache)
        self.context_length = model.cfg.text.max_position_embeddings
        self.system_fingerprint = "fp_" + hashlib.sha256(
            f"{ENGINE_VERSION}|{weights_id}|{config.dtype}|tile{config.row_tile}|chunk{config.scheduler.prefill_chunk}".encode()
        ).hexdigest()[:12]
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sequences: dict[str, Sequence] = {}
        self._ids = itertools.count()

    @classmethod
    def from_checkpoint(cls, path: str | Path, config: EngineConfig | None = None) -> "Engine":
        config = config or EngineConfig()
        model = load_janus(path, DTYPES[config.dtype])
        return cls(model, Tokenizer.from_dir(path), config, weights_digest(path))

    # --- thread-safe entry points ----------------------------------------------------------
    def add_request(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        request_id: str | None = None,
        prompt_embeds: torch.Tensor | None = None,
    ) -> str:
        if not prompt_ids:
            raise ValueError("prompt must hold at least one token")
        if len(prompt_ids) + params.max_tokens > self.context_length:
            raise ValueError(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the context "
                f"length {self.context_length}"
            )
        if len(prompt_ids) + params.max_tokens > self.kv_cache.budget_tokens:
            raise ValueError("request is larger than the whole KV cache budget")
        bad = [t for t in prompt_ids if not 0 <= t < self.tokenizer.vocab_size]
        if bad:
            raise ValueError(f"prompt holds token ids outside the vocabulary: {bad[:5]}")
        request_id = request_id or f"seq-{next(self._ids)}"
        stops = tuple(params.stop_token_ids) or (self.tokenizer.special.eos,)
        params = params if params.stop_token_ids else _with_stop_ids(params, stops)
        seq = Sequence(
            request_id, list(prompt_ids), params, IncrementalDetokenizer(self.tokenizer, params.stop), prompt_embeds
        )
        self._inbox.put(("add", seq))
        return request_id

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))

    # --- the loop body (engine thread only) ------------------------------------------------
    def has_work(self) -> bool:
        return not self._inbox.empty() or self.scheduler.has_work()

    def step(self) -> list[SequenceOutput]:
        outputs = self._drain_inbox()
        chunks = self.scheduler.schedule()
        if not chunks:
            return outputs
        hidden = self.runner.forward(chunks)
        for c in chunks:
            c.seq.num_computed = c.end
        ready = [i for i, c in enumerate(chunks) if c.end == c.seq.num_tokens]
        if ready:
            seqs = [chunks[i].seq for i in ready]
            tokens, logprobs = sampler.sample(self.runner.text_logits(hidden[ready]), seqs)
            outputs.extend(self._advance(seq, tok, lp) for seq, tok, lp in zip(seqs, tokens, logprobs))
        return outputs

    def fail_all(self, message: str) -> list[SequenceOutput]:
        """After an unexpected error: end every live sequence with finish_reason 'error'."""
        outputs = []
        for seq in list(self.scheduler.running) + list(self.scheduler.waiting):
            outputs.append(self._finish(seq, "error", "", [], error=message))
        return outputs

    def _drain_inbox(self) -> list[SequenceOutput]:
        outputs = []
        while not self._inbox.empty():
            kind, item = self._inbox.get()
            if kind == "add":
                self._sequences[item.request_id] = item
                self.scheduler.add(item)
            elif (seq := self._sequences.get(item)) is not None:
                outputs.append(self._finish(seq, "abort", "", []))
        return outputs

    def _advance(self, seq: Sequence, token: int, logprob) -> SequenceOutput:
        if token in seq.params.stop_token_ids:
            seq.append(token)
            return self._finish(seq, "stop", seq.detokenizer.finish(), [])
        seq.append(token)
        text = seq.detokenizer.push(token)
        lps = [logprob] if logprob is not None else []
        if seq.detokenizer.stopped:
            return self._finish(seq, "stop", text, lps)
        if len(seq.output_ids) >= seq.params.max_tokens:
            return self._finish(seq, "length", text + seq.detokenizer.finish(), lps)
        return self._output(seq, [token], text, lps)

    def _finish(self, seq: Sequence, reason: str, text: str, lps: list, error: str | None = None) -> SequenceOutput:
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        self.scheduler.remove(seq)
        self._sequences.pop(seq.request_id, None)
        tokens = seq.output_ids[-1:] if reason in ("stop", "length") else []
        return self._output(seq, tokens, text, lps, error)

    def _output(self, seq: Sequence, tokens: list[int], text: str, lps: list, error: str | None = None) -> SequenceOutput:
        return SequenceOutput(
            request_id=seq.request_id,
            token_ids=tokens,
            text=text,
            logprobs=lps,
            finished=seq.status is Status.FINISHED,
            finish_reason=seq.finish_reason,
            num_prompt_tokens=len(seq.prompt_ids),
            num_output_tokens=len(seq.output_ids),
            error=error,
        )

    # --- convenience for scripts and tests ---------------------------------------------------
    def generate(self, prompts: list[list[int]], params: list[SamplingParams] | SamplingParams) -> list[dict]:
        """Run prompts to completion (all at once, batched); results in prompt order."""
        params = params if isinstance(params, list) else [params] * len(prompts)
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, params)]
        results = {i: {"token_ids": [], "text": "", "logprobs": [], "finish_reason": None} for i in ids}
        while self.has_work():
            for out in self.step():
                r = results[out.request_id]
                r["token_ids"] += out.token_ids
                r["text"] += out.text
                r["logprobs"] += out.logprobs
                r["finish_reason"] = out.finish_reason
        return [results[i] for i in ids]


def _with_stop_ids(params: SamplingParams, stop_ids: tuple[int, ...]) -> SamplingParams:
    from dataclasses import replace

    return replace(params, stop_token_ids=stop_ids)
