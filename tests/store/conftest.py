"""The store's tests run on SQLite and on PostgreSQL: `store_url` is parametrised over both.

PostgreSQL comes from IMAGEMINI_TEST_POSTGRES_URL (.ci/run starts a server with .ci/postgres and
sets it; the `postgres_database` fixture of tests/conftest.py); without it the PostgreSQL cases
are skipped, saying so. Each test gets a new, empty
database (SQLite: a file in tmp_path; PostgreSQL: a database created for it and dropped after).

    def test_x(store_url):
        async def body(store): ...
        with_store(store_url, body, clock=FakeClock(...))     # from storetest.py
"""

from __future__ import annotations

import pytest

from imagemini.store.store import database_url


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path, postgres_database):
    if request.param == "sqlite":
        yield database_url(data_dir=tmp_path / "data")
        return
    with postgres_database("imagemini_test") as url:
        yield database_url(url=url)
