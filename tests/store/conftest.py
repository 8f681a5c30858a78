"""The store's tests run on SQLite and on PostgreSQL: `store_url` is parametrised over both.

PostgreSQL comes from IMAGEMINI_TEST_POSTGRES_URL (.ci/run starts a server with .ci/postgres and
sets it); without it the PostgreSQL cases are skipped, saying so. Each test gets a new, empty
database (SQLite: a file in tmp_path; PostgreSQL: a database created for it and dropped after).

    def test_x(store_url):
        async def body(store): ...
        with_store(store_url, body, clock=FakeClock(...))     # from storetest.py
"""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from imagemini.store.store import database_url

POSTGRES_ENV = "IMAGEMINI_TEST_POSTGRES_URL"


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
