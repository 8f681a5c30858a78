"""Server-side limits of the HTTP layer, with their documented defaults.

    settings = ServerSettings.from_env()        # IMAGEMINI_* variables override the defaults
    app = create_app(model_dir, config, settings=settings)

`imagemini serve` has no flags for these yet, so the environment is how an operator (and the
tests) change them: IMAGEMINI_MAX_BODY_BYTES, IMAGEMINI_DEFAULT_MAX_TOKENS,
IMAGEMINI_SHUTDOWN_GRACE_S, IMAGEMINI_RETRY_AFTER_S.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

MAX_CHOICES = 16  # `n`: each choice is a full engine request with its own KV reservation


@dataclass(frozen=True)
class ServerSettings:
    # Bodies above this get 413. Text-only requests are small; 16 MiB leaves room for the
    # base64 images and PDFs a later issue adds.
    max_body_bytes: int = 16 * 1024 * 1024
    # When a request gives no max_completion_tokens, it gets the context that remains after
    # the prompt, capped by this (a forgotten limit must not reserve a whole context of KV).
    default_max_tokens: int = 4096
    # On SIGTERM/SIGINT, running requests get this long to finish; then they are ended with
    # an error chunk (streams) or 503 (non-streams). Below uvicorn's 15 s graceful timeout.
    shutdown_grace_s: float = 10.0
    # Retry-After (seconds) on 503 when the request queue is full or the server is draining.
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes must be at least 1024")
        if self.default_max_tokens < 1:
            raise ValueError("default_max_tokens must be >= 1")
        if self.shutdown_grace_s < 0 or self.retry_after_s < 0:
            raise ValueError("shutdown_grace_s and retry_after_s must be >= 0")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "ServerSettings":
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(f"IMAGEMINI_{f.name.upper()}")
            if raw is not None:
                kind = float if f.type == "float" else int
                try:
                    values[f.name] = kind(raw)
                except ValueError:
                    raise ValueError(f"IMAGEMINI_{f.name.upper()}={raw!r} is not a number") from None
        return cls(**values)
