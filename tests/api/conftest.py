"""Fixtures of the API tests: `start_server` (a real server subprocess), `openapi` (OpenAI's
schemas), and the clients `http` (httpx) and `sdk` (the openai SDK) whose every response is
validated against those schemas as it arrives (apitest.ValidatingTransport).

Each test module starts ONE server through a module-scoped fixture, e.g.

    @pytest.fixture(scope="module")
    def server(start_server, tiny_checkpoint):
        with start_server(tiny_checkpoint, "--max-pending", "1") as s:
            yield s
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import openai
import pytest
from apitest import SPEC, AsyncValidatingTransport, OpenAPISchemas, ValidatingTransport, run_server


@pytest.fixture(scope="session")
def openapi() -> OpenAPISchemas:
    return OpenAPISchemas(json.loads(SPEC.read_text()))


@pytest.fixture(scope="session")
def http(openapi):
    with httpx.Client(transport=ValidatingTransport(openapi), timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def sdk(http):
    """`sdk(server, prefix="/v1", api_key=...)`: a sync OpenAI client (no retries) on `http`."""

    def make(server, prefix: str = "/v1", api_key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{server.url}{prefix}", api_key=api_key, http_client=http, max_retries=0)

    return make


@pytest.fixture
def async_sdk(openapi):
    """`async_sdk(server)`: an AsyncOpenAI client whose responses are validated too (use `async with`)."""

    def make(server, prefix: str = "/v1", api_key: str = "unused") -> openai.AsyncOpenAI:
        http = httpx.AsyncClient(transport=AsyncValidatingTransport(openapi), timeout=60)
        return openai.AsyncOpenAI(base_url=f"{server.url}{prefix}", api_key=api_key, http_client=http, max_retries=0)

    return make


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


@pytest.fixture(scope="module")
def client(server, sdk) -> openai.OpenAI:
    """The sync SDK client on the module's `server`."""
    return sdk(server)


@pytest.fixture(scope="module")
def tok(checkpoint):
    """The tokenizer of the module's `checkpoint`."""
    from imagemini.models.tokenizer import Tokenizer

    return Tokenizer.from_dir(checkpoint)
