"""The HTTP routes: chat completions, models, health, metrics.

`api_router` is mounted twice, at /v1 (OpenAI) and /api/v1 (OpenRouter); `/health` and `/metrics`
sit at the root: `/health` needs no key, `/metrics` an operator's when keys are configured
(access.py: `authenticate_operator`). The chat route reads its body itself (size limit, content type, JSON)
instead of letting FastAPI parse it, so that every problem is an OpenAI-shaped 400/413 with
the right `param`, never a 422.

Content type: POST bodies must be `application/json` (or `+json`); anything else, or none,
is a 400 `invalid_content_type` (OpenAI answers request problems with 400, and the SDK then
raises BadRequestError). Nesting deeper than `max_json_depth` is a 400 `nesting_too_deep`.

A chat request flows once: body read and parsed here, planned (plan.py: every check, the
prompt, budgets, reasoning, grammar, one SamplingParams per choice), submitted (capacity, the
prompt's images encoded by the vision encoder, encoder.py, every choice handed to the engine),
then answered as JSON or SSE (completions.py). Everything heavy runs in worker threads, never on
the event loop.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from .completions import ChoiceRuns, ResponseContext, complete, refusal, stream_events
from .metering import GenerationMeter
from .metrics import CONTENT_TYPE
from .errors import APIError, bad_request, from_validation_error, model_not_found
from .plan import CompletionPlan, plan_completion
from .schemas import ChatCompletionRequest, ModelList
from .state import ServerState

T = TypeVar("T")


def server(request: Request) -> ServerState:
    return request.app.state.server


async def require_key(request: Request) -> None:
    """Every API route: the caller's key (api/access.py), kept as request.state.principal."""
    request.state.principal = await server(request).access.authenticate(request.headers.get("authorization"))


api_router = APIRouter(dependencies=[Depends(require_key)])
health_router = APIRouter()


# --- body -----------------------------------------------------------------------------------------
async def read_json_body(request: Request, limit: int, max_depth: int = 32) -> Any:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise bad_request(
            f"Content-Type must be application/json (got {media_type or 'none'})", code="invalid_content_type"
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise _too_large(limit)
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise _too_deep(max_depth) from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise bad_request(f"We could not parse the JSON body of your request: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    if json_depth(data, max_depth) > max_depth:
        raise _too_deep(max_depth)
    if _SURROGATE_ESCAPE.search(body) and not _encodable(data):
        raise bad_request("The JSON body has an unpaired surrogate escape (\\ud800-\\udfff).", code="invalid_json")
    return data


# Only a \uD800-\uDFFF escape can put a lone surrogate into a parsed string (raw UTF-8 cannot):
# such a string cannot be encoded, so the tokenizer could not take it.
_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")


def _encodable(data: Any) -> bool:
    try:
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


def json_depth(data: Any, stop_after: int) -> int:
    """Nesting depth of objects and arrays (a scalar is 0); stops counting past `stop_after`."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > stop_after:
                return deepest
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _too_deep(limit: int) -> APIError:
    return bad_request(
        f"The JSON body is nested more than {limit} levels deep (IMAGEMINI_MAX_JSON_DEPTH).", code="nesting_too_deep"
    )


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _too_large(limit: int) -> APIError:
    return APIError(413, f"Request body is larger than {limit} bytes.", code="request_too_large")


def parse_chat_request(data: dict[str, Any]) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, data) from None


_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def ignored_fields_header(data: dict[str, Any]) -> dict[str, str]:
    """Unknown top-level fields are ignored; say which, so a typo is visible to the caller."""
    ignored = sorted(k for k in data if k not in ChatCompletionRequest.model_fields and _NAME.match(k))
    return {"X-Imagemini-Ignored-Fields": ",".join(ignored[:32])} if ignored else {}


# --- chat completions --------------------------------------------------------------------------------
@api_router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    state = server(request)
    data = await read_json_body(request, state.settings.max_body_bytes, state.settings.max_json_depth)
    chat = parse_chat_request(data)
    plan = await plan_completion(state, chat)
    try:
        meter = await state.access.admit(
            request.state.principal, state.card, len(plan.prompt_ids), sum(p.max_tokens for p in plan.params),
            len(plan.images), streamed=bool(chat.stream),
        )
    except APIError as exc:
        state.metrics.limit_refused(exc)
        raise
    try:
        runs, ctx = await submit(state, chat, plan, meter)
    except BaseException:
        if meter is not None:
            await meter.release()
        raise
    request.state.completion = ctx  # what the access log reports of it (access_log.py)
    # Safety net: however this request's task ends (response sent, client gone before the stream
    # began, cancelled at shutdown), no choice keeps running in the engine for nobody, and the
    # generation has its ledger row (a no-op when it was written before the last bytes).
    asyncio.current_task().add_done_callback(lambda _: (runs.cancel(), meter and meter.end(ctx, "cancelled")))
    headers = ignored_fields_header(data)
    retry_after = state.settings.retry_after_s
    if chat.stream:
        headers |= {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream_events(runs, ctx, retry_after), media_type="text/event-stream", headers=headers)
    result = await unless_disconnected(request, complete(runs, ctx, retry_after), runs)
    return Response(result.model_dump_json(), media_type="application/json", headers=headers)


async def submit(
    state: ServerState, chat: ChatCompletionRequest, plan: CompletionPlan, meter: GenerationMeter | None = None
) -> tuple[ChoiceRuns, ResponseContext]:
    """Every choice of the plan to the engine, admitted all or none."""
    state.check_capacity(plan.num_choices)
    embeds = await state.prompt_embeds(plan.prompt_ids, plan.images)
    ctx = ResponseContext(
        id=f"chatcmpl-{secrets.token_hex(12)}",
        created=int(time.time()),
        model=state.card.id,
        system_fingerprint=state.engine.system_fingerprint,
        prompt_tokens=len(plan.prompt_ids),
        logprobs=bool(chat.logprobs),
        tokenizer=state.engine.tokenizer,
        card=state.card,
        input_images=len(plan.images),
        writer=state.writer if chat.wants_image else None,
        show_reasoning=plan.reasoning.shows_thought,
        meter=meter,
    )
    runs = ChoiceRuns(state.engine, plan.prompt_ids, plan.params, ctx.id, embeds, state.metrics)
    try:
        await runs.start()
    except Exception as exc:
        raise refusal(exc, state.settings.retry_after_s) from None
    return runs, ctx


async def unless_disconnected(request: Request, work: Awaitable[T], runs: ChoiceRuns) -> T:
    """Await `work`, but withdraw the request if the client hangs up first (its KV is freed)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise APIError(499, "Client closed the request.", code="client_closed_request")
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            runs.cancel()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


# --- models ---------------------------------------------------------------------------------------
@api_router.get("/models")
async def list_models(request: Request) -> JSONResponse:
    return JSONResponse(ModelList(data=[server(request).card.card]).model_dump(mode="json"))


@api_router.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> JSONResponse:
    card = server(request).card
    if not card.matches(model_id):
        raise model_not_found(model_id)
    return JSONResponse(card.card.model_dump(mode="json"))


# --- health ---------------------------------------------------------------------------------------
@health_router.get("/health")
async def health(request: Request) -> JSONResponse:
    state = server(request)
    return JSONResponse(state.health(), status_code=503 if state.draining or state.engine.dead else 200)


@health_router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus' text format (metrics.py)."""
    state = server(request)
    request.state.principal = await state.access.authenticate_operator(request.headers.get("authorization"))
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
