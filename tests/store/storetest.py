"""Helpers of the store's tests: a clock the test moves, and running a body against migrated stores."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from imagemini.store.store import Store


@dataclass
class FakeClock:
    """A clock the test moves: `clock.now_ms`, callable as the store's clock."""

    now_ms: int

    @classmethod
    def at(cls, iso_time: str) -> "FakeClock":
        return cls(int(datetime.fromisoformat(iso_time).replace(tzinfo=timezone.utc).timestamp() * 1000))

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)


def with_store(url: str, body: Callable[..., Awaitable[Any]], clock: Callable[[], int] | None = None, replicas: int = 1) -> Any:
    """Run `body(store, ...)` with `replicas` Store objects on the same database (migrated),
    as separate server processes would have them; closes them after."""

    async def run() -> Any:
        stores = [Store(url, clock) if clock else Store(url) for _ in range(replicas)]
        try:
            await asyncio.gather(*(s.migrate() for s in stores))
            return await body(*stores)
        finally:
            for s in stores:
                await s.close()

    return asyncio.run(run())
