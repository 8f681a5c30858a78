"""Limits: API keys, the bounded request queue (503 + Retry-After), and client disconnects.

One server for the module: `--max-pending 1 --api-key sk-test`, on the tiny checkpoint with a
32K context (`long_checkpoint`). A disconnect must abort the request in the engine: /health's
pending/running counts and KV `used_tokens` go back to 0 in well under the time the abandoned
completion (20,000 tokens) would take to finish, as measured on the same server (`full_run_s`),
so the bound scales with the machine's load.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from apitest import sse_data

from imagemini.models.tokenizer import Tokenizer

KEY = "sk-test"
AUTH = {"authorization": f"Bearer {KEY}"}
LONG = 20_000  # tokens: tens of seconds of decoding; an abort is visible well before


@pytest.fixture(scope="module")
def server(start_server, long_checkpoint):
    with start_server(long_checkpoint, "--max-pending", "1", "--api-key", KEY) as s:
        yield s


@pytest.fixture(scope="module")
def long_request(long_checkpoint) -> dict:
    eos = Tokenizer.from_dir(long_checkpoint).special.eos
    return {
        "model": f"imagemini/{long_checkpoint.name}",
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": LONG,
        "logit_bias": {str(eos): -100},
    }


@pytest.fixture(scope="module")
def full_run_s(server, http, long_request) -> float:
    """Seconds the whole long completion would take here: a 500-token run, scaled (its prompt
    and HTTP overheads make this an overestimate of the speed, i.e. a longer time)."""
    started = time.monotonic()
    out = http.post(url(server), json={**long_request, "max_tokens": 500}, headers=AUTH)
    assert out.json()["usage"]["completion_tokens"] == 500
    return (time.monotonic() - started) * LONG / 500


def url(server) -> str:
    return f"{server.url}/v1/chat/completions"


def test_api_key_required_except_for_health(server, http, sdk, long_request):
    body = {**long_request, "max_tokens": 2}
    r = http.post(url(server), json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["type"] == "authentication_error"
    assert http.get(f"{server.url}/v1/models").status_code == 401
    assert http.get(f"{server.url}/api/v1/models", headers=AUTH).status_code == 200
    assert http.get(f"{server.url}/health").status_code == 200
    wrong = sdk(server, api_key="sk-wrong")
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(**body)
    right = sdk(server, api_key=KEY)
    assert right.chat.completions.create(**body).usage.completion_tokens == 2


def test_queue_full_is_503_with_retry_after(server, http, sdk, long_request):
    with http.stream("POST", url(server), json={**long_request, "stream": True}, headers=AUTH) as first:
        assert first.status_code == 200
        lines = first.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))  # admitted and streaming
        second = http.post(url(server), json={**long_request, "max_tokens": 2}, headers=AUTH)
        assert second.status_code == 503 and int(second.headers["retry-after"]) >= 1
        assert second.json()["error"]["code"] == "overloaded"
        client = sdk(server, api_key=KEY)
        with pytest.raises(openai.InternalServerError) as refused:
            client.chat.completions.create(**{**long_request, "max_tokens": 2})
        assert refused.value.status_code == 503
    assert server.wait_idle()["pending"] == 0
    assert http.post(url(server), json={**long_request, "max_tokens": 2}, headers=AUTH).status_code == 200


def test_n_beyond_the_queue_is_refused_whole(server, http, long_request):
    r = http.post(url(server), json={**long_request, "max_tokens": 2, "n": 2}, headers=AUTH)
    assert r.status_code == 503 and "retry-after" in r.headers
    assert server.wait_idle()["pending"] == 0


def test_stream_disconnect_aborts_and_frees_the_kv_cache(server, http, long_request, full_run_s):
    with http.stream("POST", url(server), json={**long_request, "stream": True}, headers=AUTH) as r:
        assert r.status_code == 200
        lines = r.iter_lines()  # kept referenced: a collected iterator would close the response
        events = sse_data(next(lines) for _ in range(8))
        assert len(events) >= 3 and events[0]["choices"][0]["delta"]["role"] == "assistant"
        busy = server.health()
        assert busy["pending"] == 1 and busy["kv_cache"]["used_tokens"] > LONG
    closed = time.monotonic()  # leaving the block closed the connection mid-stream
    idle = server.wait_idle(timeout=full_run_s / 4)
    assert idle["kv_cache"]["used_tokens"] == 0 and idle["pending"] == idle["running"] == 0
    assert time.monotonic() - closed < full_run_s / 4, "freed by the abort, not by finishing"


def test_non_stream_disconnect_aborts_too(server, http, long_request, full_run_s):
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        http.post(url(server), json=long_request, headers=AUTH, timeout=httpx.Timeout(30, read=0.5))
    idle = server.wait_idle(timeout=full_run_s / 4)
    assert idle["kv_cache"]["used_tokens"] == 0 and idle["pending"] == 0
    assert time.monotonic() - started < full_run_s / 4, "freed by the abort, not by finishing"
