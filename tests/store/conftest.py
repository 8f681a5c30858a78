"""The store's tests run on SQLite and on PostgreSQL: `store_url` is parametrised over both.

PostgreSQL comes from IMAGEMINI_TEST_POSTGRES_URL (.ci/run starts a server with .ci/postgres and
sets it); without it the PostgreSQL cases are skipped, saying so. Each test gets a new, empty
database (SQLite: a file in tmp_path; PostgreSQL: a database created for it and dropped after).

    def test_x(store_url):
        async def body(store): ...
        with_store(store_url, body, clock=FakeClock(...))
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pytest

from imagemini.store.store import Store, database_url

POSTGRES_ENV = "IMAGEMINI_TEST_POSTGRES_URL"


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


async def _postgres(admin_url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        yield database_url(data_dir=tmp_path / "data")
        return
    admin = os.environ.get(POSTGRES_ENV)
    if not admin:
        pytest.skip(f"PostgreSQL store tests need {POSTGRES_ENV} (.ci/run starts a server with .ci/postgres)")
    name = f"imagemini_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_postgres(admin, f"CREATE DATABASE {name}"))
    base, _, _ = admin.rpartition("/")
    try:
        yield database_url(url=f"{base}/{name}")
    finally:
        asyncio.run(_postgres(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


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
