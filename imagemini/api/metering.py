"""The ledger's side of one chat completion: its row, written once, whatever the end.

    meter = GenerationMeter(store, principal, reservation, streamed=True, on_tokens=limiter.spend)
    ctx = ResponseContext(..., meter=meter)       # completions.py calls `await ctx.end(status)`
                                                  # before the last bytes: usage chunk, [DONE], error
    meter.end(ctx, "cancelled")                   # the route's safety net: a client gone mid-way

The first `end` wins; later ones wait for the same write. The write runs as its own task,
shielded: a client that hangs up while its row is being committed does not cut the commit,
and the route's safety net can start it from a done-callback without awaiting it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from imagemini.store.store import Generation, Store, usd_to_nanos

if TYPE_CHECKING:
    from .access import Principal
    from .completions import ResponseContext

# Writes must be referenced until they finish (the event loop keeps only weak references).
_live_writes: set[asyncio.Task] = set()


class GenerationMeter:
    def __init__(
        self,
        store: Store,
        principal: "Principal",
        reservation: str | None,
        *,
        streamed: bool,
        on_tokens: Callable[["Principal", int], None] | None = None,
    ) -> None:
        self.store = store
        self.principal = principal
        self.reservation = reservation
        self.streamed = streamed
        self.on_tokens = on_tokens
        self.created_at_ms = store.clock()
        self.started_at = time.monotonic()
        self._write: asyncio.Task | None = None

    def end(self, ctx: "ResponseContext", status: str) -> Awaitable[None]:
        if self._write is None:
            row = self.row(ctx, status)
            if self.on_tokens is not None:
                self.on_tokens(self.principal, row.tokens_prompt + row.tokens_completion)
            self._write = asyncio.ensure_future(self.store.record(row, self.reservation))
            _live_writes.add(self._write)
            self._write.add_done_callback(_live_writes.discard)
        return asyncio.shield(self._write)

    def release(self) -> Awaitable[None]:
        """The request never ran (refused at submission): give its reservation back, no row."""
        if self.reservation is None or self._write is not None:
            return asyncio.sleep(0)
        self._write = asyncio.ensure_future(self.store.release(self.reservation))
        _live_writes.add(self._write)
        self._write.add_done_callback(_live_writes.discard)
        return asyncio.shield(self._write)

    def row(self, ctx: "ResponseContext", status: str) -> Generation:
        tally, now = ctx.tally, time.monotonic()
        completion, image, reasoning = tally.totals()
        cached = tally.prompt_cached_tokens
        cost = ctx.card.prices.exact_cost(
            ctx.prompt_tokens, completion, reasoning_tokens=reasoning, image_tokens=image, input_images=ctx.input_images,
            cached_tokens=cached,
        )
        native = tally.finish_reasons.get(0)
        finish = {"completed": native, "error": "error", "cancelled": None}[status]
        first = tally.first_output_at
        return Generation(
            id=ctx.id,
            key_hash=self.principal.key_hash,
            model=ctx.model,
            created_at_ms=self.created_at_ms,
            status=status,
            streamed=self.streamed,
            cancelled=status == "cancelled",
            latency_ms=None if first is None else round((first - self.started_at) * 1000),
            generation_time_ms=round((now - (first if first is not None else self.started_at)) * 1000),
            finish_reason=finish,
            native_finish_reason=native,
            tokens_prompt=ctx.prompt_tokens,
            tokens_completion=completion,
            native_tokens_reasoning=reasoning,
            native_tokens_completion_images=image,
            native_tokens_cached=cached,
            num_media_prompt=ctx.input_images,
            num_media_completion=tally.images,
            num_choices=max(1, len(tally.completion_tokens)),
            cost_nanos=usd_to_nanos(cost),
        )


async def wait_for_ledger_writes() -> None:
    """At shutdown: every row started is committed (or has failed) before the store closes."""
    await asyncio.gather(*_live_writes, return_exceptions=True)
