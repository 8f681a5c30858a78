"""One access-log line per HTTP request, and the request's id in an `X-Request-Id` header.

    app.add_middleware(AccessLog, metrics=state.metrics, replica="0")      # server.py

The line is written when the response has ended: after a JSON body, after a stream's last event,
when the client went away mid-stream (`client_closed`), or when the app raised. It goes to the
logger `imagemini.access` with the message "request" and these fields (imagemini/logs.py writes
them as `key=value` pairs after the message with `--log-format text`, as members of the line's
JSON object with `--log-format json`):

    request_id, replica (as the metrics' `replica` label: metrics.py), method, path, status,
    key (the key's label, never the key), error_code,
    latency_s (request in to response ended), client_closed,
    and for chat completions: model, completion_id, stream, finish_reason (choice 0's; none when
    the client went away first),
    prompt_tokens, completion_tokens, image_tokens, cost (USD, as usage.cost), ttft_s (request in
    to the engine's first output)

The request id: a client's own `X-Request-Id` is kept and echoed when it is a plain token (1 to
128 of `A-Z a-z 0-9 . _ : -`), as vLLM does, so that a gateway's id follows the request through;
otherwise, or without one, the server makes one (32 hex digits). It is not the completion's `id`
(`chatcmpl-...`, the ledger's key), which the line also holds.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .completions import ResponseContext, usage
from .metrics import LONE_REPLICA, Metrics

log = logging.getLogger("imagemini.access")
HEADER = b"x-request-id"
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def request_id(scope: Scope) -> str:
    """The client's X-Request-Id when it is a plain token, else a new one."""
    for name, value in scope.get("headers", ()):
        if name == HEADER and _CLIENT_ID.fullmatch(value):
            return value.decode()
    return uuid.uuid4().hex


def handler(scope: Scope) -> str:
    """The matched route as a path template (`/v1/models/{model_id}`: a bounded label), or "other"
    when no route matched. Built from the path and its parameters: the route object knows its
    path without the prefix it was mounted under."""
    if "route" not in scope:
        return "other"
    path = scope["path"]
    for name, value in scope.get("path_params", {}).items():
        head, found, tail = path.rpartition(str(value))
        if found:
            path = f"{head}{{{name}}}{tail}"
    return path


class AccessLog:
    def __init__(self, app: ASGIApp, metrics: Metrics | None = None, replica: str = LONE_REPLICA) -> None:
        self.app = app
        self.metrics = metrics
        self.replica = replica

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        rid = request_id(scope)
        state = scope.setdefault("state", {})
        response: dict[str, Any] = {"status": 500, "ended": False, "stream": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                headers = message.get("headers", ())
                response["stream"] = any(n == b"content-type" and v.startswith(b"text/event-stream") for n, v in headers)
                message["headers"] = [*headers, (HEADER, rid.encode())]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                response["ended"] = True
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.metrics is not None:
                self.metrics.http_response(handler(scope), response["status"])
            fields = access_fields(scope, state, rid, self.replica, response, started)
            log.info("request", extra={"fields": fields})


def access_fields(scope: Scope, state: dict[str, Any], rid: str, replica: str, response: dict[str, Any],
                  started: float) -> dict[str, Any]:
    ended = time.monotonic()
    principal = state.get("principal")
    fields: dict[str, Any] = {
        "request_id": rid,
        "replica": replica,
        "method": scope["method"],
        "path": scope["path"],
        "status": response["status"],
        "key": principal.label if principal is not None else None,
        "error_code": state.get("error_code"),
        "latency_s": round(ended - started, 4),
        # A stream cut short by the client, or a non-stream answered 499 (routes.py: unless_disconnected).
        "client_closed": response["status"] == 499 or (not response["ended"] and response["status"] < 500),
    }
    ctx: ResponseContext | None = state.get("completion")
    if ctx is not None:
        fields |= completion_fields(ctx, started) | {"stream": response["stream"]}
    return fields


def completion_fields(ctx: ResponseContext, started: float) -> dict[str, Any]:
    tally = ctx.tally
    completion, image, reasoning = tally.totals()
    first = tally.first_output_at
    return {
        "model": ctx.model,
        "completion_id": ctx.id,
        "finish_reason": tally.finish_reasons.get(0),
        "prompt_tokens": ctx.prompt_tokens,
        "completion_tokens": completion,
        "image_tokens": image,
        "cost": usage(ctx, completion, image, reasoning).cost,
        "ttft_s": round(first - started, 4) if first is not None else None,
    }
