"""The engine process dies (killed, as the OOM killer would) while requests run: a stream ends
with an error chunk and no [DONE], a non-stream request gets a 500, neither hangs; afterwards
/health says so (503) and new requests get a 503 — the HTTP server itself stays up.

Its own server (the tiny checkpoint with a 32K context): the test kills that server's engine.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from apitest import sse_data

from imagemini.models.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def server(start_server, long_checkpoint):
    with start_server(long_checkpoint) as s:
        yield s


def engine_pid(server_pid: int) -> int:
    """The server's child started by multiprocessing's spawn (not its resource tracker)."""
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    engines = [pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(engines) == 1, f"expected one engine process among {children}"
    return int(engines[0])


def test_engine_death_ends_requests_and_is_reported(server, http, sdk, openapi, long_checkpoint):
    eos = Tokenizer.from_dir(long_checkpoint).special.eos
    body = {
        "model": f"imagemini/{long_checkpoint.name}",
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 20_000, "logit_bias": {str(eos): -100},
    }
    results: dict = {}

    def non_stream():
        try:
            sdk(server).chat.completions.create(**body)
        except openai.APIStatusError as exc:
            results["non_stream"] = exc

    worker = threading.Thread(target=non_stream)
    worker.start()
    deadline = time.monotonic() + 120  # a wait for an event, generous for a loaded machine
    while http.get(f"{server.url}/health").json()["pending"] < 1:  # the non-stream request runs
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        first = [next(lines) for _ in range(6)]  # the stream is under way
        os.kill(engine_pid(server.process.pid), signal.SIGKILL)
        events = sse_data([*first, *lines])
    worker.join(60)
    assert not worker.is_alive()
    last = events[-1]
    assert "[DONE]" not in events and last["choices"][0]["finish_reason"] == "error"
    assert last["error"]["type"] == "server_error"
    openapi.validate_chunk(last)
    assert results["non_stream"].status_code == 500

    health = http.get(f"{server.url}/health")
    assert health.status_code == 503 and health.json()["status"] == "engine_stopped"
    with pytest.raises(openai.APIStatusError) as refused:
        sdk(server).chat.completions.create(**{**body, "max_tokens": 2})
    assert refused.value.status_code == 503
    assert server.process.poll() is None  # the HTTP server is still up, answering
