"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

Handlers raise `APIError` (or one of the constructors below); `install(app)` turns it, and
everything else FastAPI or Starlette might raise, into that JSON with the right status.
Request validation is a 400 (as OpenAI answers), never FastAPI's default 422, and `param`
names the offending field as a path into the request body: `messages[0].content`.

Statuses and the `openai` SDK exception each maps to:
    400 invalid_request_error   BadRequestError       (also bad JSON, wrong content type)
    401 authentication_error    AuthenticationError   (no, wrong, disabled, expired or deleted key)
    402 insufficient_credits    APIStatusError        (the key's credit limit; code is the number 402, as OpenRouter)
    403 permission_error        PermissionDeniedError (a management key on completions, or a plain key on /keys)
    404 invalid_request_error   NotFoundError         (unknown model, unknown route)
    413 invalid_request_error   APIStatusError        (body over the byte limit)
    429 requests | tokens       RateLimitError        (the key's rate limit; X-RateLimit-* and Retry-After)
    503 server_error            InternalServerError   (queue full / shutting down; Retry-After)
    500 server_error            InternalServerError   (never with internals in the message)
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}
        self.metadata: dict[str, Any] | None = None  # OpenRouter's error.metadata (402: which limit)

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return {"error": error | ({"metadata": self.metadata} if self.metadata is not None else {})}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def unsupported(param: str, what: str) -> APIError:
    """A field this server recognises but cannot honour yet: refused, never silently ignored."""
    return APIError(400, f"{what} is not supported by this server yet", param=param, code="unsupported_parameter")


def overloaded(message: str, retry_after_s: int) -> APIError:
    return APIError(503, message, type="server_error", code="overloaded", headers={"Retry-After": str(retry_after_s)})


def model_not_found(model: str, param: str | None = None) -> APIError:
    return APIError(404, f"The model '{model}' does not exist on this server.", param=param, code="model_not_found")


def internal_error(message: str | None = None) -> APIError:
    message = message or "The server had an error while processing your request."
    return APIError(500, message, type="server_error", code="internal_error")


# --- pydantic errors -> 400 with a param path ------------------------------------------------
def param_path(loc: tuple[Any, ...], data: Any) -> str | None:
    """`('messages', 0, 'list[...]', 0, 'text')` -> `messages[0].content[0].text`.

    pydantic puts union member names and discriminator tags into `loc`; those are not
    positions in the request, so the path is rebuilt by walking the request data itself and
    keeping only the steps that exist there (plus a last, missing field name).
    """
    parts: list[str] = []
    for i, step in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(data, dict) and isinstance(step, str) and step in data:
            parts.append(f".{step}" if parts else step)
            data = data[step]
        elif isinstance(data, list) and isinstance(step, int) and 0 <= step < len(data):
            parts.append(f"[{step}]")
            data = data[step]
        elif last and isinstance(step, str) and isinstance(data, dict):
            parts.append(f".{step}" if parts else step)  # a required field that is missing
    return "".join(parts) or None


def from_validation_error(exc: ValidationError, data: Any) -> APIError:
    """The most specific problem becomes the 400; one is enough to fix.

    Most specific: the deepest path; at equal depth, not a plain type mismatch, which for a
    union (`stop: str | list[str]`) is only the member the input did not try to be.
    """
    errors = exc.errors(include_url=False)

    def specificity(e: dict) -> tuple[int, bool]:
        return len(param_path(tuple(e["loc"]), data) or ""), not e["type"].endswith("_type")

    best = max(errors, key=specificity)
    param = param_path(tuple(best["loc"]), data)
    if best["type"] in ("union_tag_invalid", "union_tag_not_found") and param:
        param += "." + best["ctx"]["discriminator"].strip("'")  # the tag field is what is wrong
    message = best["msg"].removeprefix("Value error, ")
    return bad_request(f"{param}: {message}" if param else message, param=param, code=best["type"])


# --- handlers ------------------------------------------------------------------------------------
def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _answer(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        loc = [str(x) for x in errors[0]["loc"][1:]] if errors else []
        message = errors[0]["msg"] if errors else "invalid request"
        return _answer(request, bad_request(message, param=".".join(loc) or None))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            error = APIError(404, f"Unknown route {request.method} {request.url.path}", code="not_found")
        else:
            error = APIError(exc.status_code, str(exc.detail), code=None)
        error.headers.update(exc.headers or {})
        return _answer(request, error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _answer(request, internal_error())


def _answer(request: Request, error: APIError) -> JSONResponse:
    """The error's response; its code is kept for the request's access-log line (access_log.py)."""
    request.state.error_code = error.code
    return error.response()
