"""Reasoning: from the request's reasoning fields to whether the answer opens with a thought, and its budget.

    reasoning = reasoning_plan(request, card)                   # thinking on/off, exclude; 400 on conflicts
    ids = prompts.encode(messages, **reasoning.template_options)  # the template opens the thought
    budget, thought = reasoning.budgets(request, budget, len(ids), limits)

Thinking needs a checkpoint whose tokenizer has think delimiters and whose template
opens a thought with `thinking=True` (`thinking_supported`); a request that asks to think on any
other checkpoint is a 400. The thought's budget is in tokens, its closing delimiter included:
- `reasoning.max_tokens: n` -> the thought has at most n tokens (0 = no thought); n must be below
  max_completion_tokens; without max_completion_tokens the completion budget becomes n + the
  default answer budget;
- `reasoning.effort` (or `reasoning_effort`) -> max_completion_tokens x EFFORT_PERCENT // 100,
  clamped to [1, max_completion_tokens - 1] (OpenRouter's proportions); `none` = off;
- `reasoning.enabled: true` or `reasoning: {}` -> the default effort (medium); `enabled: false` = off;
- `include_reasoning: true` == `reasoning: {}`, `false` == `reasoning: {"exclude": true}` (on a
  checkpoint that cannot think, `include_reasoning: false` alone is accepted and does nothing).
The thought counts in completion_tokens and in completion_tokens_details.reasoning_tokens (also
when excluded); the engine closes it itself when its budget is spent, so the answer always keeps
max_completion_tokens - budget tokens. Grammars and stop strings apply to the answer only.
"""

from __future__ import annotations

from dataclasses import dataclass

from imagemini.models.tokenizer import Tokenizer

from .errors import bad_request
from .model_card import LoadedCard
from .sampling import Limits
from .schemas import ChatCompletionRequest

# Percent of the completion budget a thought may take, per effort (OpenRouter's proportions).
EFFORT_PERCENT = {"none": 0, "minimal": 10, "low": 20, "medium": 50, "high": 80, "xhigh": 95, "max": 95}
DEFAULT_EFFORT = "medium"


def thinking_supported(tokenizer: Tokenizer) -> bool:
    """The checkpoint can think: both think delimiters, and a template that opens a thought."""
    special = tokenizer.special
    if special.think_start is None or special.think_end is None:
        return False
    user = [{"role": "user", "content": "x"}]
    opened = tokenizer.render_chat(user, thinking=True)
    return opened != tokenizer.render_chat(user) and tokenizer.encode(opened)[-1:] == [special.think_start]


@dataclass(frozen=True)
class ReasoningPlan:
    thinking: bool = False
    exclude: bool = False
    effort: str | None = None
    max_tokens: int | None = None

    @property
    def template_options(self) -> dict[str, bool]:
        return {"thinking": True} if self.thinking else {}

    @property
    def shows_thought(self) -> bool:
        """The thought's text goes out with the answer (reasoning on and not excluded)."""
        return self.thinking and not self.exclude

    def check_draws_first(self, drawing_first: bool) -> None:
        if self.thinking and drawing_first:
            raise bad_request(
                "reasoning cannot be combined with an answer that starts with an image (modalities [\"image\"])",
                "reasoning", "unsupported_value",
            )

    def budgets(self, request: ChatCompletionRequest, budget: int, prompt_tokens: int, limits: Limits) -> tuple[int, int]:
        """(completion budget, thought budget) once the prompt is known; thought 0 = no thought."""
        if not self.thinking:
            return budget, 0
        explicit = request.max_completion_tokens or request.max_tokens
        if self.max_tokens is not None:
            if explicit is None:  # the thought comes on top of the default answer budget
                budget = min(limits.max_sequence_tokens - prompt_tokens, self.max_tokens + limits.default_max_tokens)
            if self.max_tokens >= budget:
                raise bad_request(
                    f"reasoning.max_tokens ({self.max_tokens}) must be less than the completion budget ({budget} tokens, "
                    "max_completion_tokens or what the context leaves): the answer needs room",
                    "reasoning.max_tokens", "invalid_value",
                )
            return budget, self.max_tokens
        if budget < 2:
            raise bad_request(
                "reasoning needs max_completion_tokens >= 2 (at least one thought token and one answer token)",
                "max_completion_tokens", "invalid_value",
            )
        percent = EFFORT_PERCENT[self.effort or DEFAULT_EFFORT]
        return budget, min(max(budget * percent // 100, 1), budget - 1)


def reasoning_plan(request: ChatCompletionRequest, card: LoadedCard) -> ReasoningPlan:
    r, top, include = request.reasoning, request.reasoning_effort, request.include_reasoning
    if r is not None and r.effort is not None and r.max_tokens is not None:
        raise bad_request("reasoning.effort and reasoning.max_tokens are exclusive: give one", "reasoning", "invalid_value")
    if top is not None and r is not None and (r.max_tokens is not None or r.effort not in (None, top)):
        raise bad_request(
            "reasoning_effort is the shorthand of reasoning.effort: it cannot be combined with reasoning.max_tokens "
            "or a different reasoning.effort", "reasoning_effort", "invalid_value",
        )
    if r is None and top is None and include is None:
        return ReasoningPlan()
    if not card_thinks(card):
        if r is None and top is None and include is False:
            return ReasoningPlan()  # nothing to exclude: accepted as before
        asking = [(r is not None and _asks(r.enabled, r.effort, r.max_tokens), "reasoning"),
                  (top not in (None, "none"), "reasoning_effort"), (include is True, "include_reasoning")]
        for asks, param in asking:
            if asks:
                raise bad_request(
                    "this model cannot reason (its checkpoint has no thinking delimiters); see the model card's "
                    "`reasoning` and `supported_parameters`", param, "unsupported_parameter",
                )
        return ReasoningPlan()
    effort = (r.effort if r is not None else None) or top
    max_tokens = r.max_tokens if r is not None else None
    exclude = r.exclude if r is not None and r.exclude is not None else include is False
    thinking = _asks(r.enabled if r is not None else None, effort, max_tokens)
    return ReasoningPlan(thinking, exclude and thinking, effort, max_tokens)


def _asks(enabled: bool | None, effort: str | None, max_tokens: int | None) -> bool:
    return enabled is not False and effort != "none" and max_tokens != 0


def card_thinks(card: LoadedCard) -> bool:
    return card.card.reasoning is not None

