"""A validated request -> what the engine runs: the token budget and one SamplingParams per choice.

    check_request(request)                              # cross-field rules, unsupported features
    budget = completion_budget(request, len(ids), limits)
    params = choice_params(request, budget, limits)     # len == n

Field ranges are checked by the pydantic models (schemas.py); what needs more than one field
or needs the checkpoint (vocabulary, context length) is checked here, each failure a 400
with the field as `param`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from imagemini.engine.params import SamplingParams

from .errors import APIError, bad_request, unsupported
from .schemas import ChatCompletionRequest


@dataclass(frozen=True)
class Limits:
    """What the loaded checkpoint and the server allow one request."""

    max_sequence_tokens: int  # prompt + completion must fit: min(model context, whole KV budget)
    default_max_tokens: int  # cap when the request names no max_completion_tokens
    vocab_size: int
    banned_token_ids: tuple[int, ...]  # text-only mode: begin-of-image can never be sampled


def check_request(request: ChatCompletionRequest) -> None:
    refused = request.unsupported_fields()
    if refused:
        raise unsupported(*refused[0])
    if request.top_logprobs is not None and not request.logprobs:
        raise bad_request("top_logprobs requires logprobs: true", param="top_logprobs")
    if (
        request.max_tokens is not None
        and request.max_completion_tokens is not None
        and request.max_tokens != request.max_completion_tokens
    ):
        raise bad_request(
            "max_tokens is the deprecated alias of max_completion_tokens: give one of them (or equal values)",
            param="max_tokens",
        )
    if request.stream_options is not None and not request.stream:
        raise bad_request("stream_options is only allowed when stream is true", param="stream_options")


def logit_bias_ids(bias: dict[str, float] | None, vocab_size: int) -> dict[int, float]:
    """JSON keys are strings; each must be the decimal id of a token of this tokenizer."""
    out: dict[int, float] = {}
    for key, value in (bias or {}).items():
        token = int(key) if key.isascii() and key.isdigit() else -1
        if not 0 <= token < vocab_size:
            raise bad_request(
                f"logit_bias key {key!r} is not a token id of this model (integers 0..{vocab_size - 1})",
                param="logit_bias",
            )
        out[token] = float(value)
    return out


def completion_budget(request: ChatCompletionRequest, prompt_tokens: int, limits: Limits) -> int:
    """max_completion_tokens (or its alias), else what remains of the context, capped by the default."""
    asked = request.max_completion_tokens or request.max_tokens
    room = limits.max_sequence_tokens - prompt_tokens
    if asked is None and room >= 1:
        return min(room, limits.default_max_tokens)
    if asked is None or asked > room:
        raise context_exceeded(prompt_tokens, asked, limits.max_sequence_tokens)
    return asked


def context_exceeded(prompt_tokens: int, asked: int | None, limit: int) -> APIError:
    completion = f"{asked} in the completion" if asked is not None else "at least 1 in the completion"
    return APIError(
        400,
        f"This model's maximum context length is {limit} tokens. However, you requested "
        f"{prompt_tokens + (asked or 1)} tokens ({prompt_tokens} in the messages, {completion}). "
        "Please reduce the length of the messages or completion.",
        param="messages",
        code="context_length_exceeded",
    )


def choice_seed(seed: int | None, index: int) -> int | None:
    """Choice 0 uses the request's seed itself (so n=1 and choice 0 agree); choice i a hash of (seed, i)."""
    if seed is None or index == 0:
        return seed
    digest = hashlib.sha256(f"imagemini-choice:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def choice_params(request: ChatCompletionRequest, max_tokens: int, limits: Limits) -> list[SamplingParams]:
    def value(x, default):
        return default if x is None else x

    base = dict(
        max_tokens=max_tokens,
        temperature=value(request.temperature, 1.0),
        top_p=value(request.top_p, 1.0),
        frequency_penalty=value(request.frequency_penalty, 0.0),
        presence_penalty=value(request.presence_penalty, 0.0),
        logit_bias=logit_bias_ids(request.logit_bias, limits.vocab_size),
        logprobs=bool(request.logprobs),
        top_logprobs=value(request.top_logprobs, 0),
        stop=request.stop_strings,
        banned_token_ids=limits.banned_token_ids,
    )
    try:
        return [SamplingParams(seed=choice_seed(request.seed, i), **base) for i in range(value(request.n, 1))]
    except ValueError as exc:  # the engine's own checks: the schema should have caught it first
        raise bad_request(str(exc)) from None
