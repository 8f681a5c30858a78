"""One completion being generated: its tokens, its place in the KV cache, its randomness.

The engine speaks token ids only; text appears here only through the detokenizer, which
the engine needs to end a sequence on a stop string.
"""

from __future__ import annotations

import enum
import random
import secrets
import sys
from collections import Counter
from dataclasses import dataclass, field

import torch

from .detokenizer import IncrementalDetokenizer
from .kv_cache import SequenceKV
from .params import SamplingParams
from .structured import GrammarMatcher


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, logprob), best first


@dataclass
class ImagePreview:
    """A picture being drawn, as far as it is drawn (SamplingParams.partial_images)."""

    picture: int  # which picture of the answer: 0 is the first one drawn
    number: int  # which preview of that picture: 0, 1, ...
    codes: list[int]  # the codes drawn so far, in drawing order


@dataclass
class SequenceOutput:
    """What one engine step produced for one sequence (a delta)."""

    request_id: str
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprob]
    finished: bool
    finish_reason: str | None  # "stop", "length", "abort", "error"
    num_prompt_tokens: int
    num_output_tokens: int
    error: str | None = None
    images: list[list[int]] = field(default_factory=list)  # image code grids completed in this delta
    num_image_tokens: int = 0  # image codes generated so far (part of num_output_tokens)
    reasoning: str = ""  # text of the thought released in this delta
    num_reasoning_tokens: int = 0  # thought tokens so far, closing delimiter included (part of num_output_tokens)
    image_previews: list[ImagePreview] = field(default_factory=list)  # taken in this delta, in order
    num_cached_tokens: int = 0  # prompt tokens whose keys/values came from the prefix cache (prefix_cache.py)

    def merge(self, later: "SequenceOutput") -> "SequenceOutput":
        """One delta saying what this one and the `later` one say together."""
        return SequenceOutput(
            request_id=self.request_id,
            token_ids=self.token_ids + later.token_ids,
            text=self.text + later.text,
            logprobs=self.logprobs + later.logprobs,
            finished=later.finished,
            finish_reason=later.finish_reason,
            num_prompt_tokens=later.num_prompt_tokens,
            num_output_tokens=later.num_output_tokens,
            error=later.error,
            images=self.images + later.images,
            num_image_tokens=later.num_image_tokens,
            reasoning=self.reasoning + later.reasoning,
            num_reasoning_tokens=later.num_reasoning_tokens,
            image_previews=self.image_previews + later.image_previews,
            num_cached_tokens=later.num_cached_tokens,
        )


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    detokenizer: IncrementalDetokenizer
    prompt_embeds: torch.Tensor | None = None  # [prompt_len, hidden] when the prompt holds images
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    num_computed: int = 0  # tokens whose keys/values are in the cache
    kv: SequenceKV | None = None
    finish_reason: str | None = None
    aborted: bool = False
    token_counts: Counter = field(default_factory=Counter)
    # Image output. Output ids at or above `code_offset` are image codes (code = id - offset).
    code_offset: int = sys.maxsize
    image_tokens_left: int = 0  # > 0 while an image is being drawn
    cfg_partner: "Sequence | None" = None  # the unconditional row of classifier-free guidance
    new_images: list[list[int]] = field(default_factory=list)
    new_previews: list[ImagePreview] = field(default_factory=list)
    num_image_tokens: int = 0
    # Thinking: the completion opens with a thought when params.reasoning_budget > 0.
    thought: IncrementalDetokenizer | None = None  # the thought's text (no stop strings)
    thinking: bool = False  # inside the thought now
    num_reasoning_tokens: int = 0
    matcher: GrammarMatcher | None = None  # structured output: where the answer stands in its grammar
    # Prefix cache (prefix_cache.py): the keys of the prompt's whole blocks (none: the cache is off,
    # or an unconditional partner), the next block to look up, and the prompt tokens taken from it.
    block_hashes: list[bytes] = field(default_factory=list)
    next_probe: int = 0
    num_cached_tokens: int = 0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        seed = self.params.seed if self.params.seed is not None else secrets.randbits(63)
        # String seeding is stable across processes and Python versions (sha512 of the text).
        self.rng = random.Random(f"imagemini:{seed}")
        self.thinking = self.params.thinks
        if self.params.grammar is not None and self.detokenizer is not None:
            self.matcher = self.params.grammar.matcher()

    @property
    def constrained(self) -> bool:
        """Some tokens are off limits this step beyond the fixed bans: a thought, an answer after
        (or instead of) a thought, a grammar."""
        return self.params.reasoning_budget is not None or self.matcher is not None

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def in_image(self) -> bool:
        return self.image_tokens_left > 0

    def current_image(self) -> list[int]:
        codes = []
        for token in reversed(self.output_ids):
            if token < self.code_offset:
                break
            codes.append(token - self.code_offset)
        return codes[::-1]

    def token_at(self, position: int) -> int:
        n = len(self.prompt_ids)
        return self.prompt_ids[position] if position < n else self.output_ids[position - n]

    def append(self, token_id: int) -> None:
        self.output_ids.append(token_id)
        if token_id >= self.code_offset:
            self.num_image_tokens += 1
        else:
            self.token_counts[token_id] += 1
