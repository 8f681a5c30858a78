"""The access log of a real server run with `--log-format json --api-key ...`: one JSON line per
request, whose fields agree with what the client received (status, usage, X-Request-Id), for
errors and for a stream the client drops too; the key itself never appears in the log.

The server runs the tiny checkpoint with a 32K context (`long_checkpoint`), so that a stream of
20,000 tokens is still running when its client goes away.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from apitest import chat_body, check_stream_framing, sse_data
from metricstest import moved, scrape

from imagemini.models.tokenizer import Tokenizer

KEY = "sk-access-log-secret-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def server(start_server, long_checkpoint):
    with start_server(long_checkpoint, "--log-format", "json", "--api-key", KEY) as s:
        yield s


@pytest.fixture(scope="module")
def model(server, http) -> str:
    return http.get(f"{server.url}/v1/models", headers=AUTH).json()["data"][0]["id"]


@pytest.fixture(scope="module")
def endless(long_checkpoint) -> dict:
    return {str(Tokenizer.from_dir(long_checkpoint).special.eos): -100}


def access_lines(server, request_id: str, wait_s: float = 0.0) -> list[dict]:
    """The access-log lines of one request (polling up to `wait_s` for one to appear)."""
    deadline = time.monotonic() + wait_s
    while True:
        lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
        found = [line for line in lines if line["logger"] == "imagemini.access" and line["request_id"] == request_id]
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.1)


def test_each_request_has_one_line_that_agrees_with_its_response(server, http, model, endless):
    echoed = http.post(server.url + CHAT, json=chat_body(model, "Hi", max_tokens=4, logit_bias=endless),
                       headers=AUTH | {"X-Request-Id": "gateway-trace.42"})
    assert echoed.headers["x-request-id"] == "gateway-trace.42"
    with http.stream("POST", server.url + CHAT, headers=AUTH,
                     json=chat_body(model, "Stream", max_tokens=5, logit_bias=endless, stream=True)) as streamed:
        stream_usage = check_stream_framing(sse_data(streamed.iter_lines()))
    bad = http.post(server.url + CHAT, json={"model": model, "messages": "not a list"},
                    headers=AUTH | {"X-Request-Id": "not a plain token"})
    anonymous = http.post(server.url + CHAT, json=chat_body(model, "Hi"))
    assert (bad.status_code, anonymous.status_code) == (400, 401)
    generated = [r.headers["x-request-id"] for r in (streamed, bad, anonymous)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in generated) and len(set(generated)) == 3

    for response, usage, stream in ((echoed, echoed.json()["usage"], False), (streamed, stream_usage, True)):
        (line,) = access_lines(server, response.headers["x-request-id"])
        assert line["status"] == 200 and line["path"] == CHAT and line["method"] == "POST" and line["replica"] == "0"
        assert line["key"] == "--api-key" and line["model"] == model and line["stream"] is stream
        assert line["finish_reason"] == "length" and line["client_closed"] is False
        assert (line["prompt_tokens"], line["completion_tokens"], line["image_tokens"]) == (
            usage["prompt_tokens"], usage["completion_tokens"], usage["completion_tokens_details"]["image_tokens"])
        assert line["cost"] == pytest.approx(usage["cost"])
        assert 0 < line["ttft_s"] <= line["latency_s"]
    assert access_lines(server, "gateway-trace.42")[0]["completion_id"] == echoed.json()["id"]

    (refused,) = access_lines(server, bad.headers["x-request-id"])
    assert refused["status"] == 400 and refused["error_code"] == "list_type" and "prompt_tokens" not in refused
    (unknown,) = access_lines(server, anonymous.headers["x-request-id"])
    assert unknown["status"] == 401 and unknown["key"] is None and unknown["error_code"] == "invalid_api_key"


def test_a_dropped_stream_is_logged_at_its_end(server, http, model, endless):
    before = scrape(server, AUTH)
    body = chat_body(model, "Tell me a long story.", max_tokens=20_000, logit_bias=endless, stream=True)
    with http.stream("POST", server.url + CHAT, json=body, headers=AUTH) as r:
        lines = r.iter_lines()  # kept referenced: a collected iterator would close the response
        assert len(sse_data(next(lines) for _ in range(6))) >= 2
        request_id = r.headers["x-request-id"]
    server.wait_idle()
    (line,) = access_lines(server, request_id, wait_s=30)
    assert line["status"] == 200 and line["client_closed"] is True and line["finish_reason"] is None
    assert 0 < line["completion_tokens"] < 20_000
    after = scrape(server, AUTH)
    assert moved(before, after, "imagemini:request_success_total", finished_reason="abort") == 1


def test_every_line_is_json_and_the_key_never_appears(server, http, model):
    http.get(f"{server.url}/v1/models", headers=AUTH)
    log = server.log()
    records = [json.loads(line) for line in log.splitlines() if line.strip()]  # every line, both processes
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert KEY not in log and KEY[10:] not in log
