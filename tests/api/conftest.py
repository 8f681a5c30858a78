"""Fixtures of the API tests (`start_server` and `long_checkpoint` are in tests/conftest.py):
`openapi` (OpenAI's schemas), and the clients `http` (httpx) and `sdk` (the openai SDK) whose
every response is validated against those schemas as it arrives (apitest.ValidatingTransport).

Each test module starts ONE server through a module-scoped fixture, e.g.

    @pytest.fixture(scope="module")
    def server(start_server, tiny_checkpoint):
        with start_server(tiny_checkpoint, "--max-pending", "1") as s:
            yield s
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from apitest import SPEC, AsyncValidatingTransport, OpenAPISchemas, ValidatingTransport


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


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def dtype(request) -> str:
    """The engine's dtype, for a module whose server runs in both: float32 (exact comparisons with
    references elsewhere) and bfloat16 (what `imagemini serve` runs by default). Start it with
    `start_server(checkpoint, "--dtype", dtype)`; the module then runs once per dtype."""
    return request.param


@pytest.fixture(scope="module")
def client(server, sdk) -> openai.OpenAI:
    """The sync SDK client on the module's `server`."""
    return sdk(server)


@pytest.fixture(scope="module")
def tok(checkpoint):
    """The tokenizer of the module's `checkpoint`."""
    from imagemini.models.tokenizer import Tokenizer

    return Tokenizer.from_dir(checkpoint)
