"""OpenRouter's platform routes, same paths and field names, under /api/v1:

    GET    /key                 the calling key (OpenRouter's /key): label, limit, limit_remaining, usage, ...
    GET    /credits             total_credits, total_usage (a management key: all keys; a key: itself)
    GET    /generation?id=      one ledger row; a key sees only its own generations (else 404)
    POST   /keys                management key: create a key; 201 with the key itself, shown this once
    GET    /keys                management key: list (offset, include_disabled)
    GET    /keys/{hash}         management key: one key
    PATCH  /keys/{hash}         management key: name, disabled, limit, limit_reset (+ rate limits)
    DELETE /keys/{hash}         management key: the key stops working; its ledger rows stay

Money is USD as JSON numbers; times ISO 8601 UTC. Fields OpenRouter has and this server cannot
mean (BYOK, free tier) are there with their neutral values; ours are added, never renamed.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imagemini.store.clock import LIMIT_RESETS, iso, parse_iso, period_start
from imagemini.store.store import MAX_LIMIT_USD, MAX_PER_MINUTE, Generation, KeyRecord, Store, nanos_to_usd, usd_to_nanos

from .access import Principal, forbidden
from .errors import APIError, bad_request, from_validation_error
from .routes import read_json_body, require_key, server

platform_router = APIRouter(dependencies=[Depends(require_key)])


def _store(request: Request) -> Store:
    store = server(request).store
    if store is None:
        raise APIError(
            404, "This server has no store: start it with --data-dir or --database-url to have keys and a ledger.",
            code="store_not_configured",
        )
    return store


def _principal(request: Request) -> Principal:
    return request.state.principal


def _manager(request: Request) -> Store:
    if not _principal(request).management:
        raise forbidden("This route needs a management key (imagemini keys create --management).")
    return _store(request)


async def key_data(store: Store | None, key: KeyRecord | None, principal: Principal) -> dict[str, Any]:
    """OpenRouter's key object, as /key and /keys answer it."""
    now = store.clock() if store is not None else 0
    key_hash = key.hash if key is not None else principal.key_hash

    async def spent(reset: str | None) -> float:
        if store is None:
            return 0.0
        return nanos_to_usd(await store.usage_since(key_hash, period_start(reset, now)))

    usage = nanos_to_usd(key.usage_nanos) if key is not None else await spent(None)
    data = {
        "hash": key_hash,
        "name": key.name if key is not None else principal.label,
        "label": key.label if key is not None else principal.label,
        "disabled": key.disabled if key is not None else False,
        "limit": nanos_to_usd(key.limit_nanos) if key is not None else None,
        "limit_reset": key.limit_reset if key is not None else None,
        "limit_remaining": nanos_to_usd(key.limit_remaining(now)) if key is not None else None,
        "include_byok_in_limit": False,
        "usage": usage,
        "usage_daily": await spent("daily"),
        "usage_weekly": await spent("weekly"),
        "usage_monthly": await spent("monthly"),
        "byok_usage": 0.0, "byok_usage_daily": 0.0, "byok_usage_weekly": 0.0, "byok_usage_monthly": 0.0,
        "is_free_tier": False,
        "is_management_key": principal.management if key is None else key.is_management,
        "is_provisioning_key": principal.management if key is None else key.is_management,
        "created_at": iso(key.created_at_ms) if key is not None else None,
        "updated_at": iso(key.updated_at_ms) if key is not None else None,
        "expires_at": iso(key.expires_at_ms) if key is not None else None,
        # imagemini's own: the worst cases of requests running now, and the rate limits
        "limit_reserved": nanos_to_usd(key.reserved_nanos) if key is not None else 0.0,
        "requests_per_minute": key.requests_per_minute if key is not None else None,
        "tokens_per_minute": key.tokens_per_minute if key is not None else None,
    }
    return data


@platform_router.get("/key")
async def current_key(request: Request) -> JSONResponse:
    principal, store = _principal(request), server(request).store
    key = await store.get_key(principal.key.hash) if store is not None and principal.key is not None else None
    return JSONResponse({"data": await key_data(store, key, principal)})


@platform_router.get("/credits")
async def credits(request: Request) -> JSONResponse:
    principal, store = _principal(request), _store(request)
    if principal.management:
        keys = await store.list_keys(limit=1_000_000)
    elif principal.key is not None:
        keys = [await _existing(store, principal.key.hash)]
    else:  # an --api-key key or an open server: no limit, usage from the ledger
        keys = []
    if keys or principal.management:
        total_usage = sum(k.usage_nanos for k in keys)
    else:
        total_usage = await store.usage_since(principal.key_hash, 0)
    return JSONResponse({"data": {
        "total_credits": nanos_to_usd(sum(k.limit_nanos for k in keys if k.limit_nanos is not None)),
        "total_usage": nanos_to_usd(total_usage),
    }})


@platform_router.get("/generation")
async def generation(request: Request, id: str = "") -> JSONResponse:
    principal, store = _principal(request), _store(request)
    row = await store.generation(id) if id else None
    if row is None or row.key_hash != principal.key_hash:
        raise APIError(404, f"Generation {id!r} not found.", param="id", code="not_found")
    return JSONResponse({"data": generation_data(row)})


def generation_data(row: Generation) -> dict[str, Any]:
    cost = nanos_to_usd(row.cost_nanos)
    return {
        "id": row.id, "upstream_id": row.id, "total_cost": cost, "cache_discount": None, "upstream_inference_cost": None,
        "created_at": iso(row.created_at_ms), "model": row.model, "app_id": None, "streamed": row.streamed,
        "cancelled": row.cancelled, "provider_name": "imagemini", "latency": row.latency_ms, "moderation_latency": None,
        "generation_time": row.generation_time_ms, "finish_reason": row.finish_reason,
        "native_finish_reason": row.native_finish_reason, "tokens_prompt": row.tokens_prompt,
        "tokens_completion": row.tokens_completion, "native_tokens_prompt": row.tokens_prompt,
        "native_tokens_completion": row.tokens_completion,
        "native_tokens_completion_images": row.native_tokens_completion_images,
        "native_tokens_reasoning": row.native_tokens_reasoning, "native_tokens_cached": row.native_tokens_cached,
        "num_media_prompt": row.num_media_prompt, "num_input_audio_prompt": 0,
        "num_media_completion": row.num_media_completion, "num_search_results": 0, "origin": "", "usage": cost,
        "is_byok": False,
        # imagemini's own
        "status": row.status, "num_choices": row.num_choices,
    }


# --- key management ---------------------------------------------------------------------------------
class KeyFields(BaseModel):
    """POST /keys and PATCH /keys/{hash}: OpenRouter's fields, and the rate limits."""

    model_config = ConfigDict(extra="ignore")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    disabled: bool | None = None
    limit: float | None = Field(default=None, ge=0, le=MAX_LIMIT_USD)
    limit_reset: str | None = None
    expires_at: str | None = None
    include_byok_in_limit: bool | None = None
    requests_per_minute: int | None = Field(default=None, ge=1, le=MAX_PER_MINUTE)
    tokens_per_minute: int | None = Field(default=None, ge=1, le=MAX_PER_MINUTE)

    def changes(self) -> dict[str, Any]:
        """The fields the body set, as store columns (a field set to null clears it)."""
        given = self.model_fields_set
        out: dict[str, Any] = {}
        if "limit_reset" in given and self.limit_reset not in (None, *LIMIT_RESETS):
            raise bad_request(f"limit_reset must be one of {', '.join(LIMIT_RESETS)} or null", param="limit_reset")
        for field in ("name", "disabled"):
            if field in given and getattr(self, field) is None:
                raise bad_request(f"{field} cannot be null", param=field)
        for field in ("name", "disabled", "limit_reset", "requests_per_minute", "tokens_per_minute"):
            if field in given:
                out[field] = getattr(self, field)
        if "limit" in given:
            out["limit_nanos"] = None if self.limit is None else usd_to_nanos(self.limit)
        if "expires_at" in given:
            try:
                out["expires_at_ms"] = None if self.expires_at is None else parse_iso(self.expires_at)
            except ValueError:
                raise bad_request("expires_at must be an ISO 8601 time", param="expires_at") from None
        return out


async def _fields(request: Request) -> KeyFields:
    data = await read_json_body(request, 64 * 1024)
    try:
        return KeyFields.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, data) from None


@platform_router.post("/keys")
async def create_key(request: Request) -> JSONResponse:
    store = _manager(request)
    changes = (await _fields(request)).changes()
    if not changes.get("name"):
        raise bad_request("name is required", param="name")
    changes.pop("disabled", None)
    secret, key = await store.create_key(changes.pop("name"), **changes)
    return JSONResponse({"data": await key_data(store, key, _principal(request)), "key": secret}, status_code=201)


@platform_router.get("/keys")
async def list_keys(request: Request, offset: int = 0, include_disabled: bool = True) -> JSONResponse:
    store = _manager(request)
    keys = await store.list_keys(max(0, offset), include_disabled)
    return JSONResponse({"data": [await key_data(store, k, _principal(request)) for k in keys]})


async def _existing(store: Store, key_hash: str) -> KeyRecord:
    key = await store.get_key(key_hash)
    if key is None:
        raise APIError(404, f"No key with hash {key_hash!r}.", param="hash", code="not_found")
    return key


@platform_router.get("/keys/{key_hash}")
async def get_key(key_hash: str, request: Request) -> JSONResponse:
    store = _manager(request)
    return JSONResponse({"data": await key_data(store, await _existing(store, key_hash), _principal(request))})


@platform_router.patch("/keys/{key_hash}")
async def patch_key(key_hash: str, request: Request) -> JSONResponse:
    store = _manager(request)
    changes = (await _fields(request)).changes()
    await _existing(store, key_hash)
    try:
        key = await store.update_key(key_hash, **changes)
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    return JSONResponse({"data": await key_data(store, await _existing(store, key.hash if key else key_hash), _principal(request))})


@platform_router.delete("/keys/{key_hash}")
async def delete_key(key_hash: str, request: Request) -> JSONResponse:
    store = _manager(request)
    if not await store.delete_key(key_hash):
        raise APIError(404, f"No key with hash {key_hash!r}.", param="hash", code="not_found")
    return JSONResponse({"deleted": True})

