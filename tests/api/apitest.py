"""Helpers of the API tests: a real server subprocess, OpenAI's schemas, SSE parsing.

    with run_server(checkpoint, "--max-pending", "1", env={...}, log_dir=tmp) as server:
        httpx.get(server.url + "/health")

(conftest.py wraps these as the `start_server` and `openapi` fixtures.)

Each test module starts ONE server (module-scoped fixture) on a free port with the tiny random
checkpoint in float32: `python -m imagemini.cli serve --model DIR --port PORT --dtype float32`
(a later `--dtype bfloat16` in the arguments wins: conftest's `dtype` fixture runs a module in both).

`openapi.validate("CreateChatCompletionResponse", body)` checks a response against
tests/api/data/openai-openapi.json (OpenAI's official description, MIT), whose
`"nullable": true` markers (OpenAPI 3.0 style inside a 3.1 file) are rewritten as
`anyOf: [schema, {"type": "null"}]` on load. None of the schemas validated here sets
`additionalProperties: false`, so OpenRouter's additive fields (usage.cost, ...) pass as they are.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

REPO = Path(__file__).resolve().parents[2]
SPEC = Path(__file__).parent / "data" / "openai-openapi.json"
SPEC_URI = "urn:openai-openapi"


DEVICE_ENV = "IMAGEMINI_TEST_DEVICE"


def devices_under_test() -> list[str]:
    """The devices the device-parametrised tests run on: the CPU always, CUDA where torch sees a
    GPU; IMAGEMINI_TEST_DEVICE=cuda (or cpu) runs them on that one alone (scripts/gpu-check)."""
    import torch

    chosen = os.environ.get(DEVICE_ENV)
    if chosen:
        return [chosen]
    return ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


# --- OpenAI's schemas -------------------------------------------------------------------------------
def nullable_to_anyof(node):
    """OpenAPI 3.0 `nullable: true` -> JSON Schema `anyOf: [schema, {type: null}]`, recursively."""
    if isinstance(node, list):
        return [nullable_to_anyof(x) for x in node]
    if not isinstance(node, dict):
        return node
    node = {k: nullable_to_anyof(v) for k, v in node.items()}
    if node.pop("nullable", False) is True:
        return {"anyOf": [node, {"type": "null"}]}
    return node


class OpenAPISchemas:
    def __init__(self, spec: dict) -> None:
        self.spec = nullable_to_anyof(spec)
        resource = Resource.from_contents(self.spec, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(SPEC_URI, resource)
        self._validators: dict[str, jsonschema.Draft202012Validator] = {}
        self.checked: dict[str, int] = {}  # schema name -> objects validated

    def validate(self, name: str, instance) -> None:
        if name not in self._validators:
            ref = {"$ref": f"{SPEC_URI}#/components/schemas/{name}"}
            self._validators[name] = jsonschema.Draft202012Validator(ref, registry=self.registry)
        errors = sorted(self._validators[name].iter_errors(instance), key=lambda e: list(e.absolute_path))
        assert not errors, f"{name}: " + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])
        self.checked[name] = self.checked.get(name, 0) + 1

    def validate_chunk(self, chunk: dict) -> None:
        """A stream chunk; a mid-stream failure chunk's finish_reason "error" is OpenRouter's
        extension of OpenAI's enum, so that one field is set aside and the rest must conform."""
        if chunk.get("error") is not None:
            chunk = {**chunk, "choices": [{**c, "finish_reason": None} for c in chunk["choices"]]}
        self.validate("CreateChatCompletionStreamResponse", chunk)

    def validate_body(self, path: str, status: int, content_type: str, body: bytes) -> None:
        """Whatever this server answers on `path`, checked against the schema it must satisfy."""
        if content_type.startswith("text/event-stream"):
            for event in sse_data(body.decode().splitlines()):
                if event != "[DONE]":
                    self.validate_chunk(event)
            return
        if not content_type.startswith("application/json") or path.endswith("/health"):
            return
        data = json.loads(body)
        if status >= 400:
            self.validate("ErrorResponse", data)
        elif path.endswith("/chat/completions"):
            self.validate("CreateChatCompletionResponse", data)
        elif path.endswith("/models"):
            self.validate("ListModelsResponse", data)
        elif "/models/" in path:
            self.validate("Model", data)


# --- every response the tests receive is validated on its way in ----------------------------------
class _CheckedStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Passes a response body through, validating it on the way: each SSE event as it completes
    (so a stream closed early is checked as far as it was read), a JSON body at its end."""

    def __init__(self, inner, openapi: OpenAPISchemas, path: str, response: httpx.Response) -> None:
        self._inner, self._openapi, self._path = inner, openapi, path
        self._status, self._type = response.status_code, response.headers.get("content-type", "")
        self._sse = self._type.startswith("text/event-stream")
        self._body = b""

    def _feed(self, piece: bytes) -> None:
        self._body += piece
        while self._sse and b"\n\n" in self._body:
            event, self._body = self._body.split(b"\n\n", 1)
            self._openapi.validate_body(self._path, self._status, self._type, event + b"\n\n")

    def _finish(self) -> None:
        self._openapi.validate_body(self._path, self._status, self._type, self._body)

    def __iter__(self):
        for piece in self._inner:
            self._feed(piece)
            yield piece
        self._finish()

    async def __aiter__(self):
        async for piece in self._inner:
            self._feed(piece)
            yield piece
        self._finish()

    def close(self) -> None:
        self._inner.close()

    async def aclose(self) -> None:
        await self._inner.aclose()


def _checked(openapi: OpenAPISchemas, request: httpx.Request, response: httpx.Response) -> httpx.Response:
    stream = _CheckedStream(response.stream, openapi, request.url.path, response)
    return httpx.Response(
        response.status_code, headers=response.headers, stream=stream, extensions=response.extensions, request=request
    )


class ValidatingTransport(httpx.HTTPTransport):
    def __init__(self, openapi: OpenAPISchemas) -> None:
        super().__init__()
        self.openapi = openapi

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return _checked(self.openapi, request, super().handle_request(request))


class AsyncValidatingTransport(httpx.AsyncHTTPTransport):
    def __init__(self, openapi: OpenAPISchemas) -> None:
        super().__init__()
        self.openapi = openapi

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return _checked(self.openapi, request, await super().handle_async_request(request))


# --- the server subprocess -------------------------------------------------------------------------
@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def wait_idle(self, timeout: float = 60.0) -> dict:
        """Poll /health until nothing is in flight and the KV cache is empty; return the last reading."""
        deadline = time.monotonic() + timeout
        while True:
            h = self.health()
            if (h["pending"], h["running"], h["waiting"], h["kv_cache"]["used_tokens"]) == (0, 0, 0, 0):
                return h
            if time.monotonic() > deadline:
                return h
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def run_server(model_dir: Path, *args: str, env: dict[str, str] | None = None, log_dir: Path) -> Iterator[Server]:
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    cmd = [sys.executable, "-m", "imagemini.cli", "serve", "--model", str(model_dir), "--port", str(port), "--dtype", "float32", *args]
    with open(log_path, "wb") as log:
        # No store unless a test gives one: a developer's default store (~/.local/share/imagemini) stays out.
        isolated = {"IMAGEMINI_DATA_DIR": str(log_dir / "no-store"), "IMAGEMINI_DATABASE_URL": ""}
        process = subprocess.Popen(
            cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **isolated, **(env or {})}
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        _wait_healthy(server)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_healthy(server: Server, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"server not healthy after {timeout}s:\n{server.log()[-3000:]}")


def carded_copy(checkpoint: Path, out: Path, card: dict, generation: dict | None = None) -> Path:
    """A copy of `checkpoint` at `out` with this model_card.json (and generation_config.json
    entries updated with `generation`)."""
    shutil.copytree(checkpoint, out)
    (out / "model_card.json").write_text(json.dumps(card))
    if generation:
        config = json.loads((out / "generation_config.json").read_text())
        (out / "generation_config.json").write_text(json.dumps(config | generation))
    return out


# --- raw HTTP helpers -------------------------------------------------------------------------------
def sse_data(lines: Iterator[str]) -> list:
    """The `data:` payloads of a Server-Sent Events body, JSON-decoded ('[DONE]' kept as a string)."""
    events = []
    for line in lines:
        if line.startswith("data: "):
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def chat_body(model: str, text: str = "Hello", **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **fields}


def check_stream_framing(events: list) -> dict:
    """OpenRouter's framing of a chat stream (chunk schemas are checked by the transport): each
    choice's first chunk carries the role; each choice ends with one finish_reason; then exactly
    one usage chunk with `choices: []`; then `[DONE]`. Returns the usage."""
    assert events and events[-1] == "[DONE]", "a stream ends with [DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    with_usage = [i for i, c in enumerate(chunks) if c.get("usage") is not None]
    assert with_usage == [len(chunks) - 1] and chunks[-1]["choices"] == [], "usage: exactly once, last, no choices"
    seen: dict[int, list] = {}
    for chunk in chunks[:-1]:
        (choice,) = chunk["choices"]
        seen.setdefault(choice["index"], []).append(choice)
    for index, choices in seen.items():
        assert choices[0]["delta"].get("role") == "assistant", f"choice {index}: role in its first delta"
        reasons = [c["finish_reason"] for c in choices]
        assert reasons[-1] in ("stop", "length") and all(r is None for r in reasons[:-1])
    return chunks[-1]["usage"]


def stream_choices(events: list) -> dict[int, dict]:
    """Per choice: the joined text, the logprobs content entries and the finish_reason."""
    out: dict[int, dict] = {}
    for chunk in events[:-1]:
        for choice in chunk["choices"]:
            acc = out.setdefault(choice["index"], {"content": "", "logprobs": [], "finish_reason": None})
            acc["content"] += choice["delta"].get("content") or ""
            acc["logprobs"] += (choice.get("logprobs") or {}).get("content") or []
            acc["finish_reason"] = choice["finish_reason"] or acc["finish_reason"]
    return out


def post_stream(http: httpx.Client, url: str, body: dict, headers: dict | None = None) -> list:
    with http.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, headers=headers) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return sse_data(r.iter_lines())
