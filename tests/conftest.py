"""Shared fixtures: the random Janus test checkpoint (built once per test session), its 32K
context copy and its padded-vocabulary copy, the bundled checkpoint with a source echo and
without one, `start_server` (a real server subprocess: tests/api/apitest.py, on the path
through pyproject's pytest settings), and `postgres_database` (a new PostgreSQL database on the
server that IMAGEMINI_TEST_POSTGRES_URL names: .ci/run starts one with .ci/postgres)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from apitest import run_server

from imagemini.models import random_fixture
from imagemini.models.processor import ECHO_FILE, EchoConfig

BUNDLED = Path(random_fixture.__file__).parent / "bundled"
POSTGRES_ENV = "IMAGEMINI_TEST_POSTGRES_URL"
PADDED_VOCAB = 4096


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    return random_fixture.build(tmp_path_factory.mktemp("tiny-janus"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def padded_checkpoint(tmp_path_factory):
    """The tiny network with its vocabulary padded to 4,096 rows for a 384-token tokenizer (as
    Janus-Pro has 102,400 rows for ~100K tokens): most rows have no token."""
    return random_fixture.build(tmp_path_factory.mktemp("tiny-padded"), size="tiny", vocab_size=PADDED_VOCAB)


def _bundled_copy(out: Path, with_echo: bool) -> Path:
    for f in BUNDLED.iterdir():
        if f.is_file() and (with_echo or f.name != ECHO_FILE):
            shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="session")
def echo_checkpoint(tmp_path_factory) -> Path:
    """The bundled checkpoint with an echo.json whose map is not the identity (so a missing
    mapping shows): its own, or one made up for a bundled checkpoint without."""
    out = _bundled_copy(tmp_path_factory.mktemp("echo-ckpt"), with_echo=True)
    if not (out / ECHO_FILE).exists():
        size = json.loads((out / "config.json").read_text())["vq_config"]["num_embeddings"]
        EchoConfig("<|Assistant|>", tuple((c * 7 + 3) % size for c in range(size))).save(out)
    return out


@pytest.fixture(scope="session")
def plain_checkpoint(tmp_path_factory) -> Path:
    """The bundled weights as a plain Janus checkpoint: no echo.json, so no source echo."""
    return _bundled_copy(tmp_path_factory.mktemp("plain-ckpt"), with_echo=False)


@pytest.fixture(scope="session")
def start_server(tmp_path_factory):
    """A factory: `with start_server(model_dir, *cli_args, env={...}) as server: ...`."""
    log_dir = tmp_path_factory.mktemp("server-logs")

    def start(model_dir: Path, *args: str, env: dict[str, str] | None = None):
        return run_server(model_dir, *args, env=env, log_dir=log_dir)

    return start


@pytest.fixture(scope="session")
def long_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint with a 32K context: a 20,000-token completion takes long enough
    (tens of seconds) that a test can act on it while it runs. RoPE works at any length."""
    path = tmp_path_factory.mktemp("long") / "tiny-long"
    shutil.copytree(tiny_checkpoint, path)
    config = json.loads((path / "config.json").read_text())
    config["text_config"]["max_position_embeddings"] = 32768
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


async def _postgres(admin_url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_database():
    """`with postgres_database(prefix) as url:` a new, empty database (its plain postgresql:// URL),
    dropped after; skips the test, saying why, when IMAGEMINI_TEST_POSTGRES_URL is not set."""

    @contextlib.contextmanager
    def database(prefix: str) -> Iterator[str]:
        admin = os.environ.get(POSTGRES_ENV)
        if not admin:
            pytest.skip(f"PostgreSQL tests need {POSTGRES_ENV} (.ci/run starts a server with .ci/postgres)")
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        asyncio.run(_postgres(admin, f"CREATE DATABASE {name}"))
        try:
            yield f"{admin.rpartition('/')[0]}/{name}"
        finally:
            asyncio.run(_postgres(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))

    return database
