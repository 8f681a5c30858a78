"""Server-side limits of the HTTP layer, with their documented defaults.

    settings = ServerSettings.from_env()        # IMAGEMINI_* variables override the defaults
    app = create_app(model_dir, config, settings=settings)

Every field can be set with the environment variable IMAGEMINI_<FIELD NAME IN CAPITALS>
(IMAGEMINI_MAX_BODY_BYTES, IMAGEMINI_MAX_IMAGE_PIXELS, ...; booleans as 1/0, true/false,
yes/no). `imagemini serve --allow-image-urls [--allow-private-urls]` sets the two URL switches.
Each limit, when a request goes over it, is a 400 or 413 whose message names the limit and
its variable (see README.md, "Limits").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

MAX_CHOICES = 16  # `n`: each choice is a full engine request with its own KV reservation
MIB = 1024 * 1024


@dataclass(frozen=True)
class ServerSettings:
    # Bodies above this get 413. 16 MiB holds a 10 MiB image or PDF in base64 (4/3 larger).
    max_body_bytes: int = 16 * MIB
    # When a request gives no max_completion_tokens, it gets the context that remains after
    # the prompt, capped by this (a forgotten limit must not reserve a whole context of KV).
    # Requests that may draw get one image more (codes + begin/end markers) on top.
    default_max_tokens: int = 4096
    # On SIGTERM/SIGINT, running requests get this long to finish; then they are ended with
    # an error chunk (streams) or 503 (non-streams). Below uvicorn's 15 s graceful timeout.
    shutdown_grace_s: float = 10.0
    # Retry-After (seconds) on 503 when the request queue is full or the server is draining.
    retry_after_s: int = 1

    # --- images and files in ---------------------------------------------------------------------
    # JSON nesting depth of the body (objects and arrays); a real request needs 6.
    max_json_depth: int = 32
    # Images per request: image_url parts plus the page images of PDFs.
    max_images: int = 16
    # Bytes of one image after base64 decoding (or as downloaded): 413 above.
    max_image_bytes: int = 10 * MIB
    # Width x height of one image, read from its header BEFORE decoding (decompression bombs).
    max_image_pixels: int = 4096 * 4096
    # Bytes of one file part (PDF or text) after base64 decoding (or as downloaded): 413 above.
    max_file_bytes: int = 10 * MIB
    # Pages of one PDF; a longer PDF is refused (not cut) so that nothing is silently dropped.
    max_pdf_pages: int = 100
    # The first this many pages of each PDF are also given to the model as images.
    pdf_image_pages: int = 2
    # Vision-encoder output kept for images sent again (LRU, by bytes).
    encoder_cache_bytes: int = 256 * MIB
    # http(s) image / file URLs: off by default (the server would fetch what clients name).
    allow_image_urls: bool = False
    # With URLs on: also fetch from loopback, private, link-local and other non-global addresses.
    allow_private_urls: bool = False
    url_timeout_s: float = 10.0  # whole download, redirects included (DNS lookups excepted)
    url_max_redirects: int = 3

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes must be at least 1024")
        if self.default_max_tokens < 1:
            raise ValueError("default_max_tokens must be >= 1")
        if self.shutdown_grace_s < 0 or self.retry_after_s < 0:
            raise ValueError("shutdown_grace_s and retry_after_s must be >= 0")
        positive = ("max_json_depth", "max_image_bytes", "max_image_pixels", "max_file_bytes", "max_pdf_pages")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("max_images", "pdf_image_pages", "encoder_cache_bytes", "url_max_redirects"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.url_timeout_s <= 0:
            raise ValueError("url_timeout_s must be > 0")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "ServerSettings":
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            name = f"IMAGEMINI_{f.name.upper()}"
            raw = environ.get(name)
            if raw is None:
                continue
            if f.type == "bool":
                flag = raw.strip().lower()
                if flag not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(f"{name}={raw!r} is not a boolean (1/0, true/false, yes/no)")
                values[f.name] = flag in ("1", "true", "yes", "on")
                continue
            kind = float if f.type == "float" else int
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a number") from None
        return cls(**values)

    @staticmethod
    def env_name(field_name: str) -> str:
        return f"IMAGEMINI_{field_name.upper()}"
