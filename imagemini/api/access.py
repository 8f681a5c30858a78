"""Who is calling, and whether they may: keys, credit limits (402), rate limits (429).

    access = Access(store, static_keys=("sk-...",), clock=system_clock)
    principal = await access.authenticate(request.headers.get("authorization"))   # or 401
    meter = await access.admit(principal, card, prompt_tokens, max_completion_tokens, input_images, streamed)

The rule (README.md, "Keys, limits and the ledger"): when keys are configured (`--api-key`, or
any key in the store) every API route needs `Authorization: Bearer <key>`; without keys the
server is open, as it always was. Management keys manage keys and nothing else; the others
make completions and read their own key and generations. GET /metrics, about the whole server,
takes a management key or an --api-key key (`authenticate_operator`).

Admission: a key with a credit limit reserves the request's worst-case cost in the store first
(store.py: one conditional UPDATE, exact across replicas) and is refused with 402 when that
would pass the limit. Rate limits (requests and tokens per minute, fixed windows that start on
the minute) are counted in this process: each replica enforces them on its own.
"""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass, field

from imagemini.store.clock import Clock, system_clock
from imagemini.store.store import KeyRecord, Store, hash_key, nanos_to_usd, worst_case_nanos

from .errors import APIError
from .metering import GenerationMeter
from .model_card import LoadedCard

WINDOW_MS = 60_000


@dataclass(frozen=True)
class Principal:
    key_hash: str | None  # None: an open server (no keys configured)
    label: str
    management: bool = False
    key: KeyRecord | None = None  # a key of the store (None for --api-key keys and an open server)


ANONYMOUS = Principal(None, "anonymous")


def unauthorized(message: str) -> APIError:
    return APIError(
        401, message, type="authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
    )


def forbidden(message: str) -> APIError:
    return APIError(403, message, type="permission_error", code="forbidden")


@dataclass
class _Window:
    start_ms: int
    requests: int = 0
    tokens: int = 0


@dataclass
class RateLimiter:
    """Per-key requests and tokens per minute. Tokens (prompt + completion) count when a
    generation ends; a key whose window is spent is refused until the next minute."""

    clock: Clock = system_clock
    windows: dict[str, _Window] = field(default_factory=dict)

    def _window(self, key_hash: str) -> _Window:
        start = self.clock() // WINDOW_MS * WINDOW_MS
        window = self.windows.get(key_hash)
        if window is None or window.start_ms != start:
            window = self.windows[key_hash] = _Window(start)
        return window

    def admit(self, principal: Principal) -> None:
        key = principal.key
        if key is None or (key.requests_per_minute is None and key.tokens_per_minute is None):
            return
        window = self._window(key.hash)
        for limit, used, what in ((key.requests_per_minute, window.requests, "requests"), (key.tokens_per_minute, window.tokens, "tokens")):
            if limit is not None and used >= limit:
                raise self._too_many(limit, window, what)
        window.requests += 1

    def spend(self, principal: Principal, tokens: int) -> None:
        key = principal.key
        if key is not None and key.tokens_per_minute is not None:
            self._window(key.hash).tokens += tokens

    def _too_many(self, limit: int, window: _Window, what: str) -> APIError:
        reset_ms = window.start_ms + WINDOW_MS
        retry_after = max(1, math.ceil((reset_ms - self.clock()) / 1000))
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(reset_ms),  # ms since the epoch, as OpenRouter sends it
            "Retry-After": str(retry_after),
        }
        return APIError(
            429, f"Rate limit exceeded: {limit} {what} per minute for this key; retry in {retry_after} s.",
            type=what, code="rate_limit_exceeded", headers=headers,
        )


class Access:
    def __init__(self, store: Store | None, static_keys: tuple[str, ...] = (), clock: Clock = system_clock) -> None:
        self.store = store
        self.static_keys = static_keys
        self.clock = clock
        self.limiter = RateLimiter(clock)

    async def keys_required(self) -> bool:
        return bool(self.static_keys) or (self.store is not None and await self.store.has_keys())

    async def authenticate(self, authorization: str | None) -> Principal:
        if not await self.keys_required():
            return ANONYMOUS
        scheme, _, secret = (authorization or "").partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise unauthorized("Missing API key: send 'Authorization: Bearer <key>'.")
        if any(hmac.compare_digest(secret.encode(), k.encode()) for k in self.static_keys):
            return Principal(hash_key(secret), "--api-key")
        key = await self.store.key_by_secret(secret) if self.store is not None else None
        if key is None:
            raise unauthorized("Incorrect API key provided.")
        if key.disabled:
            raise unauthorized("This API key is disabled.")
        if key.expired(self.clock()):
            raise unauthorized("This API key has expired.")
        return Principal(key.hash, key.label, key.is_management, key)

    async def authenticate_operator(self, authorization: str | None) -> Principal:
        """Routes about the whole server (GET /metrics): a management key, or an --api-key key (the
        operator's own, and the only keys of a server without a store); other keys get 403."""
        principal = await self.authenticate(authorization)
        if principal.key is not None and not principal.management:
            raise forbidden("This route needs a management key or an --api-key key.")
        return principal

    async def admit(
        self,
        principal: Principal,
        card: LoadedCard,
        prompt_tokens: int,
        max_completion_tokens: int,
        input_images: int,
        streamed: bool,
    ) -> GenerationMeter | None:
        """Rate limits, then the credit reservation; the meter that will write the ledger row
        (None without a store)."""
        if principal.management:
            raise forbidden("Management keys manage keys; they cannot make completions.")
        self.limiter.admit(principal)
        if self.store is None:
            return None
        reservation = None
        key = principal.key
        if key is not None and key.limit_nanos is not None:
            amount = worst_case_nanos(card.prices.worst_case(prompt_tokens, max_completion_tokens, input_images))
            reservation = await self.store.reserve(key.hash, amount)
            if reservation is None and await self.store.sweep_reservations():
                reservation = await self.store.reserve(key.hash, amount)
            if reservation is None:
                raise await self._over_limit(key, amount)
        return GenerationMeter(self.store, principal, reservation, streamed=streamed, on_tokens=self.limiter.spend)

    async def _over_limit(self, key: KeyRecord, amount_nanos: int) -> APIError:
        current = await self.store.get_key(key.hash) or key
        remaining = current.limit_remaining(self.clock())
        error = APIError(
            402,
            f"This request needs up to ${nanos_to_usd(amount_nanos):.6f} of credit and the key has "
            f"${nanos_to_usd(remaining):.6f} of its {current.limit_reset or 'total'} limit left "
            "(lower max_tokens, or raise the key's limit).",
            type="insufficient_credits",
            code=402,
        )
        error.metadata = {
            "reason": "key_limit",
            "limit": nanos_to_usd(current.limit_nanos),
            "limit_reset": current.limit_reset,
            "limit_remaining": nanos_to_usd(remaining),
            "reserved": nanos_to_usd(current.reserved_nanos),
            "requested": nanos_to_usd(amount_nanos),
        }
        return error
