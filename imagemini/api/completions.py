"""Running one chat completion on the engine and shaping what comes back: JSON or SSE chunks.

    runs = ChoiceRuns(async_engine, prompt_ids, params, "chatcmpl-...", prompt_embeds, metrics)   # one engine request per choice
    await runs.start()                                 # admitted, or EngineOverloaded / ValueError
    completion = await complete(runs, ctx)             # non-stream: a ChatCompletion
    async for event in stream_events(runs, ctx): ...   # stream: "data: {chunk}\\n\\n" ... "data: [DONE]\\n\\n"

Both paths read the same engine deltas, so a stream and a non-stream request with the same
seed carry the same text, tokens and logprobs. The stream is: one role chunk per choice,
content chunks, one finish chunk per choice, then ALWAYS one usage chunk with `choices: []`
(OpenRouter; it also satisfies OpenAI's stream_options.include_usage), then `[DONE]`. A
failure after the stream started is a last chunk with `error` and `finish_reason: "error"`;
the stream then ends without usage or `[DONE]`.

Generated images (image output) are decoded by the VQ decoder into PNG data URLs off
the event loop, and come back in `message.images` (non-stream) or, in a stream, as
`delta.images` in the chunk of the step that completed them. Their codes count in
`completion_tokens` and in `completion_tokens_details.image_tokens`. A stream that asked for
`image_config.partial_images` also gets previews of each picture being drawn, in
`delta.image_previews` (each with its picture's `index` and its `preview_index`), decoded here
too (on a thread of their own: previews.py), in chunks of their own before that picture's
`delta.images`.

A thought (reasoning) comes back as `message.reasoning` + `message.reasoning_details`,
in a stream as `delta.reasoning` + `delta.reasoning_details`, unless the request excluded it; its
tokens always count in `completion_tokens_details.reasoning_tokens` (api/reasoning.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from imagemini.engine.async_engine import AsyncEngine, EngineOverloaded
from imagemini.engine.params import SamplingParams
from imagemini.engine.sequence import SequenceOutput
from imagemini.engine.sequence import TokenLogprob as EngineLogprob
import torch

from imagemini.models.image_output import ImageWriter
from imagemini.models.tokenizer import Tokenizer

from .errors import APIError, bad_request, internal_error, overloaded
from .model_card import LoadedCard
from .previews import picture_data_url, preview_data_url
from .schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionTokensDetails,
    Delta,
    ErrorDetail,
    ImageOutput,
    ImagePreviewOutput,
    PromptTokensDetails,
    ReasoningDetail,
    TokenLogprob,
    TopLogprob,
    Usage,
)

if TYPE_CHECKING:
    from .metering import GenerationMeter
    from .metrics import Metrics

log = logging.getLogger(__name__)

# Tasks must be referenced until they finish (the event loop keeps only weak references).
_live_tasks: set[asyncio.Task] = set()


class ChoiceRuns:
    """The n engine requests of one chat completion, merged into one stream of (choice, delta)."""

    def __init__(
        self,
        engine: AsyncEngine,
        prompt_ids: list[int],
        params: list[SamplingParams],
        request_id: str,
        prompt_embeds: torch.Tensor | None = None,
        metrics: "Metrics | None" = None,
    ) -> None:
        self._engine = engine
        self._metrics = metrics
        self._prompt_ids = prompt_ids
        self._prompt_embeds = prompt_embeds
        self._params = params
        self._request_id = request_id
        self._queue: asyncio.Queue[tuple[int, SequenceOutput | Exception]] = asyncio.Queue()
        self._refused: list[Exception] = []
        self._tasks: list[asyncio.Task] = []

    @property
    def n(self) -> int:
        return len(self._params)

    async def start(self) -> None:
        """Submit every choice. Raises the engine's refusal (all choices then withdrawn)."""
        for index, params in enumerate(self._params):
            task = asyncio.create_task(self._pump(index, params))
            _live_tasks.add(task)
            task.add_done_callback(_live_tasks.discard)
            self._tasks.append(task)
        # Each pump runs up to its first real wait in the next loop turn, and the engine admits
        # or refuses synchronously on that path: after one turn every verdict is in.
        try:
            await asyncio.sleep(0)
        except BaseException:
            self.cancel()
            raise
        if self._refused:
            self.cancel()
            raise self._refused[0]

    async def _pump(self, index: int, params: SamplingParams) -> None:
        timer = self._metrics.engine_request() if self._metrics is not None else None
        try:
            request_id = f"{self._request_id}-{index}"
            async for out in self._engine.generate(self._prompt_ids, params, request_id, self._prompt_embeds):
                if timer is not None:
                    timer.output(out)
                self._queue.put_nowait((index, out))
        except Exception as exc:  # EngineOverloaded, ValueError (refused), or a bug
            timer = None  # refused: it never ran
            self._refused.append(exc)
            self._queue.put_nowait((index, exc))
        finally:
            if timer is not None:
                timer.close()  # withdrawn before its end (client gone): counted as an abort

    async def outputs(self) -> AsyncIterator[tuple[int, SequenceOutput]]:
        """Deltas of all choices as they come, until every choice has finished."""
        unfinished = self.n
        while unfinished:
            index, item = await self._queue.get()
            if isinstance(item, Exception):
                raise item
            yield index, item
            if item.finished:
                unfinished -= 1

    def cancel(self) -> None:
        """Withdraw every choice: leaving the engine's generator aborts it and frees its KV cache."""
        for task in self._tasks:
            task.cancel()


@dataclass
class Tally:
    """What the choices of one completion have produced so far: its usage, and the ledger's row."""

    completion_tokens: dict[int, int] = field(default_factory=dict)
    image_tokens: dict[int, int] = field(default_factory=dict)
    reasoning_tokens: dict[int, int] = field(default_factory=dict)
    cached_tokens: dict[int, int] = field(default_factory=dict)  # prompt tokens from the prefix cache
    finish_reasons: dict[int, str | None] = field(default_factory=dict)
    images: int = 0  # generated images, all choices
    first_output_at: float | None = None  # time.monotonic() of the first delta

    def add(self, index: int, out: SequenceOutput, images: int) -> None:
        if self.first_output_at is None:
            self.first_output_at = time.monotonic()
        self.completion_tokens[index] = out.num_output_tokens
        self.image_tokens[index] = out.num_image_tokens
        self.reasoning_tokens[index] = out.num_reasoning_tokens
        self.cached_tokens[index] = out.num_cached_tokens
        self.finish_reasons[index] = out.finish_reason
        self.images += images

    def totals(self) -> tuple[int, int, int]:
        """(completion, image, reasoning) tokens of all choices."""
        return sum(self.completion_tokens.values()), sum(self.image_tokens.values()), sum(self.reasoning_tokens.values())

    @property
    def prompt_cached_tokens(self) -> int:
        """Prompt tokens this completion did not compute: the prompt counts once whatever n is, and
        the choices that took it from the one that prefilled it (scheduler.py) do not make it cached."""
        return min(self.cached_tokens.values(), default=0)


@dataclass(frozen=True)
class ResponseContext:
    """What every object of one response shares."""

    id: str
    created: int
    model: str
    system_fingerprint: str
    prompt_tokens: int
    logprobs: bool
    tokenizer: Tokenizer
    card: LoadedCard
    input_images: int = 0  # priced per image (card pricing.image), on top of their prompt tokens
    writer: ImageWriter | None = None  # set when the request may draw
    show_reasoning: bool = False  # the thought's text goes out (reasoning on and not excluded)
    tally: Tally = field(default_factory=Tally)
    meter: "GenerationMeter | None" = None  # the ledger (api/metering.py); None: a server without a store

    async def end(self, status: str) -> None:
        """Record the generation in the ledger (once: the first end wins) and wait for the commit.
        Called before the response's last bytes; `status` is completed, error or cancelled."""
        if self.meter is not None:
            await self.meter.end(self, status)

    def reasoning_fields(self, text: str) -> dict:
        """`reasoning` and `reasoning_details` of a message or delta (nothing when not shown)."""
        if not self.show_reasoning:
            return {}
        return {"reasoning": text, "reasoning_details": [ReasoningDetail(text=text)]}

    async def image_urls(self, out: SequenceOutput) -> list[str]:
        """PNG data URLs of the images completed in this delta (api/previews.py decodes them)."""
        if self.writer is None or not out.images:
            return []
        return [await picture_data_url(self.writer, codes) for codes in out.images]

    async def image_previews(self, out: SequenceOutput) -> list[ImagePreviewOutput]:
        """The previews taken in this delta, as PNG data URLs (decoded on their own thread: previews.py)."""
        if self.writer is None or not out.image_previews:
            return []
        return [
            ImagePreviewOutput(image_url={"url": await preview_data_url(self.writer, p.codes)},
                               index=p.picture, preview_index=p.number)
            for p in out.image_previews
        ]


@dataclass
class ChoiceResult:
    text: list[str] = field(default_factory=list)
    logprobs: list[EngineLogprob] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None

    def add(self, out: SequenceOutput, images: list[str]) -> None:
        self.text.append(out.text)
        self.reasoning.append(out.reasoning)
        self.logprobs.extend(out.logprobs)
        self.images.extend(images)
        self.finish_reason = out.finish_reason
        self.error = out.error


def image_outputs(urls: list[str]) -> list[ImageOutput] | None:
    return [ImageOutput(image_url={"url": url}) for url in urls] or None


# --- shaping ---------------------------------------------------------------------------------------
def logprob_entries(tokenizer: Tokenizer, logprobs: list[EngineLogprob]) -> list[TokenLogprob]:
    def top(token_id: int, logprob: float) -> TopLogprob:
        return TopLogprob(token=tokenizer.token_text(token_id), logprob=logprob, bytes=list(tokenizer.token_bytes(token_id)))

    return [
        TokenLogprob(**top(lp.token_id, lp.logprob).model_dump(), top_logprobs=[top(t, v) for t, v in lp.top])
        for lp in logprobs
    ]


def usage(ctx: ResponseContext, completion_tokens: int, image_tokens: int = 0, reasoning_tokens: int = 0) -> Usage:
    # Prompt tokens count once whatever n is, as OpenAI bills them; those read from the prefix cache
    # at pricing.input_cache_read. Thought tokens are part of the completion tokens (priced at
    # pricing.internal_reasoning), shown or excluded alike.
    cached = ctx.tally.prompt_cached_tokens
    return Usage(
        prompt_tokens=ctx.prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=ctx.prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning_tokens, image_tokens=image_tokens),
        cost=ctx.card.cost(
            ctx.prompt_tokens, completion_tokens, image_tokens=image_tokens, input_images=ctx.input_images,
            reasoning_tokens=reasoning_tokens, cached_tokens=cached,
        ),
    )


def failure(finish_reason: str | None, message: str | None, retry_after_s: int) -> APIError:
    """An engine-side end that is not a completion: abort (shutdown) or error."""
    if finish_reason == "abort":
        error = overloaded("The server is shutting down; the request was ended before it finished.", retry_after_s)
        error.code = "server_shutting_down"
        return error
    return internal_error(message)  # the engine's messages are generic ("internal error in ...")


def refusal(exc: Exception, retry_after_s: int) -> APIError:
    """The engine refused a request at admission: queue full / shutting down, or a bad request."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, EngineOverloaded):
        return overloaded(f"The server is overloaded ({exc}); retry later.", retry_after_s)
    if isinstance(exc, ValueError):
        return bad_request(str(exc))
    return internal_error()


# --- non-stream ------------------------------------------------------------------------------------
async def complete(runs: ChoiceRuns, ctx: ResponseContext, retry_after_s: int = 1) -> ChatCompletion:
    results = [ChoiceResult() for _ in range(runs.n)]
    try:
        async with contextlib.aclosing(runs.outputs()) as outputs:
            async for index, out in outputs:
                images = await ctx.image_urls(out)
                results[index].add(out, images)
                ctx.tally.add(index, out, len(images))
                if out.finish_reason in ("abort", "error"):
                    await ctx.end("error")
                    raise failure(out.finish_reason, out.error, retry_after_s)
    except (EngineOverloaded, ValueError) as exc:  # a choice refused late (a race at admission)
        await ctx.end("error")
        raise refusal(exc, retry_after_s) from None
    finally:
        runs.cancel()
    await ctx.end("completed")
    choices = [
        Choice(
            index=i,
            message=AssistantMessage(
                content="".join(r.text), images=image_outputs(r.images), **ctx.reasoning_fields("".join(r.reasoning))
            ),
            logprobs=ChoiceLogprobs(content=logprob_entries(ctx.tokenizer, r.logprobs)) if ctx.logprobs else None,
            finish_reason=r.finish_reason,
        )
        for i, r in enumerate(results)
    ]
    return ChatCompletion(
        id=ctx.id,
        created=ctx.created,
        model=ctx.model,
        system_fingerprint=ctx.system_fingerprint,
        choices=choices,
        usage=usage(ctx, *ctx.tally.totals()),
    )


# --- stream ----------------------------------------------------------------------------------------
def _chunk(ctx: ResponseContext, choices: list[ChunkChoice], **extra) -> str:
    chunk = ChatCompletionChunk(
        id=ctx.id, created=ctx.created, model=ctx.model, system_fingerprint=ctx.system_fingerprint, choices=choices, **extra
    )
    return f"data: {chunk.model_dump_json()}\n\n"


def _delta_chunks(
    ctx: ResponseContext, index: int, out: SequenceOutput, images: list[str],
    previews: list[ImagePreviewOutput], pictures_before: int,
) -> list[str]:
    """The chunks of one delta of choice `index`, which had sent `pictures_before` pictures: the
    previews of the pictures it completes, its text and pictures, the previews of a picture it
    starts, its finish."""
    completed = pictures_before + len(images)
    earlier = [p for p in previews if p.index < completed]
    later = [p for p in previews if p.index >= completed]
    chunks = [_preview_chunk(ctx, index, earlier)] if earlier else []
    thought = out.reasoning if ctx.show_reasoning else ""
    if out.text or out.logprobs or images or thought:
        logprobs = ChoiceLogprobs(content=logprob_entries(ctx.tokenizer, out.logprobs)) if ctx.logprobs else None
        delta = Delta(content=out.text, images=image_outputs(images), **(ctx.reasoning_fields(thought) if thought else {}))
        chunks.append(_chunk(ctx, [ChunkChoice(index=index, delta=delta, logprobs=logprobs)]))
    if later:
        chunks.append(_preview_chunk(ctx, index, later))
    if out.finish_reason in ("stop", "length"):
        chunks.append(_chunk(ctx, [ChunkChoice(index=index, delta=Delta(), finish_reason=out.finish_reason)]))
    return chunks


def _preview_chunk(ctx: ResponseContext, index: int, previews: list[ImagePreviewOutput]) -> str:
    return _chunk(ctx, [ChunkChoice(index=index, delta=Delta(image_previews=previews))])


def _error_chunk(ctx: ResponseContext, index: int, error: APIError) -> str:
    detail = ErrorDetail(message=error.message, type=error.type, param=error.param, code=error.code)
    return _chunk(ctx, [ChunkChoice(index=index, delta=Delta(content=""), finish_reason="error")], error=detail)


async def stream_events(runs: ChoiceRuns, ctx: ResponseContext, retry_after_s: int = 1) -> AsyncIterator[str]:
    """SSE events of one completion. Closing this generator (client gone) withdraws every choice."""
    try:
        for index in range(runs.n):
            yield _chunk(ctx, [ChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
        pictures = [0] * runs.n  # sent so far, per choice
        async with contextlib.aclosing(runs.outputs()) as outputs:
            async for index, out in outputs:
                images = await ctx.image_urls(out)
                previews = await ctx.image_previews(out)
                ctx.tally.add(index, out, len(images))
                for event in _delta_chunks(ctx, index, out, images, previews, pictures[index]):
                    yield event
                pictures[index] += len(images)
                if out.finish_reason in ("abort", "error"):
                    await ctx.end("error")
                    yield _error_chunk(ctx, index, failure(out.finish_reason, out.error, retry_after_s))
                    return
        await ctx.end("completed")
        yield _chunk(ctx, [], usage=usage(ctx, *ctx.tally.totals()))
        yield "data: [DONE]\n\n"
    except Exception as exc:  # a choice refused after the stream began (a race at admission), or a bug
        if not isinstance(exc, (EngineOverloaded, ValueError)):
            log.exception("stream %s failed", ctx.id)
        with contextlib.suppress(Exception):  # the ledger's own failure is what is being reported
            await ctx.end("error")
        yield _error_chunk(ctx, 0, refusal(exc, retry_after_s))
    finally:
        runs.cancel()
