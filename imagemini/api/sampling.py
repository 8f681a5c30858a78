"""A validated request -> the checks, budgets and per-choice SamplingParams its plan is made of (plan.py).

    check_request(request, limits)                      # cross-field rules, unsupported features, image_config
    budget = completion_budget(request, len(ids), limits)
    params = choice_params(request, budget, limits, grammar, thought)   # len == n, each with its seed

Image output: `modalities` with "image" sets SamplingParams.image_output (begin-of-image is no
longer banned; the engine draws a whole image when the model opens one) and `guidance_scale`
(image_config.guidance_scale, else generation_config.json, else 5), and `partial_images`
(image_config.partial_images, streams only: previews of each picture); what the checkpoint draws
and bans is imagemini/models/image_output.py.

Field ranges are checked by the pydantic models (schemas.py); what needs more than one field
or needs the checkpoint (vocabulary, context length) is checked here, each failure a 400
with the field as `param`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from imagemini.engine.params import SamplingParams
from imagemini.engine.structured import Grammar
from imagemini.models.image_output import ImageOutput

from .errors import APIError, bad_request, unsupported
from .schemas import ChatCompletionRequest


@dataclass(frozen=True)
class Limits:
    """What the loaded checkpoint and the server allow one request."""

    max_sequence_tokens: int  # prompt + completion must fit: min(model context, whole KV budget)
    default_max_tokens: int  # cap when the request names no max_completion_tokens
    vocab_size: int  # the tokenizer's: ids from here up (a padded vocabulary's rows) have no token
    image: ImageOutput  # what the checkpoint draws, and which tokens a request that may (not) draw never samples
    # A checkpoint that can think: its delimiters, never sampled by a completion without a thought
    # (so no thought leaks into the answer).
    think_ids: tuple[int, ...] | None = None
    # The model's own context (max_position_embeddings), when the KV budget is smaller: errors name both.
    model_context: int | None = None
    no_token_ids: frozenset[int] = frozenset()  # gaps in the tokenizer's ids


def check_request(request: ChatCompletionRequest, limits: Limits) -> None:
    refused = request.unsupported_fields()
    if refused:
        raise unsupported(*refused[0])
    check_image_request(request, limits.image)
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


def logit_bias_ids(
    bias: dict[str, float] | None, vocab_size: int, no_token_ids: frozenset[int] = frozenset()
) -> dict[int, float]:
    """JSON keys are strings; each must be the decimal id of a token of this tokenizer (not one of
    the ids a padded vocabulary or a gap in the tokenizer's ids leaves without a token)."""
    out: dict[int, float] = {}
    for key, value in (bias or {}).items():
        token = int(key) if key.isascii() and key.isdigit() else -1
        if not 0 <= token < vocab_size or token in no_token_ids:
            raise bad_request(
                f"logit_bias key {key!r} is not a token id of this model (integers 0..{vocab_size - 1})",
                param="logit_bias",
            )
        out[token] = float(value)
    return out


def check_image_request(request: ChatCompletionRequest, image: ImageOutput) -> None:
    if request.wants_image and not image.enabled:
        raise unsupported("modalities", "image output (this model does not generate images)")
    config = request.image_config
    if config is None:
        return
    if config.aspect_ratio is not None and config.aspect_ratio not in image.aspect_ratios:
        raise bad_request(
            f"image_config.aspect_ratio '{config.aspect_ratio}' is not supported by this model; "
            f"supported: {', '.join(image.aspect_ratios)} ({image.resolution}x{image.resolution} pixels)",
            param="image_config.aspect_ratio", code="unsupported_value",
        )
    if config.partial_images and not request.stream:
        raise bad_request(
            "image_config.partial_images sends previews of a picture while it is drawn: it needs stream: true",
            param="image_config.partial_images",
        )
    if config.image_size is not None and config.image_size not in image.image_sizes:
        raise bad_request(
            f"image_config.image_size '{config.image_size}' is not supported by this model; "
            f"supported: {', '.join(image.image_sizes)} (its native {image.resolution}x{image.resolution} pixels)",
            param="image_config.image_size", code="unsupported_value",
        )


def draws_first(request: ChatCompletionRequest, image: ImageOutput) -> bool:
    """Whether the prompt gets begin-of-image appended, so that the answer starts with an image:
    `modalities: ["image"]`, or any image request on a checkpoint flagged image_start_after_prompt."""
    return request.wants_image and (request.image_only or image.start_after_prompt)


def completion_budget(request: ChatCompletionRequest, prompt_tokens: int, limits: Limits) -> int:
    """max_completion_tokens (or its alias), else what remains of the context, capped by the
    default (plus one whole image when the request may draw)."""
    asked = request.max_completion_tokens or request.max_tokens
    room = limits.max_sequence_tokens - prompt_tokens
    if asked is None and room >= 1:
        default = limits.default_max_tokens + (limits.image.tokens_per_image if request.wants_image else 0)
        return min(room, default)
    if asked is None or asked > room:
        raise context_exceeded(prompt_tokens, asked, limits.max_sequence_tokens, limits.model_context)
    return asked


def check_room_for_image(request: ChatCompletionRequest, budget: int, prompt_tokens: int, limits: Limits) -> None:
    """A prompt that ends with begin-of-image needs room for every code and the end marker."""
    need = limits.image.num_tokens + 1
    if budget >= need:
        return
    if (request.max_completion_tokens or request.max_tokens) is None:  # the context is what is short
        raise context_exceeded(prompt_tokens, need, limits.max_sequence_tokens, limits.model_context)
    if budget < need:
        raise bad_request(
            f"modalities [\"image\"] starts the answer with an image, which takes {need} completion tokens "
            f"({limits.image.num_tokens} image codes + end-of-image); max_completion_tokens is {budget}",
            param="max_completion_tokens", code="max_tokens_too_small",
        )


def context_exceeded(prompt_tokens: int, asked: int | None, limit: int, model_context: int | None = None) -> APIError:
    completion = f"{asked} in the completion" if asked is not None else "at least 1 in the completion"
    kv_bound = ""
    if model_context is not None and model_context > limit:
        kv_bound = f" (the model's context is {model_context} tokens; this server's KV cache holds {limit})"
    return APIError(
        400,
        f"This model's maximum context length is {limit} tokens{kv_bound}. However, you requested "
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


def choice_params(
    request: ChatCompletionRequest, max_tokens: int, limits: Limits, grammar: Grammar | None = None, thought: int = 0
) -> list[SamplingParams]:
    """One SamplingParams per choice, each with its seed; `grammar` constrains the answer and
    `thought` (0: none) is the thought's budget."""

    def value(x, default):
        return default if x is None else x

    image = limits.image
    drawing = request.wants_image
    config = request.image_config
    banned = image.banned_ids(drawing)
    if not thought and limits.think_ids:
        banned = (*banned, *limits.think_ids)  # without a thought, no delimiter may open one
    base = dict(
        max_tokens=max_tokens,
        # Image requests default to the checkpoint's image sampling settings (generation_config.json);
        # temperature and top_p apply to the text and to the image codes alike.
        temperature=value(request.temperature, value(image.temperature, 1.0) if drawing else 1.0),
        top_p=value(request.top_p, value(image.top_p, 1.0) if drawing else 1.0),
        frequency_penalty=value(request.frequency_penalty, 0.0),
        presence_penalty=value(request.presence_penalty, 0.0),
        logit_bias=logit_bias_ids(request.logit_bias, limits.vocab_size, limits.no_token_ids),
        logprobs=bool(request.logprobs),
        top_logprobs=value(request.top_logprobs, 0),
        stop=request.stop_strings,
        banned_token_ids=banned,
        image_output=drawing,
        guidance_scale=value(config.guidance_scale if config else None, image.guidance_scale),
        partial_images=value(config.partial_images if config and drawing else None, 0),
        grammar=grammar,
        reasoning_budget=thought or None,
    )
    try:
        return [SamplingParams(seed=choice_seed(request.seed, i), **base) for i in range(value(request.n, 1))]
    except ValueError as exc:  # the engine's own checks: the schema and the budgets should have caught it first
        raise bad_request(str(exc)) from None
