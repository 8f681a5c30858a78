"""`/openapi.json`: the whole HTTP contract, so that clients can be generated from it and a
fuzzer sends real bodies.

The chat and key routes read their bodies themselves (routes.py: size limit, content type,
OpenAI-shaped 400s instead of 422s), so FastAPI cannot see what they accept or answer. This
module completes FastAPI's document: the request body of each such route is the pydantic model
that validates it, every status a route can answer is listed (errors with OpenAI's error
object, errors.py), FastAPI's 422 (never sent) is replaced by 400, and each /v1 route is
documented again under /api/v1, where it is served too. `OPERATIONS` lists every route; a route
missing from it fails tests/api/test_api_openapi.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from .platform import KeyFields
from .schemas import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ModelCard, ModelList

ERROR_DESCRIPTIONS = {
    400: "Invalid request: a field (`error.param` names it), JSON, Content-Type or nesting depth",
    401: "Keys are configured and the bearer key is missing, wrong, disabled, expired or deleted",
    402: "The key's credit limit cannot cover the request's worst case (`error.code` is 402)",
    403: "A management key on completions, or a plain key on key management or /metrics",
    404: "Unknown model, key, generation or asset, or no store configured",
    413: "Body, image or file over its byte limit",
    429: "The key's requests or tokens per minute (X-RateLimit-*, Retry-After)",
    500: "An engine failure (no internals in the message)",
    503: "Request queue full, shutting down, or the engine process stopped (Retry-After)",
}

ERROR_RESPONSE = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "integer", "null"]},
                "metadata": {"type": "object"},
            },
        }
    },
}

HEALTH = {
    "type": "object",
    "required": ["status", "model", "system_fingerprint", "pending", "max_pending", "running", "waiting", "kv_cache"],
    "properties": {
        "status": {"enum": ["ok", "draining", "engine_stopped"]},
        "model": {"type": "string"},
        "system_fingerprint": {"type": "string"},
        "pending": {"type": "integer"},
        "max_pending": {"type": "integer"},
        "running": {"type": "integer"},
        "waiting": {"type": "integer"},
        "kv_cache": {"type": "object", "required": ["used_tokens", "budget_tokens"]},
        "encoder_cache": {"type": ["object", "null"]},
        "prefix_cache": {
            "type": ["object", "null"],
            "description": "null when off. Blocks and tokens held, capacity, block size (the prefill chunk), "
                           "prompts that looked it up, prompts that reused a block, prompt tokens reused, prompt tokens of the prompts that looked it up",
            "required": ["blocks", "tokens", "capacity_tokens", "block_tokens", "queries", "hits", "hit_tokens", "query_tokens"],
            "properties": {k: {"type": "integer"} for k in (
                "blocks", "tokens", "capacity_tokens", "block_tokens", "queries", "hits", "hit_tokens", "query_tokens")},
        },
    },
}

DATA_OBJECT = {"type": "object", "required": ["data"], "properties": {"data": {"type": "object"}}}
DATA_LIST = {"type": "object", "required": ["data"], "properties": {"data": {"type": "array", "items": {"type": "object"}}}}
NEW_KEY = {
    "type": "object", "required": ["data", "key"],
    "properties": {"data": {"type": "object"}, "key": {"type": "string"}},
}
DELETED = {"type": "object", "required": ["deleted"], "properties": {"deleted": {"const": True}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


@dataclass(frozen=True)
class Operation:
    """What one route answers: its successes (status -> content), error statuses and body model."""

    ok: dict[int, dict[str, Any]]
    errors: tuple[int, ...]
    body: str | None = None
    keyed: bool = True  # needs `Authorization: Bearer` when keys are configured
    summary: str = ""


COMPLETION_ERRORS = (400, 401, 402, 403, 404, 413, 429, 500, 503)
_html = {200: {"text/html": {"schema": {"type": "string"}}}}

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("post", "/v1/chat/completions"): Operation(
        {200: _json(_ref("ChatCompletion")) | {"text/event-stream": {"schema": {
            "type": "string",
            "description": "Server-Sent Events: `data: <ChatCompletionChunk JSON>` events, then `data: [DONE]`",
        }}}},
        COMPLETION_ERRORS, body="ChatCompletionRequest", summary="Create a chat completion (text and images)",
    ),
    ("get", "/v1/models"): Operation({200: _json(_ref("ModelList"))}, (401, 500), summary="List the models"),
    ("get", "/v1/models/{model_id}"): Operation(
        {200: _json(_ref("ModelCard"))}, (401, 404, 500), summary="The model card"
    ),
    ("get", "/health"): Operation(
        {200: _json(HEALTH), 503: _json(HEALTH)}, (), keyed=False, summary="Liveness and load",
    ),
    ("get", "/metrics"): Operation(
        {200: {"text/plain": {"schema": {
            "type": "string", "description": "Prometheus' text exposition format (imagemini/api/README.md, Metrics)",
        }}}},
        (401, 403), summary="Prometheus metrics (with keys: a management or --api-key key)",
    ),
    ("get", "/api/v1/key"): Operation({200: _json(DATA_OBJECT)}, (401, 500), summary="The calling key"),
    ("get", "/api/v1/credits"): Operation({200: _json(DATA_OBJECT)}, (401, 404, 500), summary="Credits and usage"),
    ("get", "/api/v1/generation"): Operation(
        {200: _json(DATA_OBJECT)}, (400, 401, 404, 500), summary="One generation of the ledger"
    ),
    ("post", "/api/v1/keys"): Operation(
        {201: _json(NEW_KEY)}, (400, 401, 403, 404, 413, 500), body="KeyFields", summary="Create a key (management key)"
    ),
    ("get", "/api/v1/keys"): Operation(
        {200: _json(DATA_LIST)}, (400, 401, 403, 404, 500), summary="List the keys (management key)"
    ),
    ("get", "/api/v1/keys/{key_hash}"): Operation(
        {200: _json(DATA_OBJECT)}, (401, 403, 404, 500), summary="One key (management key)"
    ),
    ("patch", "/api/v1/keys/{key_hash}"): Operation(
        {200: _json(DATA_OBJECT)}, (400, 401, 403, 404, 413, 500), body="KeyFields", summary="Change a key (management key)"
    ),
    ("delete", "/api/v1/keys/{key_hash}"): Operation(
        {200: _json(DELETED)}, (401, 403, 404, 500), summary="Delete a key (management key)"
    ),
    ("get", "/"): Operation(_html, (), keyed=False, summary="The model page with a playground"),
    ("get", "/playground"): Operation(_html, (), keyed=False, summary="The playground alone"),
    ("get", "/static/{name}"): Operation(
        {200: {"text/css": {"schema": {"type": "string"}}, "text/javascript": {"schema": {"type": "string"}}}},
        (404,), keyed=False, summary="The page's stylesheet and script",
    ),
}

# Recognised, refused with 400 unsupported_parameter when used (schemas.py): left out of the
# documented request, so that a generated client does not offer them; the description lists them.
REFUSED = {
    "ChatCompletionRequest": ("tools", "tool_choice", "functions", "function_call", "audio", "prediction",
                              "web_search_options", "plugins", "verbosity", "top_k", "min_p", "top_a",
                              "repetition_penalty"),
    "ChatMessage": ("tool_calls", "function_call", "tool_call_id", "audio"),
    "FileData": ("file_id",),
}
REFUSED_NOTE = (
    "Recognised and refused with 400 `unsupported_parameter`: the fields {fields}; roles `tool` and `function`; "
    "`input_audio` parts; `store: true`. Unknown fields are ignored at every level. Types are strict: an integer "
    "field takes an integer literal (`2`, not `2.0`)."
)

ALIASED = "/v1/"  # served under /api/v1 as well (OpenRouter's prefix)


def install(app: FastAPI) -> None:
    """Serve the completed document at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes, description=__doc__.split("\n\n")[0])
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)  # validation problems are 400s with ErrorResponse
    _add_model(schemas, ChatCompletionRequest, "validation")
    _leave_out_refused(schemas)
    schemas["ChatCompletionRequest"]["properties"]["model"]["examples"] = [app.state.server.card.id]
    _add_model(schemas, KeyFields, "validation")
    for model in (ChatCompletion, ChatCompletionChunk, ModelList, ModelCard):
        _add_model(schemas, model, "serialization")
    schemas["ErrorResponse"] = ERROR_RESPONSE
    doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            if (method, path) in OPERATIONS:
                _complete(operation, OPERATIONS[(method, path)])
    aliases = {"/api" + p: _aliased(m) for p, m in doc["paths"].items() if p.startswith(ALIASED)}
    doc["paths"].update(aliases)
    return doc


def _add_model(schemas: dict[str, Any], model: type[BaseModel], mode: str) -> None:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True, mode=mode)
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema


def _leave_out_refused(schemas: dict[str, Any]) -> None:
    for name, fields in REFUSED.items():
        for field in fields:
            del schemas[name]["properties"][field]
    request, message = schemas["ChatCompletionRequest"], schemas["ChatMessage"]
    request["description"] = REFUSED_NOTE.format(fields=", ".join(f"`{f}`" for f in REFUSED["ChatCompletionRequest"]))
    request["properties"]["store"] = {"enum": [False, None], "default": None, "title": "Store"}
    message["description"] = "`content` may be null or absent only in an assistant message."
    message["properties"]["role"]["enum"] = ["system", "developer", "user", "assistant"]
    content = next(m for m in message["properties"]["content"]["anyOf"] if m.get("type") == "array")["items"]
    content["oneOf"] = [m for m in content["oneOf"] if m["$ref"] != "#/components/schemas/InputAudioPart"]
    del content["discriminator"]["mapping"]["input_audio"]
    del schemas["InputAudioPart"]


def _complete(operation: dict[str, Any], spec: Operation) -> None:
    operation["summary"] = spec.summary
    responses: dict[str, Any] = {
        str(status): {"description": "OK" if status < 300 else "Unavailable", "content": content}
        for status, content in spec.ok.items()
    }
    for status in spec.errors:
        responses[str(status)] = {"description": ERROR_DESCRIPTIONS[status], "content": _json(_ref("ErrorResponse"))}
    operation["responses"] = responses
    if spec.body is not None:
        operation["requestBody"] = {"required": True, "content": _json(_ref(spec.body))}
    if spec.keyed:
        operation["security"] = [{"bearer": []}, {}]


def _aliased(methods: dict[str, Any]) -> dict[str, Any]:
    return {m: op | {"operationId": "openrouter_" + op["operationId"]} for m, op in methods.items()}
