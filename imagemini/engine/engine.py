"""The inference engine: requests in, token deltas out, one batched step at a time.

    engine = Engine.from_checkpoint("models/bundled")
    seq_id = engine.add_request(prompt_ids, SamplingParams(max_tokens=32))
    while engine.has_work():
        for out in engine.step(): ...

`add_request` and `abort` are safe to call from any thread (they go through an inbox the
step drains); `step` runs on one thread only. `AsyncEngine` (async_engine.py) runs the
steps in a process of their own and hands each request its outputs through asyncio.

Constrained rows (structured.py): a request with `params.grammar` samples only tokens its
grammar allows and ends ("stop") when the grammar is complete; as its max_tokens runs out it is
steered onto a closing of what is open (closing.py), so it ends complete ("length"); one with `reasoning_budget > 0`
starts inside a thought (the prompt opened it), whose text goes to `SequenceOutput.reasoning`,
and which the engine closes with the end-of-thinking token when the budget is spent.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import queue
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from imagemini.models.janus import Janus, load_janus, weights_digest
from imagemini.models.tokenizer import Tokenizer

from . import sampler, structured
from .detokenizer import IncrementalDetokenizer
from .kv_cache import KVCache
from .model_runner import ModelRunner
from .numerics import numerics_description
from .params import SamplingParams, preview_points
from .prefix_cache import PrefixCache
from .scheduler import Scheduler, SchedulerConfig
from .sequence import ImagePreview, Sequence, SequenceOutput, Status
from .structured import GrammarCompiler, RowMasks
from .transfer import Transfer

ENGINE_VERSION = "0.1.0"
log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Rows per matmul tile where `row_tile` is "auto": 16 on a CPU (oneDNN's kernel for a tile of 16
# is about as fast per row as any larger one there); 64 on a GPU, where decoding reads the weights
# from memory once per tile, so a larger tile serves more sequences per weight pass, and the
# padding rows cost arithmetic the memory-bound step has to spare.
AUTO_ROW_TILE = {"cpu": 16, "cuda": 64}
ATTENTION = ("per_sequence", "batched")


def check_device(device: str) -> str:
    """The device's kind ("cpu" or "cuda"); ValueError (saying why) for one this machine lacks."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in AUTO_ROW_TILE:
        raise ValueError(f"device must be cpu, cuda or cuda:N, not {device!r}")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device}: this torch ({torch.__version__}) sees no CUDA GPU")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return parsed.type


@dataclass(frozen=True)
class EngineConfig:
    dtype: str = "bfloat16"
    kv_budget_tokens: int = 65536
    # Fixed row tiles make a request's output independent of its batch (the seed guarantee).
    # None: plain batched matmuls, for measuring what the guarantee costs (`bench text`);
    # "auto": AUTO_ROW_TILE of the device.
    row_tile: int | None | str = "auto"
    # Where weights, KV cache and sampling live: "cpu", "cuda" or "cuda:N".
    device: str = "cpu"
    # How decode rows attend (model_runner.py): "per_sequence" (each sequence over its own cache,
    # the CPU's default) or "batched" (every decode row of a step in one fixed-block pass over a
    # shared KV pool, no Python loop per sequence: the GPU's default); None: the device's default.
    attention: str | None = None
    scheduler: SchedulerConfig = SchedulerConfig()
    # A structured answer is steered to close within max_tokens (GrammarMatcher.settle); False:
    # it is cut where the budget ends, for measuring what the steering costs (`bench structured`).
    close_within_budget: bool = True
    # Keys/values of prompt prefixes kept for later prompts (prefix_cache.py), in tokens, held
    # beside the KV budget and rounded down to whole prefill chunks; 0: off.
    prefix_cache_tokens: int = 16384

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}")
        kind = check_device(self.device)
        # Frozen: the resolved values are set once, here, so every reader sees the same.
        if self.row_tile == "auto":
            object.__setattr__(self, "row_tile", AUTO_ROW_TILE[kind])
        if self.row_tile is not None and (not isinstance(self.row_tile, int) or self.row_tile < 1):
            raise ValueError("row_tile must be a positive integer, None or 'auto'")
        if self.attention is None:
            object.__setattr__(self, "attention", "batched" if kind == "cuda" else "per_sequence")
        if self.attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}")
        if self.prefix_cache_tokens != 0 and self.prefix_cache_tokens < self.scheduler.prefill_chunk:
            raise ValueError(
                f"prefix_cache_tokens must be 0 (off) or at least one prefill chunk ({self.scheduler.prefill_chunk})"
            )


@dataclass(frozen=True)
class RequestLimits:
    """What a request must fit to be admitted: checked in `Engine.add_request`, and before a
    request leaves the API process for the engine process (async_engine.py), with the same code."""

    context_length: int
    kv_budget_tokens: int
    vocab_size: int
    think: tuple[int, int] | None
    num_image_tokens: int
    boi: int | None
    codes: range = range(0)  # the ids of image codes, which a prompt may hold (a source echo)

    def check(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Raise ValueError (the message says why) for a request this engine cannot run."""
        if not prompt_ids:
            raise ValueError("prompt must hold at least one token")
        if len(prompt_ids) + params.max_tokens > self.context_length:
            raise ValueError(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the context "
                f"length {self.context_length}"
            )
        copies = 2 if params.uses_guidance else 1  # a guided picture's unconditional partner reserves as much
        if copies * (len(prompt_ids) + params.max_tokens) > self.kv_budget_tokens:
            partner = " (twice: a guided picture's unconditional partner needs the same room)" if copies == 2 else ""
            raise ValueError(f"request is larger than the whole KV cache budget{partner}")
        bad = [t for t in prompt_ids if not (0 <= t < self.vocab_size or t in self.codes)]
        if bad:
            raise ValueError(f"prompt holds token ids outside the vocabulary and the image codes: {bad[:5]}")
        if params.reasoning_budget is not None and self.think is None:
            raise ValueError("this model has no thinking delimiters: it cannot reason")
        if params.thinks and prompt_ids[-1] != self.think[0]:
            raise ValueError("a thought must be opened by the prompt: it must end with the think delimiter")
        if self.opens_image(prompt_ids, params) and params.max_tokens < self.num_image_tokens + 1:
            raise ValueError(f"max_tokens must be at least {self.num_image_tokens + 1} to draw an image")
        shortest = params.grammar.min_tokens if params.grammar is not None else None
        answer_budget = params.max_tokens - (params.reasoning_budget or 0)
        if shortest is not None and shortest > answer_budget:
            raise ValueError(
                f"the shortest answer valid under the grammar takes {shortest} tokens; max_tokens leaves the answer {answer_budget}"
            )

    def opens_image(self, prompt_ids: list[int], params: SamplingParams) -> bool:
        """The prompt itself opens an image (Janus-Pro's own pipeline): the answer starts drawing."""
        return params.image_output and prompt_ids[-1] == self.boi


class Engine:
    def __init__(self, model: Janus, tokenizer: Tokenizer, config: EngineConfig, weights_id: str = "") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.transfer = Transfer(config.device)  # every host read of a step goes through it: counted
        self.steps_run = 0  # steps that ran the model (benchmarks: host reads per step)
        self.runner = ModelRunner(model, config.row_tile, config.attention, self.transfer)
        # On a CPU keys/values are kept in float32 whatever the weights' dtype: attention then
        # runs on the fast float32 kernels (CPU bf16 batched matmul has no fast path) and loses
        # nothing. The batched plan on a GPU keeps them in the weights' dtype, as transformers
        # does: decoding there is bound by memory traffic, and the cache is read every step
        # (attention still computes in float32, block by block).
        on_gpu_batched = self.transfer.on_gpu and config.attention == "batched"
        kv_dtype = DTYPES[config.dtype] if on_gpu_batched else torch.float32
        self.kv_cache = KVCache(model.cfg.text, kv_dtype, config.kv_budget_tokens, config.device, config.attention == "batched")
        chunk = config.scheduler.prefill_chunk
        self.prefix_cache = PrefixCache(chunk, config.prefix_cache_tokens) if config.prefix_cache_tokens else None
        self.scheduler = Scheduler(config.scheduler, self.kv_cache, self.prefix_cache)
        self.context_length = model.cfg.text.max_position_embeddings
        self.num_image_tokens = model.cfg.vq.num_patches**2
        self.code_offset = model.cfg.text.vocab_size  # image codes live above the text vocabulary
        # A padded vocabulary (102,400 rows for a ~100K tokenizer) has rows with no token: their
        # logits are cut off before sampling, as vLLM does (and gaps in the tokenizer's ids get
        # -inf), so no such id is drawn, listed in top_logprobs or handed to the detokenizer, and
        # the probabilities are the tokens' own.
        self.num_tokens = min(tokenizer.vocab_size, model.cfg.text.vocab_size)
        gaps = sorted(i for i in tokenizer.no_token_ids if i < self.num_tokens)
        self._gaps = torch.tensor(gaps, dtype=torch.long).to(config.device)
        special = tokenizer.special
        # The thought's delimiters (think_start, think_end), when the tokenizer has both.
        self.think = (special.think_start, special.think_end) if None not in (special.think_start, special.think_end) else None
        self.grammars = GrammarCompiler(tokenizer, model.cfg.text.vocab_size)
        self.system_fingerprint = "fp_" + hashlib.sha256(
            f"{ENGINE_VERSION}|{weights_id}|{config.dtype}|tile{config.row_tile}|chunk{config.scheduler.prefill_chunk}|"
            f"{numerics_description(config.device)}".encode()
        ).hexdigest()[:12]
        self.limits = RequestLimits(
            self.context_length, self.kv_cache.budget_tokens, tokenizer.vocab_size, self.think,
            self.num_image_tokens, special.boi, range(self.code_offset, self.code_offset + model.cfg.vq.num_embeddings),
        )
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sequences: dict[str, Sequence] = {}
        self._ids = itertools.count()

    @classmethod
    def from_checkpoint(cls, path: str | Path, config: EngineConfig | None = None) -> "Engine":
        config = config or EngineConfig()
        model = load_janus(path, DTYPES[config.dtype], config.device)
        return cls(model, Tokenizer.from_dir(path), config, weights_digest(path))

    # --- thread-safe entry points ----------------------------------------------------------
    def add_request(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        request_id: str | None = None,
        prompt_embeds: torch.Tensor | None = None,
    ) -> str:
        self.limits.check(prompt_ids, params)
        request_id = request_id or f"seq-{next(self._ids)}"
        stops = tuple(params.stop_token_ids) or (self.tokenizer.special.eos,)
        params = params if params.stop_token_ids else replace(params, stop_token_ids=stops)
        seq = Sequence(
            request_id, list(prompt_ids), params, IncrementalDetokenizer(self.tokenizer, params.stop), prompt_embeds,
            code_offset=self.code_offset,
        )
        if params.thinks:
            seq.thought = IncrementalDetokenizer(self.tokenizer)
        if self.prefix_cache is not None:
            seq.block_hashes = self.prefix_cache.block_hashes(seq.prompt_ids, prompt_embeds)
        if params.uses_guidance:
            seq.cfg_partner = Sequence(f"{request_id}/uncond", [], params, None, code_offset=self.code_offset)
        if self.limits.opens_image(prompt_ids, params):
            self._start_image(seq)
        self._inbox.put(("add", seq))
        return request_id

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))

    # --- the loop body (engine thread only) ------------------------------------------------
    @property
    def host_reads(self) -> int:
        """Synchronising reads from the device so far (one a step, two when a structured answer's
        budget needs its tokens first); on a CPU the same count of conversions."""
        return self.transfer.reads

    def has_work(self) -> bool:
        return not self._inbox.empty() or self.scheduler.has_work()

    def step(self) -> list[SequenceOutput]:
        outputs = self._drain_inbox()
        chunks = self.scheduler.schedule()
        if not chunks:
            return outputs
        hidden = self.runner.forward(chunks)
        self.steps_run += 1
        row_of: dict[int, int] = {}
        for i, c in enumerate(chunks):
            if c.seq.block_hashes:
                self.prefix_cache.store(c.seq, c.start, c.length)
            c.seq.num_computed = c.end
            if c.end == c.seq.num_tokens:
                row_of[id(c.seq)] = i  # this row's hidden state predicts the next token
        mains = [c.seq for c in chunks if id(c.seq) in row_of and c.seq.detokenizer is not None]
        text = [s for s in mains if not s.in_image]
        image = [s for s in mains if s.in_image]
        # Text tokens (with their logprobs) and image codes are sampled on the device and read in one go.
        drawn = self._draw_text(hidden, row_of, text) if text else None
        codes = sampler.sample_rows(self._guided_image_logits(hidden, row_of, image), image, self.transfer) if image else None
        host = self.transfer.read(*(drawn.tensors() if drawn else ()), *((codes,) if image else ()))
        if drawn is not None:
            tokens, logprobs = drawn.entries(host)
            outputs.extend(self._advance(seq, tok, lp) for seq, tok, lp in zip(text, tokens, logprobs))
        if image:
            outputs.extend(self._advance_image(seq, code) for seq, code in zip(image, host[-1]))
        return [o for o in outputs if o.finished or o.token_ids or o.text or o.images or o.reasoning or o.image_previews]

    def _draw_text(self, hidden: torch.Tensor, row_of: dict[int, int], text: list[Sequence]) -> sampler.Drawn:
        logits = self.runner.text_logits(hidden.index_select(0, self.transfer.tensor([row_of[id(s)] for s in text])))
        if logits.shape[1] > self.num_tokens:
            logits = logits[:, : self.num_tokens]
        if len(self._gaps):  # ids inside the tokenizer's range that have no token
            logits = logits.index_fill(1, self._gaps, float("-inf"))
        steered = self.config.close_within_budget and any(s.matcher is not None and not s.thinking for s in text)
        settle = self._settle_rows(text) if steered else None
        return sampler.draw(logits, text, self._row_masks(text), settle, self.transfer)

    def _row_masks(self, seqs: list[Sequence]) -> RowMasks | None:
        """This step's allowed tokens of every constrained row (thoughts, answers after them, grammars)."""
        rows = [i for i, s in enumerate(seqs) if s.constrained]
        if not rows:
            return None
        masks = structured.bitmask(len(rows), self.code_offset)
        for j, i in enumerate(rows):
            self._constrain(seqs[i], masks[j])
        return RowMasks(rows, masks)

    def _settle_rows(self, seqs: list[Sequence]):
        """The sampler's `settle` for this step: each structured answer keeps room for its closing."""

        def settle(tokens: list[int]) -> list[int]:
            for i, seq in enumerate(seqs):
                if seq.matcher is not None and not seq.thinking and tokens[i] not in seq.params.stop_token_ids:
                    tokens_left = seq.params.max_tokens - len(seq.output_ids) - 1
                    tokens[i] = seq.matcher.settle(tokens[i], tokens_left, seq.params.stop_token_ids[0])
            return tokens

        return settle

    def _constrain(self, seq: Sequence, row) -> None:
        if seq.thinking:
            if seq.num_reasoning_tokens + 1 >= seq.params.reasoning_budget:
                row.zero_()  # the budget is spent: the thought closes now
                structured.set_tokens(row, [self.think[1]], True)
            else:  # a thought cannot end the completion, open another thought, or draw
                banned = [*seq.params.stop_token_ids, self.think[0], self.tokenizer.special.boi]
                structured.set_tokens(row, [t for t in banned if t is not None], False)
        elif seq.matcher is not None:
            seq.matcher.fill(row)  # special tokens (the think delimiters too) are never in a JSON answer
        elif self.think is not None:
            structured.set_tokens(row, self.think, False)

    def _guided_image_logits(self, hidden: torch.Tensor, row_of: dict[int, int], seqs: list[Sequence]) -> torch.Tensor:
        """uncond + scale·(cond − uncond) per image row (just cond where guidance is off)."""
        guided = [i for i, s in enumerate(seqs) if s.cfg_partner is not None]
        rows = [row_of[id(s)] for s in seqs] + [row_of[id(seqs[i].cfg_partner)] for i in guided]
        logits = self.runner.image_logits(hidden.index_select(0, self.transfer.tensor(rows)))
        cond, uncond = logits[: len(seqs)], logits[len(seqs) :]
        if not guided:
            return cond
        scales = self.transfer.tensor([seqs[i].params.guidance_scale for i in guided], logits.dtype)[:, None]
        if len(guided) == len(seqs):
            return uncond + scales * (cond - uncond)
        index = self.transfer.tensor(guided)
        return cond.index_copy(0, index, uncond + scales * (cond.index_select(0, index) - uncond))

    def _start_image(self, seq: Sequence) -> None:
        seq.image_tokens_left = self.num_image_tokens
        partner = seq.cfg_partner
        if partner is not None:
            # Unconditional context: the same length, every token but BOS and BOI padded out.
            keep = {self.tokenizer.special.bos, self.tokenizer.special.boi}
            context = [seq.token_at(p) for p in range(seq.num_tokens)]
            partner.prompt_ids = [t if t in keep else self.tokenizer.special.pad for t in context]
            partner.output_ids = []
            partner.num_computed = 0

    def _advance_image(self, seq: Sequence, code: int) -> SequenceOutput:
        seq.append(self.code_offset + code)
        seq.image_tokens_left -= 1
        if seq.cfg_partner is not None and seq.in_image:
            seq.cfg_partner.output_ids.append(self.code_offset + code)
        if seq.in_image:
            if seq.params.partial_images:
                self._take_preview(seq)
            return self._output(seq, [], "", [])
        seq.new_images.append(seq.current_image())
        seq.append(self.tokenizer.special.eoi)
        if len(seq.output_ids) >= seq.params.max_tokens:
            return self._finish(seq, "length", seq.detokenizer.finish(), [])
        return self._output(seq, [], "", [])

    def _take_preview(self, seq: Sequence) -> None:
        """At a preview point, a copy of the picture's codes so far; the drawing goes on unchanged."""
        drawn = self.num_image_tokens - seq.image_tokens_left
        points = preview_points(self.num_image_tokens, seq.params.partial_images)
        if drawn in points:
            picture = (seq.num_image_tokens - 1) // self.num_image_tokens
            seq.new_previews.append(ImagePreview(picture, points.index(drawn), seq.current_image()))

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

    def _advance_thought(self, seq: Sequence, token: int) -> SequenceOutput:
        """One token of the thought: its text goes to `reasoning`; its end starts the answer."""
        seq.append(token)
        seq.num_reasoning_tokens += 1
        reasoning = seq.thought.push(token)
        if token == self.think[1]:
            seq.thinking = False
            reasoning += seq.thought.finish()
        if len(seq.output_ids) >= seq.params.max_tokens:  # unreachable: the budget leaves the answer room
            return self._finish(seq, "length", seq.detokenizer.finish(), [], reasoning=reasoning)
        return self._output(seq, [token], "", [], reasoning=reasoning)

    def _advance(self, seq: Sequence, token: int, logprob) -> SequenceOutput:
        if seq.thinking:
            return self._advance_thought(seq, token)
        if token in seq.params.stop_token_ids:
            seq.append(token)
            return self._finish(seq, self._stop_reason(seq), seq.detokenizer.finish(), [])
        if token == self.tokenizer.special.boi and seq.params.image_output:
            # An image is all or nothing: without room for every code and the end marker, stop here.
            if len(seq.output_ids) + 1 + self.num_image_tokens + 1 > seq.params.max_tokens:
                return self._finish(seq, "length", seq.detokenizer.finish(), [])
            seq.append(token)
            self._start_image(seq)
            return self._output(seq, [token], "", [logprob] if logprob is not None else [])
        seq.append(token)
        if seq.matcher is not None and not seq.matcher.consume(token):
            log.error("request %s: grammar refused token %d: %s", seq.request_id, token, seq.matcher.error)
            return self._finish(seq, "error", "", [], error="internal error in structured output")
        text = seq.detokenizer.push(token)
        lps = [logprob] if logprob is not None else []
        if seq.detokenizer.stopped or (seq.matcher is not None and seq.matcher.done):
            return self._finish(seq, self._stop_reason(seq), text + seq.detokenizer.finish(), lps)
        if len(seq.output_ids) >= seq.params.max_tokens:
            return self._finish(seq, "length", text + seq.detokenizer.finish(), lps)
        return self._output(seq, [token], text, lps)

    @staticmethod
    def _stop_reason(seq: Sequence) -> str:
        """A structured answer that the budget steered to its end ended by "length", though complete."""
        return "length" if seq.matcher is not None and seq.matcher.steered else "stop"

    def _finish(
        self, seq: Sequence, reason: str, text: str, lps: list, error: str | None = None, reasoning: str = ""
    ) -> SequenceOutput:
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        self.scheduler.remove(seq)
        self._sequences.pop(seq.request_id, None)
        tokens = seq.output_ids[-1:] if reason in ("stop", "length") else []
        return self._output(seq, tokens, text, lps, error, reasoning)

    def _output(
        self, seq: Sequence, tokens: list[int], text: str, lps: list, error: str | None = None, reasoning: str = ""
    ) -> SequenceOutput:
        images, seq.new_images = seq.new_images, []
        previews, seq.new_previews = seq.new_previews, []
        return SequenceOutput(
            reasoning=reasoning,
            num_reasoning_tokens=seq.num_reasoning_tokens,
            images=images,
            image_previews=previews,
            num_image_tokens=seq.num_image_tokens,
            request_id=seq.request_id,
            token_ids=tokens,
            text=text,
            logprobs=lps,
            finished=seq.status is Status.FINISHED,
            finish_reason=seq.finish_reason,
            num_prompt_tokens=len(seq.prompt_ids),
            num_output_tokens=len(seq.output_ids),
            error=error,
            num_cached_tokens=seq.num_cached_tokens,
        )

    # --- convenience for scripts and tests ---------------------------------------------------
    def generate(
        self,
        prompts: list[list[int]],
        params: list[SamplingParams] | SamplingParams,
        prompt_embeds: list[torch.Tensor | None] | None = None,
    ) -> list[dict]:
        """Run prompts to completion (all at once, batched); results in prompt order."""
        params = params if isinstance(params, list) else [params] * len(prompts)
        embeds = prompt_embeds or [None] * len(prompts)
        ids = [self.add_request(p, sp, prompt_embeds=e) for p, sp, e in zip(prompts, params, embeds)]
        results = {
            i: {"token_ids": [], "text": "", "reasoning": "", "num_reasoning_tokens": 0, "logprobs": [], "images": [],
                "finish_reason": None, "num_cached_tokens": 0}
            for i in ids
        }
        while self.has_work():
            for out in self.step():
                r = results[out.request_id]
                r["token_ids"] += out.token_ids
                r["text"] += out.text
                r["logprobs"] += out.logprobs
                r["images"] += out.images
                r["reasoning"] += out.reasoning
                r["num_reasoning_tokens"] = out.num_reasoning_tokens
                r["num_cached_tokens"] = out.num_cached_tokens
                r["finish_reason"] = out.finish_reason
        return [results[i] for i in ids]
