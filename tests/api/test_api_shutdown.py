"""Graceful shutdown: SIGTERM ends an in-flight stream cleanly, then the process exits.

The server drains for IMAGEMINI_SHUTDOWN_GRACE_S (1 s here): running requests may finish; what
is still running after that is aborted in the engine, and its stream gets a last chunk with
`error` (code server_shutting_down) and `finish_reason: "error"` instead of a cut connection.
"""

from __future__ import annotations

import signal
import time

from apitest import sse_data

from imagemini.models.tokenizer import Tokenizer


def test_sigterm_ends_a_running_stream_with_an_error_chunk(start_server, long_checkpoint, http):
    eos = Tokenizer.from_dir(long_checkpoint).special.eos
    body = {
        "model": f"imagemini/{long_checkpoint.name}",
        "messages": [{"role": "user", "content": "Count to a million."}],
        "max_tokens": 20_000,  # tens of seconds: still running when the grace period ends
        "logit_bias": {str(eos): -100},
        "stream": True,
    }
    with start_server(long_checkpoint, env={"IMAGEMINI_SHUTDOWN_GRACE_S": "1"}) as server:
        with http.stream("POST", f"{server.url}/v1/chat/completions", json=body) as r:
            lines = r.iter_lines()
            first = sse_data(next(lines) for _ in range(4))
            assert first[0]["choices"][0]["delta"]["role"] == "assistant"
            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            events = first + sse_data(lines)
        ended = time.monotonic() - signalled
        # uvicorn re-raises the signal once it has shut down cleanly: the status is "killed by SIGTERM".
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
    last = events[-1]
    assert last != "[DONE]" and all(e != "[DONE]" for e in events)
    assert last["error"]["code"] == "server_shutting_down" and last["choices"][0]["finish_reason"] == "error"
    assert not any(isinstance(e, dict) and e.get("usage") for e in events)
    # Cut by the shutdown (the error chunk above, no [DONE]), not before the grace period (1 s):
    # a lower bound, which a slow machine only makes easier to meet.
    assert ended > 0.5, f"ended {ended:.1f}s after SIGTERM (grace 1s)"
    assert "Application shutdown complete" in server.log() and "Traceback" not in server.log()
