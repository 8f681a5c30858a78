"""Per-request sampling parameters: what the engine honours for one completion.

Values are checked here (ValueError on anything out of range) so that an engine fed
directly, not through the HTTP layer, refuses a bad request the same way the API does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .structured import Grammar

MAX_PARTIAL_IMAGES = 3  # previews per picture, as OpenAI's image API allows


def preview_points(num_codes: int, partial_images: int) -> tuple[int, ...]:
    """After how many of a picture's `num_codes` codes each of its `partial_images` previews is
    taken: evenly spaced, none at the start or the end (the picture itself)."""
    return tuple(num_codes * k // (partial_images + 1) for k in range(1, partial_images + 1))


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None  # None: a fresh random seed per request
    logprobs: bool = False
    top_logprobs: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()  # end the completion (finish_reason "stop"), not emitted
    banned_token_ids: tuple[int, ...] = ()  # never sampled (e.g. begin-of-image in text-only mode)
    image_output: bool = False  # begin-of-image starts an image of the checkpoint's code count
    guidance_scale: float = 5.0  # classifier-free guidance for image codes (1 = none)
    # Previews of each picture: its codes so far, this many times, evenly spaced over its codes
    # (SequenceOutput.image_previews). They are copies: the codes drawn are the same without them.
    partial_images: int = 0
    # Structured output (structured.py): the answer must match this compiled grammar. The engine
    # masks every other token, and ends the answer ("stop") as soon as the grammar is complete.
    grammar: "Grammar | None" = None
    # Thinking (needs the tokenizer's think delimiters). None: no thought handling at all.
    # 0: no thought; the delimiters are never sampled. n > 0: the prompt opened a thought of at
    # most n tokens, its closing delimiter included (the engine closes it at the n-th token).
    reasoning_budget: int | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        need(isinstance(self.max_tokens, int) and self.max_tokens >= 1, "max_tokens must be an integer >= 1")
        need(math.isfinite(self.temperature) and 0.0 <= self.temperature <= 2.0, "temperature must be in [0, 2]")
        need(math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]")
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            need(math.isfinite(value) and -2.0 <= value <= 2.0, f"{name} must be in [-2, 2]")
        for token, bias in self.logit_bias.items():
            need(isinstance(token, int) and token >= 0, "logit_bias keys must be token ids")
            need(math.isfinite(bias) and -100.0 <= bias <= 100.0, "logit_bias values must be in [-100, 100]")
        need(0 <= self.top_logprobs <= 20, "top_logprobs must be in [0, 20]")
        need(self.top_logprobs == 0 or self.logprobs, "top_logprobs requires logprobs")
        need(all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings")
        need(self.seed is None or isinstance(self.seed, int), "seed must be an integer")
        need(math.isfinite(self.guidance_scale) and 1.0 <= self.guidance_scale <= 20.0, "guidance_scale must be in [1, 20]")
        need(isinstance(self.partial_images, int) and 0 <= self.partial_images <= MAX_PARTIAL_IMAGES,
             f"partial_images must be an integer in [0, {MAX_PARTIAL_IMAGES}]")
        budget = self.reasoning_budget
        need(budget is None or (isinstance(budget, int) and budget >= 0), "reasoning_budget must be an integer >= 0")
        need(not budget or budget < self.max_tokens, "reasoning_budget must leave the answer at least one of max_tokens")

    @property
    def thinks(self) -> bool:
        """The completion starts inside a thought (the prompt ends with the think delimiter)."""
        return bool(self.reasoning_budget)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def uses_guidance(self) -> bool:
        return self.image_output and self.guidance_scale != 1.0

    @property
    def has_penalties(self) -> bool:
        return self.frequency_penalty != 0.0 or self.presence_penalty != 0.0
