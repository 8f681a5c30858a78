"""The API's pieces without a server process: param paths, seeds, prices, settings, and an
engine failure in the middle of a stream (in-process app, engine step made to raise)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx
import openai
import pytest
from apitest import nullable_to_anyof, sse_data
from pydantic import ValidationError

from imagemini.api.errors import from_validation_error, param_path
from imagemini.api.model_card import Prices, _usd
from imagemini.api.sampling import choice_seed
from imagemini.api.schemas import ChatCompletionRequest
from imagemini.api.server import create_app
from imagemini.api.settings import ServerSettings
from imagemini.engine.engine import EngineConfig


def test_param_path_follows_the_request_not_pydantic_tags():
    data = {"messages": [{"role": "user", "content": [{"type": "text"}]}]}
    assert param_path(("messages", 0, "content", "list[tagged-union[A,B]]", 0, "text", "text"), data) == "messages[0].content[0].text"
    assert param_path(("temperature",), {"temperature": 3}) == "temperature"
    assert param_path(("model",), {}) == "model"  # missing field: named anyway
    assert param_path((), {}) is None


def test_validation_error_names_the_most_specific_problem():
    data = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 5}
    with pytest.raises(ValidationError) as exc:
        ChatCompletionRequest.model_validate(data)
    error = from_validation_error(exc.value, data)
    assert (error.status, error.param, error.code) == (400, "stop", "too_long")  # not "should be a string"


def test_choice_seeds():
    assert choice_seed(42, 0) == 42 and choice_seed(None, 3) is None
    seeds = [choice_seed(42, i) for i in range(1, 5)]
    assert len(set(seeds)) == 4 and 42 not in seeds
    assert seeds == [choice_seed(42, i) for i in range(1, 5)]  # derived, not random
    assert all(-(2**63) <= s < 2**63 for s in seeds)


def test_prices_and_cost():
    prices = Prices.from_card({})
    assert (_usd(prices.prompt), _usd(prices.completion), _usd(prices.request)) == ("0.0000025", "0.000002", "0")
    assert prices.cost(1000, 500) == pytest.approx(1000 * 2.5e-6 + 500 * 2e-6, rel=1e-12)
    custom = Prices.from_card({"pricing_usd_per_million_tokens": {"prompt": 0.1}, "pricing_usd_per_request": 0.01})
    assert custom.prompt == Decimal("0.0000001") and custom.cost(0, 0) == pytest.approx(0.01)


def test_settings_from_env():
    s = ServerSettings.from_env({"IMAGEMINI_MAX_BODY_BYTES": "4096", "IMAGEMINI_SHUTDOWN_GRACE_S": "0.5"})
    assert (s.max_body_bytes, s.shutdown_grace_s, s.default_max_tokens) == (4096, 0.5, 4096)
    with pytest.raises(ValueError):
        ServerSettings.from_env({"IMAGEMINI_MAX_BODY_BYTES": "lots"})
    with pytest.raises(ValueError):
        ServerSettings(max_body_bytes=10)


def test_nullable_rewrite():
    schema = {"type": "object", "properties": {"x": {"type": "string", "nullable": True}}}
    assert nullable_to_anyof(schema)["properties"]["x"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}


# --- an engine failure mid-stream ---------------------------------------------------------------------
BODY = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 50, "logit_bias": {"1": -100}}


def test_engine_failure_mid_stream_and_non_stream(tiny_checkpoint, openapi):
    """The real app and engine, whose step raises after a few tokens: a stream ends with an error
    chunk (no [DONE]), a non-stream is a 500; neither leaks the exception's text. One event loop
    for the whole test: the engine binds to the loop it first runs on."""
    app = create_app(tiny_checkpoint, EngineConfig(dtype="float32"), settings=ServerSettings())
    engine = app.state.server.engine
    body = {**BODY, "model": app.state.server.card.id}
    real_step, calls = engine.engine.step, []

    def failing_step():
        calls.append(1)
        if len(calls) % 4 == 0:  # prefill, then two tokens, then a failure: per request
            raise RuntimeError("secret internal detail")
        return real_step()

    engine.engine.step = failing_step

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            try:
                await check_raw_stream(http)
                await check_sdk(openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http, max_retries=0))
            finally:
                await engine.shutdown(0.1)

    async def check_raw_stream(http):
        calls.clear()
        r = await http.post("/v1/chat/completions", json={**body, "stream": True})
        assert r.status_code == 200
        events = sse_data(r.text.splitlines())
        last = events[-1]
        assert "[DONE]" not in events and last["choices"][0]["finish_reason"] == "error"
        assert last["error"]["type"] == "server_error" and "secret" not in r.text
        assert any(e["choices"] and e["choices"][0]["delta"].get("content") for e in events[1:-1])  # tokens came first
        for chunk in events:
            openapi.validate_chunk(chunk)  # the error chunk: all but OpenRouter's finish_reason "error"

    async def check_sdk(client):
        calls.clear()
        with pytest.raises(openai.InternalServerError) as plain:
            await client.chat.completions.create(**body)
        assert plain.value.status_code == 500 and "secret" not in str(plain.value.body)
        calls.clear()
        stream = await client.chat.completions.create(stream=True, **body)
        with pytest.raises(openai.APIError, match="internal error"):
            async for _ in stream:
                pass

    asyncio.run(main())
